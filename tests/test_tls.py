"""TLS without a proxy: with ``server.tls_certfile`` and ``server.tls_keyfile`` the server
serves HTTPS and WSS on its port, and the publisher client trusts a private CA.

Every test talks to a real server subprocess over TLS with a real CA and server
certificate made by ``openssl`` for this module.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import simplejpeg
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from helpers import REPO, ServerProcess, iter_parts, make_jpeg, parse_view_frame, publish, wait_for
from robogpt_video.client import ConfigurationError, StreamPublisher
from robogpt_video.config import ServerSettings
from robogpt_video.server import tls_context
from robogpt_video.web.mjpeg import SENDFILE_VIEWERS


@dataclass
class Certs:
    ca: Path  # the private CA's certificate: what clients trust
    cert: Path  # the server's certificate, signed by the CA, for 127.0.0.1 and localhost
    key: Path  # its private key
    other_key: Path  # a key that belongs to no certificate here
    encrypted_key: Path  # ``key`` under a passphrase


def openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


def make_certs(folder: Path) -> Certs:
    """A CA and a server certificate it signed, with the extensions strict clients want."""
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", folder / "ca.key", "-out", folder / "ca.pem",
            "-days", "2", "-subj", "/CN=robogpt-video test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", *ec, "-keyout", folder / "server.key", "-out", folder / "server.csr",
            "-subj", "/CN=localhost")
    (folder / "server.ext").write_text(
        "subjectAltName = IP:127.0.0.1, DNS:localhost\n"
        "basicConstraints = CA:FALSE\n"
        "keyUsage = critical, digitalSignature\n"
        "extendedKeyUsage = serverAuth\n"
        "subjectKeyIdentifier = hash\n"
        "authorityKeyIdentifier = keyid\n"
    )
    openssl("x509", "-req", "-in", folder / "server.csr", "-CA", folder / "ca.pem",
            "-CAkey", folder / "ca.key", "-set_serial", "2", "-days", "2",
            "-extfile", folder / "server.ext", "-out", folder / "server.pem")
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-out", folder / "other.key")
    openssl("pkey", "-in", folder / "server.key", "-aes256", "-passout", "pass:secret",
            "-out", folder / "encrypted.key")
    return Certs(folder / "ca.pem", folder / "server.pem", folder / "server.key",
                 folder / "other.key", folder / "encrypted.key")


def tls_config(cert: Path, key: Path) -> dict:
    return {"server": {"tls_certfile": str(cert), "tls_keyfile": str(key)}}


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_server(certs, tmp_path_factory):
    """One TLS server for the module; each test uses stream names of its own."""
    server = ServerProcess(tmp_path_factory.mktemp("tls"), tls_config(certs.cert, certs.key),
                           ca_file=certs.ca)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def client(tls_server):
    with httpx.Client(verify=tls_server.verify, timeout=10) as client:
        yield client


def total_frames(client: httpx.Client, server: ServerProcess, name: str) -> int:
    response = client.get(f"{server.url}/api/streams/{name}/stats")
    return response.json()["total_frames"] if response.status_code == 200 else 0


def read_until(parts: Iterator[tuple[dict, bytes]], jpeg: bytes, earlier: list[bytes]) -> None:
    """Read a viewer's parts until ``jpeg``; parts before it must be ``earlier`` frames."""
    for _, body in parts:
        if body == jpeg:
            return
        assert body in earlier  # the previous frame, perhaps re-sent while the stream was quiet
    pytest.fail("the viewer's response ended before the frame came")


def test_https_publish_and_snapshot(tls_server, client):
    assert tls_server.url.startswith("https://")
    jpeg = make_jpeg(seed=1)
    assert publish(tls_server.url, "https_cam", jpeg, client).status_code == 200
    snapshot = client.get(f"{tls_server.url}/snapshot/https_cam")
    assert snapshot.status_code == 200 and snapshot.content == jpeg
    assert client.get(f"{tls_server.url}/health").json()["status"] == "healthy"


