"""HTTP as it is on the wire, over a raw socket: requests aiohttp cannot parse get the
one JSON error shape (web/protocol.py), and answers to HEAD carry no body.
"""

from __future__ import annotations

import json
import socket

import pytest

SECRET = "malformed-secret-4f1c9a"


def _exchange(server, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw``, read until the server closes the connection (a socket timeout
    fails the test if it does not), split the answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    return int(status_line.split()[1]), headers, body


CASES = {
    "bad content-length": b"POST /publish/cam HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    "two content-lengths": (b"POST /publish/cam HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                            b"Content-Length: 2\r\n\r\nab"),
    "bad chunk size": (b"POST /publish/cam HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                       b"\r\nzz\r\nabc\r\n0\r\n\r\n"),
    "NUL in the path": b"GET /stream/a\x00b HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad method": b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n",
    "header line too long": b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 70000 + b"\r\n\r\n",
    "not HTTP": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n",
}


@pytest.mark.parametrize("raw", CASES.values(), ids=CASES.keys())
def test_a_request_that_cannot_be_parsed_gets_a_json_error_and_the_connection_closes(
    shared_server, raw
):
    status, headers, body = _exchange(shared_server, raw)
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)
    assert error["status"] == "error"
    assert error["error"] == "malformed_request"
    assert error["message"].startswith("the request is not valid HTTP/1.1 (")
    # The server still serves the next client.
    status, _, body = _exchange(shared_server, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 200 and json.loads(body)["status"]


def test_a_malformed_request_never_echoes_or_logs_a_token(shared_server):
    raw = f"GET /stream/cam?token={SECRET} HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"
    status, headers, body = _exchange(shared_server, raw.encode())
    assert status == 400 and json.loads(body)["error"] == "malformed_request"
    assert SECRET not in body.decode()
    log = shared_server.output()
    assert "malformed request from 127.0.0.1 answered 400" in log
    assert SECRET not in log


HEAD_PATHS = [
    "/api/recordings/cam/cam_20200101_000000.mp4",  # 404 from the mounted JSON API
    "/api/streams/nope/stats",  # 405
    "/nonexistent",  # 404, no route
    "/snapshot/nope",  # 404 from a hot route
    "/health",  # 405
]


@pytest.mark.parametrize("path", HEAD_PATHS)
def test_an_answer_to_head_has_no_body_so_the_next_answer_on_the_connection_is_intact(
    shared_server, path
):
    raw = (f"HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n"
           "GET /api/streams HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    with socket.create_connection(("127.0.0.1", shared_server.port), timeout=10) as sock:
        sock.sendall(raw.encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert int(head.split()[1]) in (404, 405)
    # Right after the HEAD answer's headers comes the next answer, not a body.
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n"), rest[:120]
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["count"] == 0
