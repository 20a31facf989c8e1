"""Nodes share streams through a real redis-server (docs/cluster.md)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import httpx
import pytest

from helpers import ServerProcess, iter_parts, make_jpeg, merge, publish, wait_for

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None,
    reason="redis-server is required by tests/test_cluster.py: apt-get install redis-server",
)


@pytest.fixture
def nodes(start_server, redis_server):
    config = {"cluster": {"redis_url": redis_server.url}, "recording": {"enabled": False}}
    return [start_server(config) for _ in range(2)]


def cluster_metric(node, name: str) -> float:
    for line in httpx.get(f"{node.url}/metrics", timeout=5).text.splitlines():
        if line.startswith(f"robogpt_video_cluster_{name}_total "):
            return float(line.split()[1])
    raise AssertionError(f"no robogpt_video_cluster_{name} in /metrics")


def health(node) -> dict:
    return httpx.get(f"{node.url}/health", timeout=5).json()


def problem_reasons(node) -> set[str]:
    """The ``reason`` labels of ``robogpt_video_problem`` in /metrics."""
    lines = httpx.get(f"{node.url}/metrics", timeout=5).text.splitlines()
    return {line.split('reason="', 1)[1].split('"', 1)[0]
            for line in lines if line.startswith("robogpt_video_problem{")}


class Viewer:
    """An MJPEG viewer in a thread: parts land in ``parts`` as (headers, jpeg)."""

    def __init__(self, url: str):
        self.parts: list[tuple[dict, bytes]] = []
        self.status: int | None = None
        self._client = httpx.Client(timeout=30)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url,), daemon=True)
        self._thread.start()

    def _run(self, url: str) -> None:
        try:
            with self._client.stream("GET", url) as response:
                self.status = response.status_code
                for part in iter_parts(response.iter_raw()):
                    self.parts.append(part)
                    if self._stop.is_set():
                        return
        except httpx.HTTPError:
            pass

    def close(self) -> None:
        self._stop.set()
        self._client.close()
        self._thread.join(10)


def frame_with_timestamp(viewer: Viewer, timestamp: str, jpeg: bytes):
    return any(h.get("x-timestamp") == timestamp and body == jpeg for h, body in viewer.parts)


def test_a_frame_published_on_one_node_is_seen_on_another(nodes, redis_server):
    a, b = nodes
    publish(a.url, "cam", make_jpeg(seed=1)).raise_for_status()
    wait_for(lambda: redis_server.cli("EXISTS", "rv:stream:cam") == "1", what="the stream key")
    assert redis_server.numsub("rv:frames:cam") == 0  # nobody watches: B takes nothing
    assert cluster_metric(b, "frames_received") == 0

    viewer = Viewer(f"{b.url}/stream/cam")
    try:
        wait_for(lambda: viewer.parts, what="the current frame on B")
        jpeg = make_jpeg(seed=2)
        publish(a.url, "cam", jpeg).raise_for_status()
        stamp = wait_for(lambda: httpx.get(f"{a.url}/snapshot/cam").headers["x-timestamp"]
                         if httpx.get(f"{a.url}/snapshot/cam").content == jpeg else None,
                         what="A's snapshot")
        wait_for(lambda: frame_with_timestamp(viewer, stamp, jpeg), what="the frame on B")
        snap = httpx.get(f"{b.url}/snapshot/cam", timeout=10)
        assert snap.status_code == 200
        assert snap.content == jpeg and snap.headers["x-timestamp"] == stamp
        assert redis_server.numsub("rv:frames:cam") == 1
        assert cluster_metric(a, "frames_published") >= 2
        assert cluster_metric(b, "frames_received") >= 2
    finally:
        viewer.close()
    # B's last viewer left: B unsubscribes (after its grace), and A stops publishing.
    wait_for(lambda: redis_server.numsub("rv:frames:cam") == 0, what="B to unsubscribe")
    published = cluster_metric(a, "frames_published")
    publish(a.url, "cam", make_jpeg(seed=3)).raise_for_status()
    publish(a.url, "cam", make_jpeg(seed=4)).raise_for_status()
    assert cluster_metric(a, "frames_published") <= published + 1


def test_snapshot_on_another_node(nodes):
    a, b = nodes
    jpeg = make_jpeg(seed=5)
    publish(a.url, "snap", jpeg).raise_for_status()
    stamp = httpx.get(f"{a.url}/snapshot/snap").headers["x-timestamp"]
    snap = wait_for(lambda: (r := httpx.get(f"{b.url}/snapshot/snap", timeout=10)).status_code
                    == 200 and r, what="B's snapshot")
    assert snap.content == jpeg and snap.headers["x-timestamp"] == stamp


def test_a_stream_unknown_everywhere_is_404(nodes):
    a, b = nodes
    for node in nodes:
        assert httpx.get(f"{node.url}/stream/nowhere", timeout=10).status_code == 404
        assert httpx.get(f"{node.url}/snapshot/nowhere", timeout=10).status_code == 404


def test_nodes_keep_working_without_redis_and_rejoin(nodes, redis_server):
    a, b = nodes
    assert health(a)["status"] == health(b)["status"] == "healthy"
    redis_server.stop()
    for node in nodes:
        report = wait_for(lambda n=node: health(n)["status"] == "degraded" and health(n),
                          what="degraded health")
        assert any("Redis" in problem for problem in report["problems"]), report
        assert problem_reasons(node) == {"cluster_disconnected"}
    # Local work goes on.
    jpeg = make_jpeg(seed=6)
    publish(a.url, "local", jpeg).raise_for_status()
    assert httpx.get(f"{a.url}/snapshot/local").content == jpeg
    assert httpx.get(f"{b.url}/snapshot/local", timeout=10).status_code == 404

    redis_server.start()
    for node in nodes:
        wait_for(lambda n=node: health(n)["status"] == "healthy", what="the node to rejoin")
        assert problem_reasons(node) == set()
    jpeg = make_jpeg(seed=7)
    publish(a.url, "local", jpeg).raise_for_status()
    wait_for(lambda: redis_server.cli("EXISTS", "rv:stream:local") == "1", what="the stream key")
    viewer = Viewer(f"{b.url}/stream/local")
    try:
        wait_for(lambda: any(body == jpeg for _, body in viewer.parts), what="the frame on B")
    finally:
        viewer.close()


def test_without_redis_url_redis_is_not_imported(tmp_path):
    code = (
        "import sys; from robogpt_video.config import Settings; "
        "from robogpt_video.runtime import Runtime; r = Runtime(Settings()); "
        "assert r.cluster is None; assert 'redis' not in sys.modules, 'redis imported'"
    )
    subprocess.run([os.sys.executable, "-c", code], check=True, cwd=tmp_path,
                   env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})


# -- one namespace (second slice) ----------------------------------------------------------


@pytest.fixture
def make_nodes(start_server, redis_server):
    """``make_nodes(n, config)``: n nodes sharing the test's Redis."""

    def make(count: int = 2, config: dict | None = None):
        base = merge({"cluster": {"redis_url": redis_server.url},
                      "recording": {"enabled": False}}, config or {})
        return [start_server(base) for _ in range(count)]

    return make


