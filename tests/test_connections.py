"""Connection caps: in all, per client address, trusted proxies, and file descriptors."""

from __future__ import annotations

import resource
import socket

import httpx
import pytest

from helpers import ServerProcess, make_jpeg, publish, wait_for


def _idle(server, count: int) -> list[socket.socket]:
    """Open ``count`` connections that send nothing (kept by the caller, closed after)."""
    return [socket.create_connection(("127.0.0.1", server.port)) for _ in range(count)]


def _gauge(server, name: str) -> float | None:
    try:
        text = httpx.get(f"{server.url}/metrics", timeout=5).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def _refusal(server) -> httpx.Response:
    with httpx.Client(timeout=10) as client:
        return client.get(f"{server.url}/health")


@pytest.mark.parametrize("key", ["max_connections", "max_connections_per_address"])
def test_a_connection_over_a_cap_gets_a_json_503_and_the_rest_are_served(start_server, key):
    server = start_server({"server": {key: 3}})
    held = _idle(server, 2)
    try:
        # The two idle ones and the scrape itself: the server holds 3.
        wait_for(lambda: _gauge(server, "robogpt_video_connections") == 3, what="3 connections")
        held += _idle(server, 1)
        response = _refusal(server)
        assert response.status_code == 503
        assert response.json()["error"] == "too_many_connections"
        assert key in response.json()["message"]
        assert response.headers["retry-after"] == "5"
    finally:
        for sock in held:
            sock.close()
    # Room again once they close.
    wait_for(lambda: httpx.get(f"{server.url}/health", timeout=5).status_code == 200,
             what="a connection to be served again")
    cap = "total" if key == "max_connections" else "per_address"
    assert _gauge(server, f'robogpt_video_connections_refused_total{{cap="{cap}"}}') >= 1


def test_a_trusted_proxy_is_not_held_to_the_per_address_cap(start_server):
    server = start_server(
        {"server": {"max_connections_per_address": 2}, "auth": {"trusted_proxies": ["127.0.0.1"]}}
    )
    held = _idle(server, 4)
    try:
        wait_for(lambda: _gauge(server, "robogpt_video_connections") == 5, what="5 connections")
        assert _refusal(server).status_code == 200
    finally:
        for sock in held:
            sock.close()


def _few_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (300, 300))


def test_connections_never_take_the_files_recording_needs(tmp_path):
    """With 300 open files allowed, a flood of idle connections used to take every
    descriptor: new streams could not open their recording files (EMFILE). Connections
    now stop at 300 - 256 and the recorder keeps its files."""
    server = ServerProcess(tmp_path / "srv")
    server.preexec_fn = _few_files
    server.start()
    held: list[socket.socket] = []
    try:
        assert "server.max_connections lowered from 10000 to 44" in server.output()
        with httpx.Client(timeout=10) as client:  # one kept-alive publisher, connected first
            assert publish(server.url, "cam0", make_jpeg(seed=0), client).status_code == 200
            held = _idle(server, 400)  # far more than 300 files
            assert _refusal(server).status_code == 503
            for seq in range(1, 13):  # 12 new streams, each opens a recording file
                response = publish(server.url, f"cam{seq}", make_jpeg(seed=seq), client)
                assert response.status_code == 200, response.text
        for sock in held:
            sock.close()
        wait_for(lambda: len(list(server.recordings.glob("cam*/*.mp4"))) == 13,
                 what="13 recording files")
        errors = _gauge(server, "robogpt_video_recording_errors_total")
        assert errors in (None, 0.0)
        assert httpx.get(f"{server.url}/health", timeout=5).json()["status"] == "healthy"
    finally:
        for sock in held:
            sock.close()
        server.stop()
