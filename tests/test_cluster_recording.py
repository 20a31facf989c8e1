"""One recorder per stream across nodes: a Redis lease with fencing (docs/cluster.md)."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from helpers import make_jpeg, publish, wait_for
from recording_tools import decode, sidecars

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None,
    reason="redis-server is required: apt-get install redis-server",
)


@pytest.fixture
def recording_nodes(start_server, redis_server):
    config = {
        "cluster": {"redis_url": redis_server.url},
        "recording": {"enabled": True, "codec": "mjpeg", "fps": 1000},
    }
    return [start_server(config) for _ in range(2)]


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def segments(node, stream: str) -> list[dict]:
    """Every sidecar of ``stream`` on ``node``, each with the file's frames decoded
    (``frames``: (wall time, jpeg) in file order)."""
    out = []
    for meta in sidecars(node.recordings, stream):
        decoded = decode(Path(meta["recording_path"]))
        start = _ts(meta["start_time"])
        meta["frames"] = [(start + pts, jpeg) for pts, jpeg in zip(decoded.pts, decoded.packets)]
        meta["node"] = node
        out.append(meta)
    return out


def assert_no_overlap(all_segments: list[dict]) -> None:
    """No two segments of the stream (on any node) were written at the same time: their
    [first frame, last frame] intervals are disjoint."""
    spans = sorted(
        (s["frames"][0][0], s["frames"][-1][0], s["recording_path"])
        for s in all_segments if s["frames"]
    )
    for (_, end, path), (start, _, other) in zip(spans, spans[1:]):
        assert end < start, f"{path} (until {end}) overlaps {other} (from {start})"


def holder_of(nodes, stream: str):
    """The node with an open segment of ``stream``."""
    def find():
        open_ = [n for n in nodes
                 if any(s["status"] == "recording" for s in sidecars(n.recordings, stream))]
        return open_[0] if len(open_) == 1 else None

    return wait_for(find, what=f"one node recording {stream}")


class Paced(threading.Thread):
    """Publishes numbered frames to one node at about 25 fps until stopped."""

    def __init__(self, node, stream: str, seed: int):
        super().__init__(daemon=True)
        self.node, self.stream, self.seed = node, stream, seed
        self.sent: list[tuple[float, bytes]] = []  # (time.time() before the POST, jpeg)
        self._halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=10) as client:
            i = 0
            while not self._halt.wait(0.04):  # pacing, not synchronisation
                jpeg = make_jpeg(160, 120, seed=self.seed + i)
                i += 1
                began = time.time()
                try:
                    if publish(self.node.url, self.stream, jpeg, client).status_code == 200:
                        self.sent.append((began, jpeg))
                except httpx.HTTPError:
                    pass

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


def test_a_stream_published_to_two_nodes_is_recorded_by_one(recording_nodes):
    a, b = recording_nodes
    sent = []
    with httpx.Client(timeout=10) as client:
        for i in range(40):
            jpeg = make_jpeg(160, 120, seed=i)
            node = (a, b)[i % 2]
            assert publish(node.url, "cam", jpeg, client).status_code == 200
            sent.append(jpeg)
    holder = holder_of((a, b), "cam")
    other = b if holder is a else a
    # Both nodes show the REC mark, though only one writes (announced within a second).
    for node in (a, b):
        wait_for(lambda: [s["is_recording"] for s in
                          httpx.get(f"{node.url}/api/streams", timeout=10).json()["streams"]]
                 == [True], what="the listing's REC mark on every node")
        assert httpx.get(f"{node.url}/api/streams/cam/stats", timeout=10).json()["is_recording"]
    # Every frame reached the holder's file (the newest is kept back until the close).
    assert httpx.delete(f"{a.url}/api/streams/cam", timeout=10).status_code in (200, 204)
    wait_for(lambda: sidecars(holder.recordings, "cam")
             and all(s["status"] == "complete" for s in sidecars(holder.recordings, "cam")),
             what="the holder's segment to close")
    assert sidecars(other.recordings, "cam") == []
    found = segments(holder, "cam")
    assert len(found) == 1 and isinstance(found[0].get("fence"), int)
    recorded = [jpeg for _, jpeg in found[0]["frames"]]
    assert len(recorded) == len(sent) == found[0]["total_frames"]
    assert sorted(recorded) == sorted(sent)  # each frame exactly once
    times = [t for t, _ in found[0]["frames"]]
    assert times == sorted(times) and len(set(times)) == len(times)


def _recording_with_frames_through_the_other(nodes):
    """Publish "cam" to both nodes in turn, then keep publishing through the node that
    does not record it: (the recording node, the other, its running publisher)."""
    a, b = nodes
    with httpx.Client(timeout=10) as client:
        for i in range(4):
            jpeg = make_jpeg(160, 120, seed=i)
            assert publish((a, b)[i % 2].url, "cam", jpeg, client).status_code == 200
    holder = holder_of((a, b), "cam")
    other = b if holder is a else a
    pub = Paced(other, "cam", seed=100)
    pub.start()
    wait_for(lambda: len(pub.sent) >= 10, what="frames through the node that does not record")
    return holder, other, pub


def test_kill_9_of_the_recording_node_another_takes_over(recording_nodes):
    holder, survivor, pub = _recording_with_frames_through_the_other(recording_nodes)
    old = sidecars(holder.recordings, "cam")
    assert [s["status"] for s in old] == ["recording"]
    holder.proc.send_signal(signal.SIGKILL)
    holder.proc.wait()
    killed_at = time.time()  # dead by now
    new = wait_for(lambda: [s for s in sidecars(survivor.recordings, "cam")
                            if s["status"] == "recording"], what="a new segment on the survivor")
    took = time.time() - killed_at
    assert new[0]["fence"] > old[0]["fence"]  # a new lease, a new token
    print(f"takeover after kill -9: {took:.2f} s (polled every 50 ms)")
    assert took < 10  # the contract is 2 s; measured values go to docs/cluster.md
    after = len(pub.sent)
    wait_for(lambda: len(pub.sent) >= after + 10, what="frames after the takeover")
    pub.stop()
    assert httpx.delete(f"{survivor.url}/api/streams/cam", timeout=10).status_code in (200, 204)
    wait_for(lambda: all(s["status"] == "complete" for s in sidecars(survivor.recordings, "cam")),
             what="the survivor's segment to close")
    mine = segments(survivor, "cam")
    assert len(mine) == 1 and mine[0]["fence"] > old[0]["fence"]
    recorded = {jpeg for _, jpeg in mine[0]["frames"]}
    # Every frame published after the kill (its POST began once the node was dead) is in
    # the new segment, those published before the takeover too.
    missing = [round(t - killed_at, 3) for t, jpeg in pub.sent
               if t > killed_at and jpeg not in recorded]
    assert missing == [], f"took {took:.2f}"
    # Restarted, the killed node repairs its open segment, as without a cluster.
    holder.start()
    repaired = wait_for(lambda: [s for s in sidecars(holder.recordings, "cam")
                                 if s["status"] == "recovered"], what="the repaired sidecar")
    assert repaired[0]["fence"] == old[0]["fence"]
    assert_no_overlap(segments(holder, "cam") + mine)


def test_a_paused_holder_stops_writing_before_another_starts(recording_nodes):
    """SIGSTOP for longer than the lease, then SIGCONT: the old holder writes nothing
    into its file after that, and closes it with its fence (status ``fenced``)."""
    holder, other, pub = _recording_with_frames_through_the_other(recording_nodes)
    old = sidecars(holder.recordings, "cam")[0]
    video = Path(old["recording_path"])
    os.kill(holder.proc.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: [s for s in sidecars(other.recordings, "cam")
                          if s["status"] == "recording"], what="the other node to take over")
        written = (video.stat().st_size, video.stat().st_mtime_ns)
    finally:
        os.kill(holder.proc.pid, signal.SIGCONT)
    fenced = wait_for(lambda: [s for s in sidecars(holder.recordings, "cam")
                               if s["status"] == "fenced"], what="the old holder to fence")
    assert fenced[0]["fence"] == old["fence"]
    after = len(pub.sent)
    wait_for(lambda: len(pub.sent) >= after + 10, what="more frames")
    pub.stop()
    assert (video.stat().st_size, video.stat().st_mtime_ns) == written  # nothing written
    assert httpx.delete(f"{other.url}/api/streams/cam", timeout=10).status_code in (200, 204)
    wait_for(lambda: all(s["status"] == "complete" for s in sidecars(other.recordings, "cam")),
             what="the new holder's segment to close")
    new = segments(other, "cam")
    assert all(s["fence"] > old["fence"] for s in new)
    # The old holder, resumed, records nothing more (it follows the new holder).
    assert [s["status"] for s in sidecars(holder.recordings, "cam")] == ["fenced"]
    assert_no_overlap(segments(holder, "cam") + new)


def test_without_redis_every_node_records_its_own_frames(recording_nodes, redis_server):
    a, b = recording_nodes
    redis_server.stop()
    wait_for(lambda: any("each node records" in p
                         for p in httpx.get(f"{a.url}/health", timeout=5).json()["problems"]),
             what="/health to say how recording goes without Redis")
    with httpx.Client(timeout=10) as client:
        for i in range(6):
            jpeg = make_jpeg(160, 120, seed=i)
            assert publish((a, b)[i % 2].url, "cam", jpeg, client).status_code == 200
    for node in (a, b):  # nothing lost: each records what it got, without a fence
        found = wait_for(lambda: sidecars(node.recordings, "cam"), what="a segment on each")
        assert found[0]["status"] == "recording" and "fence" not in found[0]


def test_a_stream_deleted_at_once_keeps_its_frames(recording_nodes):
    """Frames published and the stream deleted right away, maybe before the node's
    first lease round has decided who records it: every frame is in a file all the
    same (recorded under the lease if the round came first, else as without Redis)."""
    a, _ = recording_nodes
    sent = [make_jpeg(160, 120, seed=i) for i in range(8)]
    with httpx.Client(timeout=10) as client:
        for jpeg in sent:
            assert publish(a.url, "quick", jpeg, client).status_code == 200
        assert client.delete(f"{a.url}/api/streams/quick").status_code == 200
    closed = wait_for(lambda: (found := segments(a, "quick")) and all(
        s["status"] == "complete" for s in found) and found, what="the segment closed")
    assert [jpeg for s in closed for _, jpeg in s["frames"]] == sent
