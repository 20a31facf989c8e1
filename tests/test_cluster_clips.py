"""Clips in a cluster (docs/cluster.md "Clips on every node"): a clip of a stream
recorded on node A, asked, followed and downloaded through node B. Two real nodes, a
real redis-server."""

from __future__ import annotations

import shutil
import time

import httpx
import pytest

from helpers import make_jpeg, publish, wait_for
from recording_tools import decode, sidecars
from robogpt_video.recording.store import sidecar_time
from test_cluster_nodes import PEER, _nodes, listing, node_name, record

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None,
    reason="redis-server is required: apt-get install redis-server",
)


def clip_range(meta: dict) -> dict:
    return {"stream": meta["stream_name"], "start": sidecar_time(meta["start_time"]) - 1,
            "end": sidecar_time(meta["end_time"]) + 1}


def knows_both(node, headers=None) -> dict:
    return wait_for(lambda: (lambda l: l if len(l["nodes"]) == 2 else None)(
        listing(node, headers)), what="the node to know the other")


def ready(node, clip: dict, headers=None) -> httpx.Response:
    def done():
        state = httpx.get(f"{node.url}/api/clips/{clip['id']}", headers=headers, timeout=10)
        assert state.status_code == 200, state.text
        return state if state.json()["status"] in ("ready", "failed") else None

    return wait_for(done, timeout=60, what=f"clip {clip['id']} to be made")


def test_a_clip_of_another_nodes_recording_is_made_there_and_served_through_any(
    start_server, redis_server, tmp_path
):
    a, b = _nodes(start_server, redis_server)
    meta = record(a, "cam", frames=8)
    name_a = node_name(a)
    knows_both(b)

    asked = httpx.post(f"{b.url}/api/clips", json=clip_range(meta), timeout=10)
    assert asked.status_code == 202, asked.text
    assert asked.headers["x-recording-node"] == name_a  # made by A, which has the frames
    clip = asked.json()
    state = ready(b, clip)  # followed through B
    assert state.headers["x-recording-node"] == name_a
    assert state.json()["status"] == "ready" and state.json()["frames_total"] == 8
    assert ready(a, clip).json() == state.json()

    url = f"{b.url}{clip['url']}"
    whole = httpx.get(url, timeout=10)
    assert whole.status_code == 200 and whole.headers["content-type"] == "video/mp4"
    assert whole.headers["x-recording-node"] == name_a
    assert len(whole.content) == state.json()["size_bytes"]
    video = tmp_path / "clip.mp4"
    video.write_bytes(whole.content)
    got = decode(video)
    assert got.codec == "h264" and got.frames == 8
    assert httpx.get(f"{a.url}{clip['url']}", timeout=10).content == whole.content
    part = httpx.get(url, headers={"Range": "bytes=0-99"}, timeout=10)
    assert part.status_code == 206 and part.content == whole.content[:100]
    head = httpx.head(url, timeout=10)
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(whole.content)

    # Asked again through either node: A's cached clip. B made and keeps nothing.
    for node in (a, b):
        again = httpx.post(f"{node.url}/api/clips", json=clip_range(meta), timeout=10)
        assert again.status_code == 200 and again.json()["id"] == clip["id"]
    assert not (b.recordings / ".clips").exists()

    # Nothing anywhere: 404 through B, for a range and for an id.
    none = httpx.post(f"{b.url}/api/clips", json={**clip_range(meta), "stream": "other"},
                      timeout=10)
    assert none.status_code == 404 and none.json()["error"] == "not_found"
    for path in (f"/api/clips/{'0' * 32}", f"/api/clips/{'0' * 32}.mp4"):
        unknown = httpx.get(f"{b.url}{path}", timeout=10)
        assert unknown.status_code == 404 and unknown.json()["error"] == "not_found"
    # A request marked as a node's is answered from B's own recordings, never passed on.
    marked = httpx.post(f"{b.url}/api/clips", json=clip_range(meta),
                        headers={PEER: "somenode 0 -"}, timeout=10)
    assert marked.status_code == 404
    assert httpx.get(f"{b.url}/api/clips/{clip['id']}", headers={PEER: "somenode 0 -"},
                     timeout=10).status_code == 404

    # Recordings of the range on both nodes: the node with most of the range makes it.
    # A's segment of "mixed" lasts ≥ 0.2 s (frames paced 0.05 s apart), B's 1 ms (one
    # frame at recording.fps 1000).
    with httpx.Client(timeout=10) as client:
        for seed in range(5):
            assert publish(a.url, "mixed", make_jpeg(160, 120, seed=seed), client).status_code == 200
            time.sleep(0.05)  # pacing: the segment's length, not synchronisation
    assert httpx.delete(f"{a.url}/api/streams/mixed", timeout=10).status_code == 200
    longer = wait_for(lambda: [s for s in sidecars(a.recordings, "mixed")
                               if s["status"] == "complete"], what="A's segment")[0]
    shorter = record(b, "mixed", frames=1)
    span = {"stream": "mixed", "start": clip_range(longer)["start"],
            "end": clip_range(shorter)["end"]}
    ids = set()
    for node in (a, b):
        made = httpx.post(f"{node.url}/api/clips", json=span, timeout=10)
        assert made.status_code in (200, 202), made.text  # 200: made since
        assert made.headers.get("x-recording-node", name_a) == name_a
        ids.add(made.json()["id"])
    assert len(ids) == 1  # one clip, of A's frames only (docs/cluster.md)