def test_a_stream_on_one_node_is_listed_and_its_stats_read_on_another(nodes):
    a, b = nodes
    publish(a.url, "listed", make_jpeg(seed=1)).raise_for_status()
    publish(a.url, "listed", make_jpeg(seed=2)).raise_for_status()
    entry = wait_for(
        lambda: next((s for s in httpx.get(f"{b.url}/api/streams").json()["streams"]
                      if s["name"] == "listed" and s["total_frames"] == 2), None),
        what="B to list A's stream",
    )
    assert entry["width"] == 320 and entry["height"] == 240
    stats = httpx.get(f"{b.url}/api/streams/listed/stats")
    assert stats.status_code == 200, stats.text
    assert stats.json()["total_frames"] == 2 and stats.json()["has_current_frame"]
    assert health(b)["active_streams"] == 1 or wait_for(
        lambda: health(b)["active_streams"] == 1, what="B's /health to count A's stream")
    assert health(b)["node_streams"] == 0
    assert httpx.get(f"{b.url}/api/streams/nowhere/stats").status_code == 404


def test_the_stream_limit_holds_across_nodes(make_nodes):
    a, b = make_nodes(2, {"streams": {"max_concurrent": 2}})
    publish(a.url, "one", make_jpeg(seed=1)).raise_for_status()
    publish(b.url, "two", make_jpeg(seed=2)).raise_for_status()
    for node in (a, b):
        refused = publish(node.url, "three", make_jpeg(seed=3))
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"] == "stream_limit_reached"
    # A stream that exists elsewhere takes no new place: B may be published to for "one".
    publish(b.url, "one", make_jpeg(seed=4)).raise_for_status()
    # Deleting one frees its place on every node.
    assert httpx.delete(f"{a.url}/api/streams/two").status_code == 200
    publish(a.url, "three", make_jpeg(seed=5)).raise_for_status()