def test_mjpeg_viewers_over_https_get_whole_frames(tls_server, client):
    """As many viewers as turn on ``sendfile`` on plain TCP: over TLS every byte must go
    through the TLS transport, so every viewer decodes every part."""
    url, name = tls_server.url, "https_view"
    first, second = make_jpeg(seed=0), make_jpeg(640, 480, seed=2)
    publish(url, name, first, client)
    viewers = SENDFILE_VIEWERS + 1
    with ExitStack() as stack:
        parts = []
        for _ in range(viewers):
            response = stack.enter_context(client.stream("GET", f"{url}/stream/{name}"))
            assert response.status_code == 200
            parts.append(iter_parts(response.iter_bytes()))
        wait_for(lambda: client.get(f"{url}/api/streams/{name}/stats").json()["viewer_count"]
                 == viewers, what="every viewer to be registered")
        publish(url, name, second, client)
        for viewer in parts:
            read_until(viewer, second, earlier=[first])
    metrics = client.get(f"{url}/metrics").text
    assert 'robogpt_video_viewer_writes_total{method="sendfile"} 0.0' in metrics


def test_websocket_publisher_over_wss(tls_server, certs, client):
    url, name = tls_server.url, "wss_cam"
    context = ssl.create_default_context(cafile=certs.ca)
    frames = [make_jpeg(seed=s) for s in range(10, 14)]
    with connect(f"wss://127.0.0.1:{tls_server.port}/ws/publish/{name}", ssl=context) as ws:
        ws.send(frames[0])
        wait_for(lambda: client.get(f"{url}/snapshot/{name}").status_code == 200)
        with client.stream("GET", f"{url}/stream/{name}") as viewer:
            parts = iter_parts(viewer.iter_bytes())
            read_until(parts, frames[0], earlier=[])
            for previous, jpeg in zip(frames, frames[1:]):
                ws.send(jpeg)
                read_until(parts, jpeg, earlier=[previous])
    wait_for(lambda: total_frames(client, tls_server, name) == len(frames))
    assert client.get(f"{url}/snapshot/{name}").content == frames[-1]


def next_view_frame(ws: ClientConnection) -> dict:
    """The view socket's next binary message, parsed; a text message on the way must be
    no refusal."""
    while True:
        message = ws.recv(timeout=15)  # a generous bound for a busy machine
        if isinstance(message, str):
            text = json.loads(message)
            assert text["type"] == "subscribed", text  # not forbidden, ended or error
            continue
        return parse_view_frame(message)


def test_view_socket_over_wss_with_access_control(certs, tmp_path):
    """The dashboard's view socket, TLS and a token together: a client that verifies the
    certificate opens ``wss://.../ws/view?token=`` and gets the frames a publisher posts
    over HTTPS with a Bearer token; without a token, or with a wrong one, the handshake
    is refused with a 401."""
    name = "wss_view_cam"
    users = [
        {"name": "watcher", "token": "watcher-token-5c9a",
         "permissions": [{"action": "view", "streams": name}]},
        {"name": "robot", "token": "robot-token-e41b",
         "permissions": [{"action": "publish", "streams": "*"}]},
    ]
    config = {**tls_config(certs.cert, certs.key), "auth": {"users": users}}
    server = ServerProcess(tmp_path / "srv", config, ca_file=certs.ca).start()
    try:
        context = ssl.create_default_context(cafile=certs.ca)  # verifies chain and 127.0.0.1
        view_url = f"wss://127.0.0.1:{server.port}/ws/view"
        for refused_url in (view_url, f"{view_url}?token=not-the-watcher-token"):
            with pytest.raises(InvalidStatus) as refused:
                connect(refused_url, ssl=context, open_timeout=15)
            assert refused.value.response.status_code == 401, refused_url
        robot = {"Authorization": "Bearer robot-token-e41b"}
        first, second = make_jpeg(seed=20), make_jpeg(seed=21)
        with httpx.Client(verify=server.verify, headers=robot, timeout=10) as publisher:
            assert publish(server.url, name, first, publisher).status_code == 200
            with connect(f"{view_url}?token=watcher-token-5c9a", ssl=context,
                         open_timeout=15) as ws:
                ws.send(json.dumps({"type": "subscribe", "streams": [{"name": name}]}))
                frame = next_view_frame(ws)  # the stream's newest frame comes first
                assert (frame["stream"], frame["jpeg"]) == (name, first)
                assert (frame["seq"], frame["width"], frame["height"]) == (1, 320, 240)
                assert publish(server.url, name, second, publisher).status_code == 200

                def second_came() -> dict | None:
                    frame = next_view_frame(ws)
                    if frame["jpeg"] == second:
                        return frame
                    assert frame["jpeg"] == first  # re-sent while the stream was quiet
                    return None

                # Bounded: a quiet stream's last frame is re-sent, so reading alone never ends.
                frame = wait_for(second_came, what="the view socket to deliver the new frame")
                assert (frame["stream"], frame["seq"]) == (name, 2)
    finally:
        server.stop()


