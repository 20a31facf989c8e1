#!/usr/bin/env python3
"""Publish a webcam (or a video file, or ``--camera test``) to a robogpt-video server.

    python client/examples/webcam_publisher.py --server http://localhost:5000 \
        --stream my_camera --camera 0 --quality 85 --fps 30

Same as ``robogpt-video publish``. Prints a live status line; Ctrl-C stops.
"""

import sys
from pathlib import Path

try:
    from robogpt_video.client.cli import main
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from robogpt_video.client.cli import main

if __name__ == "__main__":
    sys.exit(main())