def test_first_frames_arriving_together_make_one_claim(nodes):
    """16 connections send a new stream's first frame at once (a load balancer spreading
    one camera's POSTs): one claim in Redis, not one per frame, and every frame is taken."""
    node = nodes[0]
    jpeg = make_jpeg(seed=7)
    request = (
        f"POST /publish/burst HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {len(jpeg)}\r\nConnection: close\r\n\r\n"
    ).encode() + jpeg
    connections = [socket.create_connection(("127.0.0.1", node.port), timeout=10) for _ in range(16)]
    try:
        for conn in connections:  # everything but the last byte...
            conn.sendall(request[:-1])
        for conn in connections:  # ...then the last bytes together: all 16 are readable at once
            conn.sendall(request[-1:])
        answers = [b"".join(iter(lambda c=conn: c.recv(65536), b"")) for conn in connections]
    finally:
        for conn in connections:
            conn.close()
    assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers), [a[:80] for a in answers]
    assert cluster_metric(node, "stream_claims") == 1
    stats = httpx.get(f"{node.url}/api/streams/burst/stats", timeout=5).json()
    assert stats["total_frames"] == 16


def test_delete_on_one_node_ends_the_stream_everywhere(make_nodes, redis_server):
    a, b = make_nodes(2, {"recording": {"enabled": True}})
    publish(a.url, "doomed", make_jpeg(seed=1)).raise_for_status()
    viewer_a = Viewer(f"{a.url}/stream/doomed")
    viewer_b = None
    try:
        wait_for(lambda: viewer_a.parts, what="A's viewer")
        wait_for(lambda: redis_server.cli("EXISTS", "rv:stream:doomed") == "1", what="the key")
        viewer_b = Viewer(f"{b.url}/stream/doomed")
        wait_for(lambda: viewer_b.parts, what="B's viewer")
        response = httpx.delete(f"{b.url}/api/streams/doomed")
        assert response.status_code == 200, response.text
        wait_for(lambda: not viewer_a._thread.is_alive(), what="A's viewer to end")
        wait_for(lambda: not viewer_b._thread.is_alive(), what="B's viewer to end")
        wait_for(lambda: httpx.get(f"{a.url}/snapshot/doomed").status_code == 404,
                 what="A to forget the stream")
        assert redis_server.cli("EXISTS", "rv:stream:doomed") == "0"
        from recording_tools import sidecars

        wait_for(lambda: [m["status"] for m in sidecars(a.recordings, "doomed")] == ["complete"],
                 what="A's recording to close")
        assert httpx.delete(f"{b.url}/api/streams/doomed").status_code == 404
    finally:
        viewer_a.close()
        if viewer_b is not None:
            viewer_b.close()


def test_an_idle_stream_published_to_two_nodes_is_removed_once(make_nodes, redis_server):
    a, b = make_nodes(2, {"streams": {"timeout_seconds": 2},
                          "cleanup": {"interval_seconds": 0.5}})
    publish(a.url, "quiet", make_jpeg(seed=1)).raise_for_status()
    publish(b.url, "quiet", make_jpeg(seed=2)).raise_for_status()  # fed on both
    for node in (a, b):
        wait_for(lambda n=node: httpx.get(f"{n.url}/snapshot/quiet").status_code == 200,
                 what="the stream on both")
    assert health(a)["node_streams"] == health(b)["node_streams"] == 1
    wait_for(lambda: all(health(n)["node_streams"] == 0 for n in (a, b)), timeout=20,
             what="both parts to end")
    assert redis_server.cli("EXISTS", "rv:stream:quiet") == "0"
    # Removed once: one node (its home, A) ended it for all.
    assert cluster_metric(a, "streams_timed_out") + cluster_metric(b, "streams_timed_out") == 1
    logs = a.output() + b.output()
    assert logs.count("stream quiet timed out cluster-wide") == 1, logs


