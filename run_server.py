#!/usr/bin/env python3
"""The brief's entry point: ``python run_server.py`` serves with ./config.yaml."""

import sys

from robogpt_video.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
