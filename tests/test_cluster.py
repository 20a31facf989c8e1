"""Nodes share streams through a real redis-server (docs/cluster.md)."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

import httpx
import pytest

from helpers import die_with_parent, iter_parts, make_jpeg, publish, wait_for

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None,
    reason="redis-server is required by tests/test_cluster.py: apt-get install redis-server",
)


class RedisServer:
    """Debian's redis-server on a unix socket (``--port 0``: no TCP, no port race)."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.socket = directory / "redis.sock"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> "RedisServer":
        parent = os.getpid()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", "0", "--unixsocket", str(self.socket),
             "--save", "", "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=lambda: die_with_parent(parent),
        )
        wait_for(lambda: self.cli("PING") == "PONG", what="redis-server to answer PING")
        return self

    def cli(self, *args: str) -> str:
        try:
            return subprocess.run(
                ["redis-cli", "-s", str(self.socket), *args],
                capture_output=True, text=True, timeout=5,
            ).stdout.strip()
        except subprocess.TimeoutExpired:
            return ""

    def numsub(self, channel: str) -> int:
        out = self.cli("PUBSUB", "NUMSUB", channel).split()
        return int(out[1]) if len(out) == 2 else -1

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
        self.socket.unlink(missing_ok=True)


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path / "redis")
    server.directory.mkdir()
    yield server.start()
    server.stop()


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
