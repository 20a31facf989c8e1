"""``GET /ws/view``: many streams over one WebSocket, with aiohttp's client against a
real server (the dashboard's use of it is in test_browser.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import socket
import struct

import aiohttp
import httpx
import pytest
import simplejpeg

from helpers import make_jpeg, parse_view_frame, publish

def stats(url: str, name: str) -> dict:
    return httpx.get(f"{url}/api/streams/{name}/stats", timeout=10).json()


async def _receive(ws, want, timeout: float = 15.0):
    """Messages until ``want(kind, value)`` is true; returns that one. Text messages are
    JSON dicts, binary ones parsed frames."""
    async with asyncio.timeout(timeout):
        while True:
            message = await ws.receive()
            if message.type == aiohttp.WSMsgType.TEXT:
                value = json.loads(message.data)
                if want("text", value):
                    return value
            elif message.type == aiohttp.WSMsgType.BINARY:
                value = parse_view_frame(message.data)
                if want("frame", value):
                    return value
            else:
                raise AssertionError(f"the socket ended: {message}")


def _subscribe(*entries) -> str:
    return json.dumps({"type": "subscribe", "streams": list(entries)})


def _is(kind, **fields):
    return lambda got_kind, value: got_kind == kind and all(
        value.get(k) == v for k, v in fields.items())


def test_frames_of_every_subscribed_stream_one_message_each(server):
    url = server.url
    publish(url, "sock_a", make_jpeg(320, 240, seed=1))
    publish(url, "sock_b", make_jpeg(160, 120, seed=2))

    async def scenario():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"{server.url}/ws/view".replace("http", "ws")) as ws:
                await ws.send_str(_subscribe({"name": "sock_a", "width": 80, "quality": 60},
                                             {"name": "sock_b"}))
                ack = await _receive(ws, _is("text", type="subscribed"))
                assert ack["streams"] == ["sock_a", "sock_b"]
                got = {}
                while len(got) < 2:
                    frame = await _receive(ws, lambda kind, value: kind == "frame")
                    got[frame["stream"]] = frame
                # sock_a resized by the variant /stream?width= viewers share; sock_b as is.
                assert (got["sock_a"]["width"], got["sock_a"]["height"]) == (80, 60)
                assert simplejpeg.decode_jpeg_header(got["sock_a"]["jpeg"])[:2] == (60, 80)
                assert (got["sock_b"]["width"], got["sock_b"]["height"]) == (160, 120)
                assert got["sock_b"]["jpeg"] == make_jpeg(160, 120, seed=2)
                assert got["sock_b"]["seq"] == 1 and got["sock_b"]["age"] >= 0
                assert stats(url, "sock_a")["variants"] == 1
                # Each subscription is one viewer; frames_out counts what the socket sent.
                for name in ("sock_a", "sock_b"):
                    assert stats(url, name)["viewer_count"] == 1
                publish(url, "sock_b", make_jpeg(160, 120, seed=3))
                newer = await _receive(ws, _is("frame", stream="sock_b", seq=2))
                assert newer["jpeg"] == make_jpeg(160, 120, seed=3)
                assert stats(url, "sock_b")["frames_out"] >= 2
                # A new set replaces the old: sock_a's viewer (and its variant) end.
                await ws.send_str(_subscribe({"name": "sock_b", "fps": 5}))
                ack = await _receive(ws, _is("text", type="subscribed"))
                assert ack["streams"] == ["sock_b"]
                assert stats(url, "sock_a")["viewer_count"] == 0
                assert stats(url, "sock_a")["variants"] == 0
                assert stats(url, "sock_b")["viewer_count"] == 1
                await ws.send_str(_subscribe())
                await _receive(ws, _is("text", type="subscribed", streams=[]))
                assert stats(url, "sock_b")["viewer_count"] == 0

    asyncio.run(scenario())
    assert httpx.get(f"{url}/health").json()["viewers"] == 0


@pytest.mark.parametrize(("message", "text"), [
    ("not json", "must be JSON"),
    ('{"type": "hello"}', "subscribe"),
    ('{"type": "subscribe", "streams": "cam"}', "must be a list"),
    ('{"type": "subscribe", "streams": [{"name": "bad name"}]}', "is invalid"),
    ('{"type": "subscribe", "streams": [{"name": "cam", "fps": 0}]}', "out of range"),
    ('{"type": "subscribe", "streams": [{"name": "cam", "width": "wide"}]}', "must be a number"),
    ('{"type": "subscribe", "streams": [{"name": "cam", "zoom": 2}]}', "unknown field"),
    (b"\xff\xd8binary", "not binary"),
])
def test_a_bad_message_gets_a_json_error_and_the_connection_stays(shared_server, message, text):
    publish(shared_server.url, "bad_msg_cam", make_jpeg(160, 120))

    async def scenario():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(shared_server.url.replace("http", "ws") + "/ws/view") as ws:
                if isinstance(message, bytes):
                    await ws.send_bytes(message)
                else:
                    await ws.send_str(message)
                error = await _receive(ws, _is("text", type="error"))
                assert error["error"] in ("invalid_message", "invalid_stream_name"), error
                assert text in error["message"], error
                # Still open: a good message works.
                await ws.send_str(_subscribe({"name": "bad_msg_cam"}))
                frame = await _receive(ws, _is("frame", stream="bad_msg_cam"))
                assert frame["width"] == 160

    asyncio.run(scenario())


def test_unknown_and_ended_streams_are_said_so(server):
    url = server.url
    publish(url, "goes_away", make_jpeg(160, 120))

    async def scenario():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(url.replace("http", "ws") + "/ws/view") as ws:
                await ws.send_str(_subscribe({"name": "never_was"}, {"name": "goes_away"}))
                ended = await _receive(ws, _is("text", type="ended", stream="never_was"))
                assert ended["error"] == "stream_not_found"
                ack = await _receive(ws, _is("text", type="subscribed"))
                assert ack["streams"] == ["goes_away"]
                await _receive(ws, _is("frame", stream="goes_away"))
                assert httpx.delete(f"{url}/api/streams/goes_away").status_code == 200
                ended = await _receive(ws, _is("text", type="ended", stream="goes_away"))
                assert ended["error"] == "stream_ended"
                # Created again: subscribing again (the same set) brings its frames back.
                publish(url, "goes_away", make_jpeg(160, 120, seed=5))
                await ws.send_str(_subscribe({"name": "goes_away"}))
                frame = await _receive(ws, _is("frame", stream="goes_away"))
                assert frame["jpeg"] == make_jpeg(160, 120, seed=5)

    asyncio.run(scenario())


def test_forbidden_streams_are_named_with_access_control_on(start_server):
    users = [
        {"name": "watcher", "token": "watcher-token-8d1e",
         "permissions": [{"action": "view", "streams": "yard_*"}]},
        {"name": "robot", "token": "robot-token-77c2",
         "permissions": [{"action": "publish", "streams": "*"}]},
    ]
    server = start_server({"auth": {"users": users}})
    url = server.url
    robot = {"Authorization": "Bearer robot-token-77c2", "Content-Type": "image/jpeg"}
    for name in ("yard_1", "office_1"):
        assert httpx.post(f"{url}/publish/{name}", content=make_jpeg(160, 120),
                          headers=robot).status_code == 200
    ws_url = url.replace("http", "ws") + "/ws/view"

    async def scenario():
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(ws_url)
            assert refused.value.status == 401
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(ws_url, params={"token": "robot-token-77c2"})
            assert refused.value.status == 403  # no view on any stream
            async with http.ws_connect(ws_url, params={"token": "watcher-token-8d1e"}) as ws:
                await ws.send_str(_subscribe({"name": "yard_1"}, {"name": "office_1"}))
                denied = await _receive(ws, _is("text", type="forbidden"))
                assert denied["stream"] == "office_1" and "office_1" in denied["message"]
                ack = await _receive(ws, _is("text", type="subscribed"))
                assert ack["streams"] == ["yard_1"]
                await _receive(ws, _is("frame", stream="yard_1"))

    asyncio.run(scenario())
    watcher = {"Authorization": "Bearer watcher-token-8d1e"}
    assert httpx.get(f"{url}/api/streams/yard_1/stats", headers=watcher).json()["frames_out"] >= 1


def test_a_page_of_another_origin_cannot_open_the_view_socket(start_server):
    """A browser sends its saved credentials with any page's WebSocket and CORS does
    not apply: the Origin decides (a listed one or the server's own)."""
    users = [{"name": "ops", "password": "ops-password-3b7f",
              "permissions": [{"action": "view"}]}]
    server = start_server({"auth": {"users": users},
                           "server": {"cors_origins": ["https://dash.example"]}})
    ws_url = server.url.replace("http", "ws") + "/ws/view"
    basic = "Basic " + base64.b64encode(b"ops:ops-password-3b7f").decode()
    host = server.url.partition("://")[2]

    async def scenario():
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(ws_url, headers={"Authorization": basic,
                                                       "Origin": "https://evil.example"})
            assert refused.value.status == 403
            for origin in ("https://dash.example", f"http://{host}"):
                async with http.ws_connect(ws_url, headers={"Authorization": basic,
                                                           "Origin": origin}) as ws:
                    await ws.send_str(_subscribe())
                    await _receive(ws, _is("text", type="subscribed"))

    asyncio.run(scenario())
    refused = httpx.get(ws_url.replace("ws", "http", 1), auth=("ops", "ops-password-3b7f"),
                        headers={"Origin": "https://evil.example", "Upgrade": "websocket",
                                 "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                                 "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert refused.json()["error"] == "origin_not_allowed"
    assert "may not open a WebSocket" in refused.json()["message"]


def test_a_reader_that_reads_nothing_drops_frames_not_memory(server):
    """The page stops reading: the server keeps one waiting frame per stream, counts
    the rest as dropped, and the reader gets the newest frame when it reads again."""
    url = server.url
    big = [make_jpeg(640, 480, seed=i, quality=95) for i in range(8)]
    publish(url, "flood", big[0])
    total = 400

    async def scenario():
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector) as http:
            async with http.ws_connect(url.replace("http", "ws") + "/ws/view") as ws:
                await ws.send_str(_subscribe({"name": "flood"}))
                await _receive(ws, _is("frame", stream="flood"))
                # Now read nothing while 400 frames (≈ 40 MB) are published.
                async with httpx.AsyncClient(timeout=10) as client:
                    for i in range(total):
                        await client.post(f"{url}/publish/flood", content=big[i % len(big)],
                                          headers={"Content-Type": "image/jpeg"})
                flood = stats(url, "flood")
                assert flood["total_frames"] == total + 1
                # The socket buffers in between held a few frames; the rest were not kept.
                assert flood["frames_out"] < total / 2, flood
                # Reading again, the page soon gets the newest frame, and the frames it
                # never got are counted as dropped for a slow viewer.
                last = await _receive(ws, _is("frame", stream="flood", seq=total + 1), timeout=30)
                assert last["jpeg"] == big[(total - 1) % len(big)]
                final = stats(url, "flood")
                assert final["frames_dropped_slow_viewers"] >= total / 2, final
                assert final["frames_out"] + final["frames_dropped_slow_viewers"] >= total, final

    asyncio.run(scenario())


def _rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _raw_view_socket(port: int) -> socket.socket:
    """A WebSocket to /ws/view on a plain socket that reads nothing it is not told to
    (a client library would read on in the background)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(f"GET /ws/view HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                 f"Sec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def _client_frame(text: str) -> bytes:
    """One masked text frame (RFC 6455 5.2), as a client must send it."""
    payload, mask = text.encode(), os.urandom(4)
    size = len(payload)
    length = bytes([0x80 | size]) if size < 126 else bytes([0x80 | 126]) + struct.pack(">H", size)
    return b"\x81" + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_a_page_that_sends_without_reading_is_read_no_further(server):
    """Each bad message gets an answer; a page that never reads them is read no further
    once a few answers wait unwritten, so answers cannot pile up in the server."""
    with _raw_view_socket(server.port) as sock:
        # ≈ 50 KB of unknown field names: the answer names only a few of them.
        junk = json.dumps({"type": "subscribe", "streams": [
            {"name": "cam", **{f"k{i}_{'x' * 20}": 1 for i in range(2000)}}]})
        assert len(junk) < 65536
        sock.sendall(_client_frame(junk))
        first = sock.recv(2)
        size = first[1] & 0x7F
        if size == 126:
            size = struct.unpack(">H", sock.recv(2))[0]
        answer = json.loads(sock.recv(size))
        assert answer["error"] == "invalid_message" and size < 400, answer
        # Now read nothing while sending bad messages (each answered with ≈ 90 bytes).
        before = _rss_mb(server.proc.pid)
        frame = _client_frame("not json") * 1000
        sent, total = 0, 1000  # batches of 1,000: far more answers than buffers hold
        sock.settimeout(3)
        try:
            for _ in range(total):
                sock.sendall(frame)
                sent += 1
        except TimeoutError:
            pass  # the server stopped taking them
        grown = _rss_mb(server.proc.pid) - before
    assert sent < total, "every message was taken: the server read on without limit"
    assert grown < 30
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_a_stream_published_on_another_node_plays_on_this_one(start_server, redis_server):
    config = {"cluster": {"redis_url": redis_server.url}, "recording": {"enabled": False}}
    a, b = start_server(config), start_server(config)
    publish(a.url, "remote_cam", make_jpeg(160, 120, seed=1)).raise_for_status()

    async def scenario():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(b.url.replace("http", "ws") + "/ws/view") as ws:
                await ws.send_str(_subscribe({"name": "remote_cam"}))
                await _receive(ws, _is("text", type="subscribed", streams=["remote_cam"]))
                first = await _receive(ws, _is("frame", stream="remote_cam"))
                assert first["jpeg"] == make_jpeg(160, 120, seed=1)
                newer = make_jpeg(160, 120, seed=2)
                publish(a.url, "remote_cam", newer).raise_for_status()
                await _receive(ws, lambda kind, value: kind == "frame" and value["jpeg"] == newer)

    asyncio.run(scenario())
