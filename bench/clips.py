"""Clip export cost: H.264 encode speed and clip size against the MJPEG recording.

    .venv/bin/python bench/clips.py [--frames 300] [--threads 1 2]

Records ``--frames`` camera-like 640x480 JPEGs at 30 fps (a still scene with a moving
block and fresh sensor noise in each frame, ``--noise``) into a real MJPEG segment, then makes a
clip of the whole segment the way a clip job does (``count_frames`` + ``encode``), once
per ``--threads`` value. Prints wall time, frames/s, process CPU per frame (all
threads, libx264's included) and the sizes. Not a test: numbers only (docs/clips.md).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import simplejpeg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.frames import camera_jpeg  # noqa: E402
from robogpt_video.recording import clips  # noqa: E402
from robogpt_video.recording.segment import open_segment  # noqa: E402
from robogpt_video.recording.store import RecordingStore  # noqa: E402
from robogpt_video.streams import Frame  # noqa: E402

WIDTH, HEIGHT, FPS = 640, 480, 30


def jpegs(count: int, noise: float) -> list[bytes]:
    """A camera's view: one scene, a block moving across it, sensor noise (σ ``noise``)."""
    scene = simplejpeg.decode_jpeg(camera_jpeg(WIDTH, HEIGHT)).astype(np.float32)
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        img = scene + rng.normal(0, noise, scene.shape) if noise else scene.copy()
        left = (i * 6) % (WIDTH - 80)
        img[200:280, left:left + 80] = (230, 40, 40)
        out.append(simplejpeg.encode_jpeg(np.clip(img, 0, 255).astype(np.uint8), quality=80))
    return out


def record(store: RecordingStore, images: list[bytes]) -> Path:
    """One MJPEG segment of ``images`` at ``FPS``, written as the recorder writes it."""
    start = time.time()
    frames = [Frame(i, start + i / FPS, 1000.0 + i / FPS, WIDTH, HEIGHT, len(jpeg), jpeg)
              for i, jpeg in enumerate(images)]
    path = store.new_segment_path("cam", datetime.fromtimestamp(start, timezone.utc))
    segment = open_segment(path, "cam", frames[0], "mjpeg", FPS)
    for frame in frames:
        segment.write(frame)
        if segment.unflushed >= 64:
            segment.flush()
    segment.close()
    segment.write_sidecar("complete")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--noise", type=float, default=2.5, help="sensor noise σ (0: none)")
    args = parser.parse_args()
    images = jpegs(args.frames, args.noise)
    with tempfile.TemporaryDirectory() as folder:
        store = RecordingStore(Path(folder) / "recordings")
        source = record(store, images)
        mjpeg = source.stat().st_size
        print(f"{args.frames} frames {WIDTH}x{HEIGHT} at {FPS} fps, noise σ {args.noise:g}; MJPEG "
              f"{mjpeg / 1e6:.2f} MB ({mjpeg / args.frames / 1024:.1f} KiB a frame)")
        print("threads | wall s | frames/s | CPU ms/frame | clip KB | clip / MJPEG")
        for threads in args.threads:
            used = clips.find_sources(store, "cam", 0, time.time() + 60, time.time())
            cancel = threading.Event()
            out = Path(folder) / f"clip{threads}.mp4"
            wall, cpu = time.perf_counter(), time.process_time()
            counts = clips.count_frames(store, used, 0, time.time() + 60, cancel)
            written = clips.encode(store, used, counts, 0, time.time() + 60, out,
                                   threads=threads, on_frame=lambda: None, cancel=cancel)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            size = out.stat().st_size
            assert written == args.frames, written
            print(f"{threads:7d} | {wall:6.2f} | {written / wall:8.0f} | "
                  f"{cpu / written * 1000:12.2f} | {size / 1000:7.0f} | {size / mjpeg:11.3f}")


if __name__ == "__main__":
    main()