def test_a_dead_node_with_the_recordings_is_named(start_server, redis_server):
    a, b = _nodes(start_server, redis_server)
    meta = record(a, "cam", frames=4)
    knows_both(b)
    a.kill()
    answer = httpx.post(f"{b.url}/api/clips", json=clip_range(meta), timeout=10)
    assert answer.status_code == 503 and answer.json()["error"] == "node_unreachable"
    assert node_name(b) not in answer.json()["message"]


TOKENS = {"pub": "pub-token-c41a", "ops": "ops-token-77e2", "player": "player-token-19bd"}
USERS = [
    {"name": "pub", "token": TOKENS["pub"],
     "permissions": [{"action": "publish"}, {"action": "admin"}]},
    {"name": "ops", "token": TOKENS["ops"], "permissions": [{"action": "playback"}]},
    {"name": "player", "token": TOKENS["player"],
     "permissions": [{"action": "playback", "streams": "cam_*"}]},
]


def bearer(user: str) -> dict:
    return {"Authorization": f"Bearer {TOKENS[user]}"}


def test_with_access_control_clips_through_another_node_obey_the_users_permissions(
    start_server, redis_server
):
    a, b = _nodes(start_server, redis_server,
                  {"auth": {"users": USERS, "max_failures_per_minute": 100000}})
    cam = record(a, "cam_1", frames=4, headers=bearer("pub"))
    yard = record(a, "yard", frames=4, headers=bearer("pub"))
    knows_both(b, bearer("ops"))

    mine = httpx.post(f"{b.url}/api/clips", json=clip_range(cam), headers=bearer("player"),
                      timeout=10)
    assert mine.status_code == 202, mine.text
    assert ready(b, mine.json(), bearer("player")).json()["status"] == "ready"
    got = httpx.get(f"{b.url}{mine.json()['url']}", headers=bearer("player"), timeout=10)
    assert got.status_code == 200 and got.content[4:8] == b"ftyp"

    refused = httpx.post(f"{b.url}/api/clips", json=clip_range(yard), headers=bearer("player"),
                         timeout=10)
    assert refused.status_code == 403
    theirs = httpx.post(f"{b.url}/api/clips", json=clip_range(yard), headers=bearer("ops"),
                        timeout=10).json()
    assert ready(b, theirs, bearer("ops")).json()["status"] == "ready"
    # B learns the clip's stream from A, and checks it against the user.
    for path in (f"/api/clips/{theirs['id']}", theirs["url"]):
        assert httpx.get(f"{b.url}{path}", headers=bearer("player"), timeout=10).status_code == 403
        assert httpx.get(f"{b.url}{path}", timeout=10).status_code == 401
    # A forged node signature opens nothing on A.
    forged = httpx.get(f"{a.url}/api/clips/{theirs['id']}", headers={PEER: "somenode 0 -"},
                       timeout=10)
    assert forged.status_code == 401