def test_a_viewer_gets_frames_published_to_another_node_of_the_same_stream(nodes):
    a, b = nodes
    publish(a.url, "both", make_jpeg(seed=1)).raise_for_status()
    publish(b.url, "both", make_jpeg(seed=2)).raise_for_status()
    viewer = Viewer(f"{a.url}/stream/both")
    try:
        wait_for(lambda: viewer.parts, what="A's current frame")
        jpeg = make_jpeg(seed=3)

        def arrived():  # B's frames reach A's viewer once A has subscribed
            publish(b.url, "both", jpeg).raise_for_status()
            return any(body == jpeg for _, body in viewer.parts)

        wait_for(arrived, what="a frame published to B on A's viewer", step=0.2)
        total = httpx.get(f"{b.url}/api/streams/both/stats").json()["total_frames"]
        assert total >= 3  # both nodes' frames (A: 1, B: 2 or more)
    finally:
        viewer.close()


# -- serve --workers N ----------------------------------------------------------------------


def test_workers_without_redis_refuse(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("server: {host: 127.0.0.1, port: 0}\n")
    done = subprocess.run(
        [os.sys.executable, "-m", "robogpt_video", "serve", "--config", str(config),
         "--workers", "2"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )
    assert done.returncode == 2, done.stderr
    assert "--workers 2 needs cluster.redis_url" in done.stderr


def _node_of(url: str) -> str:
    with httpx.Client() as client:  # a new connection: the kernel picks a worker
        return client.get(f"{url}/health").json()["node"]


def test_two_workers_serve_one_port_and_share_streams(tmp_path, redis_server):
    server = ServerProcess(tmp_path / "workers",
                           {"cluster": {"redis_url": redis_server.url},
                            "recording": {"enabled": False}}, args=["--workers", "2"])
    server.start()
    try:
        seen = wait_for(lambda: len({_node_of(server.url) for _ in range(20)}) == 2 or None,
                        what="both workers to answer")
        assert seen
        nodes = {_node_of(server.url) for _ in range(20)}
        assert all(n.endswith((":0", ":1")) and f":{server.port}:" in n for n in nodes), nodes
        # Frames posted over separate connections land on both workers; every viewer,
        # whichever worker it reached, gets them all.
        publish(server.url, "spread", make_jpeg(seed=0)).raise_for_status()
        viewers = [Viewer(f"{server.url}/stream/spread") for _ in range(6)]
        try:
            wait_for(lambda: all(v.parts for v in viewers), what="viewers to start")
            last = None
            for seed in range(1, 41):
                last = make_jpeg(seed=seed)
                publish(server.url, "spread", last).raise_for_status()  # a new connection each
            wait_for(lambda: all(any(b == last for _, b in v.parts) for v in viewers),
                     what="every viewer to get the last frame")
            # Each worker announces its part at most a second after its last frame.
            stats = wait_for(lambda: (r := httpx.get(f"{server.url}/api/streams/spread/stats")
                                      .json())["total_frames"] == 41 and r,
                             what="both workers' frames in the stats")
            assert len(stats["nodes"]) == 2, stats  # published to both workers
        finally:
            for viewer in viewers:
                viewer.close()
        # kill -9 of one worker: the other keeps serving.
        pids = worker_pids(server.proc.pid)
        assert len(pids) == 2
        os.kill(pids[0], 9)
        wait_for(lambda: len(worker_pids(server.proc.pid)) == 1, what="the worker to die")
        for seed in range(10):
            publish(server.url, "after", make_jpeg(seed=seed)).raise_for_status()
        assert server.proc.poll() is None
    finally:
        code = server.stop()
    assert code == 1  # one worker was killed
    assert not worker_pids_alive(pids)


def worker_pids(parent: int) -> list[int]:
    path = Path(f"/proc/{parent}/task/{parent}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def worker_pids_alive(pids: list[int]) -> list[int]:
    return [pid for pid in pids if Path(f"/proc/{pid}").exists()]
