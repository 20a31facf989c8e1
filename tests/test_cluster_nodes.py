"""Recordings on every node: listing, download, Range, /play and DELETE through any node
(docs/cluster.md "Recordings on every node"). Two real nodes, a real redis-server."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest

from helpers import ServerProcess, iter_parts, make_jpeg, publish, wait_for
from recording_tools import sidecars
from robogpt_video.web.peers import _mac

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None,
    reason="redis-server is required: apt-get install redis-server",
)

RECORDING = {"enabled": True, "codec": "mjpeg", "fps": 1000}
PEER = "X-Robogpt-Peer"


def _nodes(start_server, redis_server, extra: dict | None = None):
    config = {"cluster": {"redis_url": redis_server.url}, "recording": RECORDING, **(extra or {})}
    return [start_server(config) for _ in range(2)]


def node_name(node, headers=None) -> str:
    return httpx.get(f"{node.url}/health", headers=headers, timeout=5).json()["node"]


def record(node, stream: str, frames: int = 8, close: bool = True, headers=None) -> dict:
    """Publish ``frames`` frames of ``stream`` to ``node``; with ``close``, delete the
    stream and wait for its segment to be complete. Returns its sidecar."""
    def segment(status: str):
        return wait_for(lambda: [s for s in sidecars(node.recordings, stream)
                                 if s["status"] == status], what=f"a {status} segment of {stream}")[0]

    with httpx.Client(timeout=10, headers=headers) as client:
        for i in range(frames):
            assert publish(node.url, stream, make_jpeg(160, 120, seed=i), client).status_code == 200
        # The segment opens once the node holds the recording lease (docs/cluster.md).
        found = segment("recording")
        if close:
            assert client.delete(f"{node.url}/api/streams/{stream}").status_code == 200
            found = segment("complete")
    return found


def listing(node, headers=None, **query) -> dict:
    answer = httpx.get(f"{node.url}/api/recordings", params=query, headers=headers, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.fixture
def nodes(start_server, redis_server):
    return _nodes(start_server, redis_server)


def test_a_recording_on_one_node_is_listed_served_and_deleted_through_the_other(nodes):
    a, b = nodes
    meta = record(a, "cam")
    video = Path(meta["recording_path"])
    name_a, name_b = node_name(a), node_name(b)

    body = wait_for(lambda: (lambda l: l if l["complete"] and len(l["nodes"]) == 2 else None)(
        listing(b)), what="B to list both nodes")
    assert sorted(body["nodes"]) == sorted([name_a, name_b]) and body["missing_nodes"] == []
    [entry] = body["recordings"]
    assert body["count"] == 1
    assert entry["node"] == name_a and entry["file"] == video.name
    assert entry["size_bytes"] == video.stat().st_size and entry["open"] is False
    assert listing(b, stream="other")["recordings"] == []  # the query reaches A too
    assert [e["node"] for e in listing(a)["recordings"]] == [name_a]

    url = f"{b.url}{entry['download_url']}"
    whole = httpx.get(url, timeout=10)
    assert whole.status_code == 200 and whole.content == video.read_bytes()
    assert whole.headers["content-type"] == "video/mp4"
    assert whole.headers["x-recording-node"] == name_a
    assert "attachment" in whole.headers["content-disposition"]
    head = httpx.head(url, timeout=10)
    assert head.status_code == 200 and int(head.headers["content-length"]) == video.stat().st_size
    part = httpx.get(url, headers={"Range": "bytes=10-99"}, timeout=10)
    assert part.status_code == 206 and part.content == video.read_bytes()[10:100]
    assert part.headers["content-range"] == f"bytes 10-99/{video.stat().st_size}"
    bad = httpx.get(url, headers={"Range": f"bytes={10 ** 9}-"}, timeout=10)
    assert bad.status_code == 416
    assert bad.headers["content-range"] == f"bytes */{video.stat().st_size}"
    sidecar = httpx.get(f"{b.url}{entry['sidecar_url']}", timeout=10)
    assert sidecar.status_code == 200 and sidecar.json()["recording_path"] == str(video)

    with httpx.stream("GET", f"{b.url}{entry['play_url']}", timeout=10) as played:
        assert played.status_code == 200
        assert played.headers["content-type"].startswith("multipart/x-mixed-replace")
        parts = []
        for headers, jpeg in iter_parts(played.iter_bytes()):
            parts.append(jpeg)
            if len(parts) == 3:
                break
    assert all(jpeg[:2] == b"\xff\xd8" and jpeg[-2:] == b"\xff\xd9" for jpeg in parts)
    # The query reaches A: a frame step and a replay from a later frame.
    frame_url = f"{b.url}{entry['download_url']}/frame"
    first = httpx.get(frame_url, params={"t": 0}, timeout=10)
    assert first.status_code == 200 and first.content == parts[0]
    later = float(first.headers["x-next-offset"])
    second = httpx.get(frame_url, params={"t": later}, timeout=10)
    assert second.content == parts[1] and float(second.headers["x-offset"]) == later
    bad_t = httpx.get(frame_url, params={"t": -1}, timeout=10)
    assert bad_t.status_code == 400 and bad_t.json()["error"] == "invalid_parameters"
    with httpx.stream("GET", f"{b.url}{entry['play_url']}", params={"start": later, "speed": 4},
                      timeout=10) as played:
        headers, jpeg = next(iter_parts(played.iter_bytes()))
    assert jpeg == parts[1] and float(headers["x-offset"]) == later

    missing = httpx.get(f"{b.url}/api/recordings/cam/cam_20200101_000000.mp4", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"

    # A segment A is writing: 409 through B as on A; then a closed one is deleted on A.
    live = record(a, "live", close=False)
    live_url = f"{b.url}/api/recordings/live/{Path(live['recording_path']).name}"
    refused = httpx.delete(live_url, timeout=10)
    assert refused.status_code == 409 and refused.json()["error"] == "recording_in_use"
    assert any(e["open"] for e in listing(b, stream="live")["recordings"])
    deleted = httpx.delete(url, timeout=10)
    assert deleted.status_code == 200 and deleted.json()["status"] == "success"
    assert not video.exists() and not video.with_suffix(".json").exists()
    assert listing(b, stream="cam")["recordings"] == []


def test_a_proxied_request_is_answered_from_the_nodes_own_files(nodes):
    """A request that says it comes from a node is never passed on (no loop)."""
    a, b = nodes
    meta = record(a, "cam")
    file = Path(meta["recording_path"]).name
    wait_for(lambda: len(listing(b)["recordings"]) == 1, what="B to list A's recording")
    marked = {PEER: "somenode 0 -"}  # access control is off: the mark is not checked
    assert listing(b, headers=marked)["recordings"] == []
    answer = httpx.get(f"{b.url}/api/recordings/cam/{file}", headers=marked, timeout=10)
    assert answer.status_code == 404


def test_a_dead_node_is_named_missing_and_the_listing_still_answers(nodes):
    a, b = nodes
    record(a, "cam")
    own = record(b, "mine")
    name_a = node_name(a)
    wait_for(lambda: listing(b)["count"] == 2, what="B to list both recordings")
    a.kill()
    body = listing(b)
    assert body["missing_nodes"] == [name_a] and body["complete"] is False
    assert [e["file"] for e in body["recordings"]] == [Path(own["recording_path"]).name]
    assert any(name_a in problem for problem in body["problems"])


def test_without_redis_the_listing_is_this_nodes_and_says_so(nodes, redis_server):
    a, b = nodes
    record(a, "cam")
    own = record(b, "mine")
    wait_for(lambda: listing(b)["count"] == 2, what="B to list both recordings")
    redis_server.stop()
    body = wait_for(lambda: (lambda l: l if l["problems"] else None)(listing(b)),
                    what="the listing to say Redis is unreachable")
    assert [e["file"] for e in body["recordings"]] == [Path(own["recording_path"]).name]
    assert body["complete"] is False and "Redis unreachable" in body["problems"][0]


TOKENS = {user: f"token-of-{user}-5c1f" for user in ("pub", "player", "viewer", "admin")}
USERS = [
    {"name": "pub", "token": TOKENS["pub"],
     "permissions": [{"action": "publish", "streams": "*"}, {"action": "admin", "streams": "*"}]},
    {"name": "player", "token": TOKENS["player"],
     "permissions": [{"action": "playback", "streams": "cam_*"}]},
    {"name": "viewer", "token": TOKENS["viewer"],
     "permissions": [{"action": "view", "streams": "*"}]},
    {"name": "admin", "token": TOKENS["admin"],
     "permissions": [{"action": "admin", "streams": "*"}]},
]


def bearer(user: str) -> dict:
    return {"Authorization": f"Bearer {TOKENS[user]}"}


def test_with_access_control_another_nodes_files_obey_the_users_permissions(
    start_server, redis_server
):
    a, b = _nodes(start_server, redis_server,
                  {"auth": {"users": USERS, "max_failures_per_minute": 100000},
                   "server": {"debug": True}})  # the access log: what reached A
    cam = Path(record(a, "cam_1", headers=bearer("pub"))["recording_path"])
    other = Path(record(a, "yard", headers=bearer("pub"))["recording_path"])
    # player may play back cam_* only: the listing through B shows only those
    body = wait_for(lambda: (lambda l: l if len(l["nodes"]) == 2 else None)(
        listing(b, bearer("player"))), what="B to know A")
    assert [e["file"] for e in body["recordings"]] == [cam.name] and body["complete"]
    assert httpx.get(f"{b.url}/api/recordings", headers=bearer("viewer"),
                     timeout=10).status_code == 403
    url = f"{b.url}/api/recordings/cam_1/{cam.name}"
    got = httpx.get(url, headers=bearer("player"), timeout=10)
    assert got.status_code == 200 and got.content == cam.read_bytes()
    refused = httpx.get(f"{b.url}/api/recordings/yard/{other.name}", headers=bearer("player"),
                        timeout=10)
    assert refused.status_code == 403
    assert httpx.get(url, headers=bearer("viewer"), timeout=10).status_code == 403
    assert httpx.get(url, timeout=10).status_code == 401
    assert httpx.delete(url, headers=bearer("player"), timeout=10).status_code == 403
    # The user's ?token= (a dashboard link) works through B, and is not passed on to A.
    frame = httpx.get(f"{url}/frame", params={"t": 0, "token": TOKENS["player"]}, timeout=10)
    assert frame.status_code == 200 and frame.headers["x-recording-node"] == node_name(a, bearer("admin"))
    reached = [line for line in a.output().splitlines() if f"{cam.name}/frame" in line]
    assert reached and not any("token" in line for line in reached), reached
    # A name no recording can have is a 404 on B, with no node asked.
    odd = httpx.get(f"{b.url}/api/recordings/cam_1/x%3F.mp4", headers=bearer("player"), timeout=10)
    assert odd.status_code == 404 and odd.json()["error"] == "not_found"
    # A node-to-node signature that is not right opens nothing on A.
    for forged in ("somenode 0 -", f"{node_name(b, bearer('admin'))} 1 {'0' * 64}",
                   "somenode \u00b2 -"):
        answer = httpx.get(f"{a.url}/api/recordings/cam_1/{cam.name}", headers={PEER: forged.encode()},
                           timeout=10)
        assert answer.status_code == 401
    # A right signature opens A's file for its method, path and query only.
    secret = redis_server.cli("GET", "rv:peer-secret")
    stamp = str(int(time.time()))
    frame_path = f"/api/recordings/cam_1/{cam.name}/frame"
    signed = {PEER: f"somenode {stamp} {_mac(secret.encode(), 'somenode', stamp, 'GET', frame_path, {'t': '0'})}"}
    assert httpx.get(f"{a.url}{frame_path}", params={"t": "0"}, headers=signed,
                     timeout=10).status_code == 200
    assert httpx.get(f"{a.url}{frame_path}", params={"t": "0.5"}, headers=signed,
                     timeout=10).status_code == 401
    assert httpx.delete(url, headers=bearer("admin"), timeout=10).status_code == 200
    assert not cam.exists()
    # The peer secret reaches no log.
    assert len(secret) == 64
    for node in (a, b):
        logs = node.output() + "".join(
            p.read_text(errors="replace") for p in (node.workdir / "logs").glob("*"))
        assert secret not in logs


def test_workers_share_one_directory_and_are_reached_through_their_port(
    tmp_path, start_server, redis_server
):
    """``serve --workers 2`` and one more node: the workers serve each other's files
    from their shared directory (they do not ask each other) and know what the other
    is writing; the other node reaches them through their one port."""
    config = {"cluster": {"redis_url": redis_server.url}, "recording": RECORDING}
    workers = ServerProcess(tmp_path / "workers", config, args=["--workers", "2"])
    workers.start()
    try:
        b = start_server(config)
        wait_for(lambda: len({node_name(workers) for _ in range(20)}) == 2 or None,
                 what="both workers to answer")
        done = Path(record(workers, "cam")["recording_path"])
        live = Path(record(workers, "live", close=False)["recording_path"])
        own = Path(record(b, "mine")["recording_path"])

        # Whichever worker answers B knows the segment being written is open (its own,
        # or its sibling's as announced: ≤ 1 s old).
        def open_in(body):
            return {e["file"]: e["open"] for e in body["recordings"]}

        # (What a worker writes is announced about once a second: the closed one may be
        # listed as open for that long.)
        body = wait_for(lambda: (lambda l: l if l["count"] == 3 and open_in(l)[live.name]
                                 and not open_in(l)[done.name] else None)(listing(b)),
                        what="B to list the workers' recordings, the closed one closed")
        assert len(body["nodes"]) == 2 and body["complete"]  # B and one of the workers
        assert set(open_in(body)) == {done.name, live.name, own.name}
        got = httpx.get(f"{b.url}/api/recordings/cam/{done.name}", timeout=10)
        assert got.status_code == 200 and got.content == done.read_bytes()

        def every_worker(check) -> bool:  # a new connection each: the kernel picks a worker
            return all(check() for _ in range(10))

        wait_for(lambda: every_worker(lambda: (lambda l: l["count"] == 3 and len(l["nodes"]) == 2
                                               and open_in(l)[live.name])(listing(workers))),
                 what="either worker to list everything, the segment being written as open")
        assert every_worker(lambda: httpx.delete(
            f"{workers.url}/api/recordings/live/{live.name}", timeout=10).status_code == 409)
        got = httpx.get(f"{workers.url}/api/recordings/mine/{own.name}", timeout=10)
        assert got.status_code == 200 and got.content == own.read_bytes()
    finally:
        workers.stop()