def test_a_client_that_does_not_trust_the_ca_is_refused(tls_server):
    untrusting = ssl.create_default_context()  # the system's CAs only
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=10) as raw:
        with pytest.raises(ssl.SSLCertVerificationError) as info:
            untrusting.wrap_socket(raw, server_hostname="127.0.0.1")
    assert info.value.reason == "CERTIFICATE_VERIFY_FAILED"
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{tls_server.url}/health", verify=untrusting, timeout=10)


def test_plain_http_to_the_tls_port_gets_nothing_in_clear(tls_server):
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=10) as raw:
        raw.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        received = b""
        while chunk := raw.recv(65536):  # the server closes the connection
            received += chunk
    assert b"HTTP/" not in received and b"healthy" not in received
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{tls_server.port}/health", timeout=10)


def test_a_silent_connection_is_closed_before_and_after_the_tls_handshake(certs, tmp_path):
    """server.header_timeout_seconds bounds the handshake (asyncio's
    ssl_handshake_timeout) and then, as over plain HTTP, the first request head."""
    config = tls_config(certs.cert, certs.key)
    config["server"]["header_timeout_seconds"] = 1
    server = ServerProcess(tmp_path / "srv", config, ca_file=certs.ca).start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=15) as raw:
            assert raw.recv(65536) == b""  # no ClientHello: dropped, nothing sent
        context = ssl.create_default_context(cafile=certs.ca)
        with socket.create_connection(("127.0.0.1", server.port), timeout=15) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                received = b""
                while chunk := tls.recv(65536):  # no request: a 408, then the close
                    received += chunk
        assert received.startswith(b"HTTP/1.1 408 ")
        assert b'"request_timeout"' in received
    finally:
        server.stop()


def test_tls_context_refuses_below_tls_1_2(certs):
    context = tls_context(ServerSettings(tls_certfile=certs.cert, tls_keyfile=certs.key))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert tls_context(ServerSettings()) is None


@pytest.mark.parametrize("transport", ["http", "stream"])
def test_stream_publisher_trusts_a_private_ca(tls_server, certs, client, transport):
    name = f"publisher_{transport}"
    with StreamPublisher(tls_server.url, name, max_fps=50, transport=transport,
                         verify=certs.ca) as publisher:
        n = 0

        def delivered() -> bool:
            nonlocal n
            n += 1
            publisher.publish_jpeg(make_jpeg(seed=n))
            return total_frames(client, tls_server, name) >= 3

        wait_for(delivered, what="three frames published over https")
    assert publisher.stats()["errors"] == 0


