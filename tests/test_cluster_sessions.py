"""Dashboard sign-ins across nodes (docs/security.md "Sessions in a cluster"): a session
token one node issues is accepted by every node sharing its Redis, or its
``auth.session_secret``; one signed with another key is refused. Real nodes, a real
redis-server."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import shutil

import aiohttp
import httpx
import pytest

from helpers import ServerProcess, iter_parts, make_jpeg, publish, wait_for

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None,
    reason="redis-server is required: apt-get install redis-server",
)

PASSWORD = "ops-password-0b7e"
ROBOT = "robot-token-3f9a"
USERS = [
    {"name": "ops", "password": PASSWORD,
     "permissions": [{"action": "view", "streams": "*"}, {"action": "playback", "streams": "*"}]},
    {"name": "robot", "token": ROBOT, "permissions": [{"action": "publish", "streams": "*"}]},
]
AUTH = {"users": USERS, "max_failures_per_minute": 100000}
SECRET = "a-session-secret-shared-by-every-node-4c2d9e"


def sign_in(node) -> str:
    basic = base64.b64encode(f"ops:{PASSWORD}".encode()).decode()
    answer = httpx.post(f"{node.url}/api/session", headers={"Authorization": f"Basic {basic}"},
                        timeout=10)
    assert answer.status_code == 200, answer.text
    token = answer.json()["token"]
    assert token.startswith("rgv1.")
    return token


def streams(node, token: str) -> httpx.Response:
    return httpx.get(f"{node.url}/api/streams", headers={"Authorization": f"Bearer {token}"},
                     timeout=10)


def first_frame(node, name: str, token: str) -> bytes:
    with httpx.stream("GET", f"{node.url}/stream/{name}", params={"token": token},
                      timeout=10) as answer:
        assert answer.status_code == 200
        _, jpeg = next(iter_parts(answer.iter_bytes()))
    return jpeg


def ws_frame(node, name: str, token: str) -> dict:
    """The first frame of ``name`` over ``/ws/view?token=``."""
    async def scenario():
        url = f"{node.url}/ws/view".replace("http", "ws", 1)
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(url, params={"token": token}) as ws:
                await ws.send_str(json.dumps({"type": "subscribe", "streams": [{"name": name}]}))
                async with asyncio.timeout(15):
                    while True:
                        message = await ws.receive()
                        assert message.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY)
                        if message.type == aiohttp.WSMsgType.BINARY:
                            return message.data

    return asyncio.run(scenario())


def ws_refused(node, token: str) -> int:
    async def scenario():
        url = f"{node.url}/ws/view".replace("http", "ws", 1)
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(url, params={"token": token})
        return refused.value.status

    return asyncio.run(scenario())


def forged(token: str) -> str:
    """``token`` signed again with a key no node has."""
    body = token.rpartition(".")[0]
    mac = hmac.new(b"some other key" * 3, body.encode(), hashlib.sha256).digest()
    return f"{body}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"


def logs(node) -> str:
    return node.output() + "".join(
        p.read_text(errors="replace") for p in (node.workdir / "logs").glob("*"))


def feed(node, name: str) -> None:
    with httpx.Client(timeout=10, headers={"Authorization": f"Bearer {ROBOT}"}) as client:
        for seed in range(3):
            assert publish(node.url, name, make_jpeg(160, 120, seed=seed), client).status_code == 200


def test_a_session_from_one_node_works_on_the_other_through_redis(start_server, redis_server):
    config = {"cluster": {"redis_url": redis_server.url}, "auth": AUTH}
    a, b = start_server(config), start_server(config)
    feed(a, "cam")
    token = sign_in(a)
    # B reads the key at its first announcement: a second at most after it connected.
    listed = wait_for(lambda: (lambda r: r if r.status_code == 200 else None)(streams(b, token)),
                      what="B to accept A's session token")
    assert [s["name"] for s in listed.json()["streams"]] == ["cam"]
    assert streams(a, token).status_code == 200
    assert first_frame(b, "cam", token)[:2] == b"\xff\xd8"  # A's stream, mirrored by B
    assert ws_frame(b, "cam", token)
    # And the other way: a token B issued works on A.
    assert streams(a, sign_in(b)).status_code == 200

    # A token signed with another key: a made-up one, and one from a node of no cluster
    # (its key made at its start) with the same users.
    alone = start_server({"auth": AUTH})
    strangers = [forged(token), sign_in(alone)]
    for stranger in strangers:
        for node in (a, b):
            refused = streams(node, stranger)
            assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
            answer = httpx.get(f"{node.url}/stream/cam", params={"token": stranger}, timeout=10)
            assert answer.status_code == 401
            assert ws_refused(node, stranger) == 401
    assert streams(alone, token).status_code == 401

    # The secret is in Redis only: in no log, no metric, no answer.
    secret = redis_server.cli("GET", "rv:session-secret")
    assert len(secret) == 64
    for node in (a, b):
        metrics = httpx.get(f"{node.url}/metrics", auth=("ops", PASSWORD), timeout=10).text
        assert secret not in logs(node) and secret not in metrics

    # Redis restarted empty: the first node to announce itself puts the key back, and
    # no one is signed out.
    redis_server.stop()
    redis_server.start()
    wait_for(lambda: redis_server.cli("GET", "rv:session-secret"),
             what="a node to put the key back")
    assert redis_server.cli("GET", "rv:session-secret") == secret
    for node in (a, b):
        assert streams(node, token).status_code == 200


def test_with_a_configured_session_secret_sessions_survive_restarts(
    start_server, redis_server
):
    """``auth.session_secret`` (here from the environment, as compose passes it): no key
    in Redis, and a token outlives the node that issued it."""
    config = {"cluster": {"redis_url": redis_server.url}, "auth": AUTH}
    env = {"ROBOGPT_AUTH__SESSION_SECRET": SECRET}
    a, b = start_server(config, env=env), start_server(config, env=env)
    feed(a, "cam")
    token = sign_in(a)
    assert streams(b, token).status_code == 200  # no announcement to wait for
    assert first_frame(b, "cam", token)[:2] == b"\xff\xd8"
    assert ws_frame(b, "cam", token)
    assert redis_server.cli("EXISTS", "rv:session-secret") == "0"
    a.stop()
    a.start()
    assert streams(a, token).status_code == 200
    # Another secret is another key.
    other = start_server({"auth": AUTH}, env={"ROBOGPT_AUTH__SESSION_SECRET": SECRET[::-1]})
    assert streams(other, token).status_code == 401
    assert streams(a, sign_in(other)).status_code == 401
    for node in (a, b, other):
        assert SECRET not in logs(node) and SECRET[::-1] not in logs(node)


def test_a_short_session_secret_is_refused_without_echoing_it(tmp_path):
    server = ServerProcess(tmp_path / "short", {"auth": {**AUTH, "session_secret": "short-9f"}})
    with pytest.raises(RuntimeError) as failed:
        server.start()
    assert "auth.session_secret: Value error, must be at least 32 characters" in str(failed.value)
    assert "short-9f" not in str(failed.value)


def test_workers_accept_each_others_session_tokens(tmp_path, redis_server):
    config = {"cluster": {"redis_url": redis_server.url}, "auth": AUTH}
    workers = ServerProcess(tmp_path / "workers", config, args=["--workers", "2"])
    workers.start()
    try:
        statuses: list[int] = []
        tokens: list[str] = []

        def both_accept() -> bool:
            # A token issued by a worker before it has read the shared key (just after
            # start) is valid on that worker only (docs/security.md): sign in anew.
            token = sign_in(workers)
            seen = set()
            for _ in range(12):  # a new connection each: the kernel picks a worker
                answer = httpx.get(f"{workers.url}/health", timeout=5,
                                   headers={"Authorization": f"Bearer {token}"})
                statuses.append(answer.status_code)
                if answer.status_code != 200:
                    return False
                seen.add(answer.json()["node"])
            tokens.append(token)
            return len(seen) == 2

        try:
            wait_for(both_accept, what="both workers to accept one token")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: answers {statuses[-20:]}; "
                                 f"their output:\n{workers.output()[-3000:]}") from None
        token = tokens[-1]
        assert all(streams(workers, token).status_code == 200 for _ in range(20))
    finally:
        workers.stop()
