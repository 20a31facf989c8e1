"""Recording cost: CPU µs per frame by codec, and the writer pool under many streams.

    .venv/bin/python bench/recording_cpu.py [--frames 300] [--streams 200] [--fps 10]

Part 1 writes the same 640x480 JPEGs through one segment per codec and prints the
process CPU time per frame (all threads, so libx264's own threads count too).
Part 2 runs the real Recorder with N streams publishing at F fps for a few seconds
with different numbers of writer threads (N threads = one thread per stream) and
prints CPU µs per frame, frames dropped and threads used. Not a test: numbers only.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import simplejpeg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from robogpt_video.config import RecordingSettings  # noqa: E402
from robogpt_video.recording.recorder import Recorder  # noqa: E402
from robogpt_video.recording.segment import open_segment  # noqa: E402
from robogpt_video.streams import Frame  # noqa: E402


def jpegs(count: int, width: int = 640, height: int = 480) -> list[bytes]:
    """Distinct camera-like JPEGs (a gradient with a little noise, ≈50 KiB at 640x480)."""
    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, width * height * 3).reshape(height, width, 3).astype(np.uint8)
    out = []
    for i in range(count):
        noise = rng.integers(0, 12, base.shape, dtype=np.uint8)
        out.append(simplejpeg.encode_jpeg(np.roll(base, i * 7, axis=1) + noise, quality=85))
    return out


def frame(seq: int, jpeg: bytes, width: int, height: int, mono: float) -> Frame:
    """A Frame as Stream.publish would build it."""
    return Frame(seq, time.time(), mono, width, height, len(jpeg), jpeg)


def retimed(template: Frame, seq: int) -> Frame:
    """``template`` arriving now (shares its bytes, so the producer costs ≈nothing)."""
    return Frame(seq, time.time(), time.monotonic(), template.width, template.height,
                 template.size, template.jpeg)


def codec_cost(codec: str, images: list[bytes], folder: Path) -> float:
    """CPU µs per frame to write ``images`` through one segment."""
    frames = [frame(i + 1, j, 640, 480, i / 30) for i, j in enumerate(images)]
    start = time.process_time()
    segment = open_segment(folder / f"{codec}.mp4", "bench", frames[0], codec, 30)
    for i, f in enumerate(frames, 1):
        segment.write(f)
        if i % 4 == 0:  # the recorder flushes once per stream per batch
            segment.flush()
    segment.close()
    return (time.process_time() - start) / len(frames) * 1e6


class _Named:
    def __init__(self, name: str):
        self.name = name


async def pool_run(streams: int, fps: float, seconds: float, threads: int, images, folder):
    """Feed ``streams`` x ``fps`` frames into a Recorder; returns (µs/frame, dropped, sent).

    Segments are opened before and closed after the measured part: with 5-minute
    segments their cost (two fsync'd sidecars, ≈2 ms) is spread over thousands of frames.
    """
    settings = RecordingSettings(directory=folder, fps=fps * 2, queue_frames=60)
    recorder = Recorder(settings, writer_threads=threads)
    await recorder.start()
    names = [_Named(f"cam{i}") for i in range(streams)]
    templates = [frame(0, j, 640, 480, 0.0) for j in images]
    for stream in names:  # open every segment first
        recorder.frame_published(stream, retimed(templates[0], 0))
    await _drained(recorder, streams)
    sent, tick = 0, 1 / fps
    cpu0, t0 = time.process_time(), time.monotonic()
    while time.monotonic() - t0 < seconds:
        due = t0 + (sent // streams + 1) * tick
        for stream in names:
            template = templates[sent % len(templates)]
            recorder.frame_published(stream, retimed(template, sent + 1))
            sent += 1
        await asyncio.sleep(max(0.0, due - time.monotonic()))
    await _drained(recorder, streams + sent)
    cpu = time.process_time() - cpu0
    await recorder.stop()
    dropped = sum(s["frames_dropped"] for s in recorder.stats().values())
    return cpu / sent * 1e6, dropped, sent


async def _drained(recorder: Recorder, total: int) -> None:
    """Wait until every frame handed over is written or dropped."""
    while True:
        stats = recorder.stats().values()
        if sum(s["frames_written"] + s["frames_dropped"] for s in stats) >= total:
            return
        await asyncio.sleep(0.005)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--fps", type=float, default=10)
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args()
    images = jpegs(30)
    print(f"JPEG 640x480, average {sum(map(len, images)) / len(images) / 1024:.0f} KiB")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for codec in ("mjpeg", "mp4v", "h264"):
            frames = args.frames if codec == "mjpeg" else max(30, args.frames // 5)
            cost = codec_cost(codec, (images * (frames // len(images) + 1))[:frames], folder)
            print(f"{codec:6s} {cost:9.0f} µs CPU per frame ({1e6 / cost:7.0f} frames/s per core)")
        print(f"\nwriter pool, mjpeg: {args.streams} streams x {args.fps:g} fps")
        for threads in (1, 2, 4, args.streams):
            with tempfile.TemporaryDirectory(dir=folder) as run:
                cost, dropped, sent = asyncio.run(
                    pool_run(args.streams, args.fps, args.seconds, threads, images, Path(run))
                )
            print(f"  {threads:4d} writer threads: {cost:6.0f} µs CPU per frame, "
                  f"{dropped}/{sent} frames dropped")


if __name__ == "__main__":
    main()