def test_stream_publisher_verifies_by_default(tls_server, certs, monkeypatch, client):
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    with StreamPublisher(tls_server.url, "untrusted", backoff_max=0.2) as publisher:
        publisher.publish_jpeg(make_jpeg())
        wait_for(lambda: publisher.stats()["errors"] >= 1)
    stats = publisher.stats()
    assert stats["frames_sent"] == 0 and "CERTIFICATE_VERIFY_FAILED" in stats["last_error"]
    assert client.get(f"{tls_server.url}/api/streams/untrusted/stats").status_code == 404
    # requests' own variable works as well as verify=
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certs.ca))
    with StreamPublisher(tls_server.url, "from_env", max_fps=None) as publisher:
        publisher.publish_jpeg(make_jpeg())
    assert publisher.stats()["frames_sent"] == 1


def test_stream_publisher_refuses_a_missing_ca_bundle(tmp_path):
    with pytest.raises(ConfigurationError, match="no CA bundle"):
        StreamPublisher("https://127.0.0.1:1", "x", verify=tmp_path / "missing.pem")
    with pytest.raises(ConfigurationError, match="verify must be"):
        StreamPublisher("https://127.0.0.1:1", "x", verify=1)


def test_publish_command_with_cafile(tls_server, certs, client):
    result = subprocess.run(
        [sys.executable, "-m", "robogpt_video", "publish", "--server", tls_server.url,
         "--cafile", str(certs.ca), "--stream", "cli_tls", "--camera", "test",
         "--width", "160", "--height", "120", "--fps", "10", "--duration", "2"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert total_frames(client, tls_server, "cli_tls") >= 1
    assert "0 errors" in result.stdout.splitlines()[-1]


def test_ffmpeg_reads_the_https_stream(tls_server, certs, client, tmp_path):
    publish(tls_server.url, "ffmpeg_view", make_jpeg(seed=3), client)
    out = tmp_path / "frame.jpg"
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-tls_verify", "1",
         "-ca_file", str(certs.ca), "-i", f"{tls_server.url}/stream/ffmpeg_view",
         "-frames:v", "1", "-y", str(out)],
        check=True, capture_output=True, timeout=60,
    )
    assert simplejpeg.decode_jpeg_header(out.read_bytes())[:2] == (240, 320)


@pytest.mark.parametrize(
    "files, message",
    [
        (lambda c: {"tls_certfile": c.cert}, "server.tls_keyfile: Value error, required when "
                                             "server.tls_certfile is set"),
        (lambda c: {"tls_keyfile": c.key}, "server.tls_keyfile: Value error, set "
                                           "server.tls_certfile too"),
        (lambda c: {"tls_certfile": c.cert.with_name("nothing.pem"), "tls_keyfile": c.key},
         "server.tls_certfile: cannot read {dir}/nothing.pem: No such file or directory"),
        (lambda c: {"tls_certfile": c.cert, "tls_keyfile": c.key.parent},
         "server.tls_keyfile: cannot read {dir}: Is a directory"),
        (lambda c: {"tls_certfile": c.key, "tls_keyfile": c.key},
         "server.tls_certfile: {dir}/server.key holds no PEM certificate"),
        (lambda c: {"tls_certfile": c.cert, "tls_keyfile": c.ca},
         "server.tls_keyfile: {dir}/ca.pem holds no PEM private key"),
        (lambda c: {"tls_certfile": c.cert, "tls_keyfile": c.other_key},
         "server.tls_keyfile: {dir}/other.key is not the private key of the certificate in "
         "{dir}/server.pem"),
        (lambda c: {"tls_certfile": c.cert, "tls_keyfile": c.encrypted_key},
         "server.tls_keyfile: {dir}/encrypted.key is encrypted"),
    ],
    ids=["cert-only", "key-only", "missing-cert", "key-is-a-directory", "not-a-cert",
         "not-a-key", "key-of-another-cert", "encrypted-key"],
)
def test_unusable_tls_settings_stop_the_server_at_start(start_server, certs, files, message):
    config = {"server": {key: str(path) for key, path in files(certs).items()}}
    with pytest.raises(RuntimeError, match="server exited with 2") as info:
        start_server(config)
    output = str(info.value)
    assert message.format(dir=certs.ca.parent) in output
    assert "Traceback" not in output
