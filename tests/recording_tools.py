"""Tools for the recording tests: paced publishing, waiting for sidecars, decoding files."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path

import av
import httpx

from helpers import make_jpeg, publish, wait_for

BRIEF_FIELDS = {
    "stream_name", "start_time", "end_time", "duration_seconds", "total_frames",
    "average_fps", "target_fps", "codec", "recording_path",
}


def publish_paced(url: str, name: str, intervals: list[float], size=(320, 240), seed=0):
    """Publish ``len(intervals)`` frames; frame i is followed by a pause of intervals[i].

    Returns (jpegs, covered) where ``covered`` is the time from the first frame to the
    last one plus the last interval (what the file should last), from the frames'
    arrival times at the server (``/api/streams/<name>/frames``) when it still lists
    them all: a busy machine delays some requests more than others, and the file keeps
    arrival times. Otherwise from the client's send times.
    """
    jpegs, sent = [], []
    with httpx.Client(timeout=10) as client:
        due = time.monotonic()
        for i, pause in enumerate(intervals):
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            jpeg = make_jpeg(*size, seed=seed + i)
            sent.append(time.monotonic())
            response = publish(url, name, jpeg, client)
            assert response.status_code == 200, response.text
            jpegs.append(jpeg)
            due += pause
    frames = httpx.get(f"{url}/api/streams/{name}/frames", timeout=10).json()["frames"]
    if len(frames) == len(sent):
        sent = [frame["timestamp"] for frame in frames]
    last_gap = sent[-1] - sent[-2] if len(sent) > 1 else intervals[-1]
    return jpegs, sent[-1] - sent[0] + last_gap


def sidecars(root: Path, stream: str) -> list[dict]:
    """Every sidecar of ``stream`` in start order."""
    out = []
    for path in (root / stream).glob("*.json"):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):  # being replaced right now: read it on the next poll
            return []
    return sorted(out, key=lambda meta: meta["start_time"])


def videos(root: Path, stream: str) -> list[Path]:
    """The video files of ``stream`` in the order their segments started."""
    return [Path(meta["recording_path"]) for meta in sidecars(root, stream)]


def wait_closed(root: Path, stream: str, count: int = 1, status: str = "complete") -> list[dict]:
    """Wait until ``stream`` has ``count`` sidecars, all with ``status``."""
    def done():
        found = sidecars(root, stream)
        return found if len(found) == count and all(s["status"] == status for s in found) else None

    return wait_for(done, what=f"{count} {status} sidecar(s) of {stream}")


@dataclass
class Decoded:
    """What PyAV reads back from a recording."""

    frames: int
    duration: float
    pts: list[float]
    packets: list[bytes]
    codec: str
    width: int
    height: int


def decode(path: Path) -> Decoded:
    """Demux and decode every frame of ``path``."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames, end, pts, packets = 0, 0.0, [], []
        for packet in container.demux(stream):
            if packet.size:
                pts.append(float(packet.pts * packet.time_base))
                end = max(end, float((packet.pts + packet.duration) * packet.time_base))
                packets.append(bytes(packet))
            frames += len(packet.decode())
        context = stream.codec_context
        return Decoded(frames, end - (pts[0] if pts else 0), pts, packets, context.name,
                       context.width, context.height)


def run_recorder(
    tmp_path, body, hold: bool = False, frame_memory_mb: float | None = None, **settings
) -> None:
    """Run ``await body(recorder, registry)`` with a real Recorder following a registry.

    ``hold``: the writers take no frame until the test sets ``recorder.writing``.
    ``frame_memory_mb``: a frame budget (``recorder.memory``), wired as the runtime does.
    """
    from robogpt_video.config import RecordingSettings, StreamsSettings
    from robogpt_video.memory import FrameMemory
    from robogpt_video.recording.recorder import Recorder
    from robogpt_video.streams import StreamRegistry

    async def main():
        memory = FrameMemory(frame_memory_mb) if frame_memory_mb is not None else None
        recorder = Recorder(RecordingSettings(directory=tmp_path, **settings), memory=memory)
        registry = StreamRegistry(StreamsSettings())
        if memory is not None:
            memory.recorder_bytes = lambda: recorder.held_bytes
            registry.listeners.append(memory)
        registry.listeners.append(recorder)
        if hold:
            recorder.writing.clear()
        await recorder.start()
        try:
            await body(recorder, registry)
        finally:
            await recorder.stop()

    asyncio.run(main())
