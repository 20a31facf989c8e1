"""Live viewing against a real server: parts, disconnects, slow viewers, real clients."""

import socket
import subprocess
import threading
import time

import httpx

from helpers import iter_parts, make_jpeg, publish, wait_for


class Publisher(threading.Thread):
    """Publishes distinct frames at ``fps`` until stopped; remembers what it sent."""

    def __init__(self, url, name, fps=30, width=320, height=240, quality=80):
        super().__init__(daemon=True)
        self.url, self.name, self.period = url, name, 1.0 / fps
        self.frames = [make_jpeg(width, height, seed=i, quality=quality) for i in range(16)]
        self.sent = 0
        self.halt = threading.Event()

    def run(self):
        with httpx.Client(timeout=10) as client:
            next_at = time.monotonic()
            while not self.halt.is_set():
                publish(self.url, self.name, self.frames[self.sent % 16], client).raise_for_status()
                self.sent += 1
                next_at += self.period
                self.halt.wait(max(0.0, next_at - time.monotonic()))

    def stop(self):
        self.halt.set()
        self.join(10)


def viewer_count(url, name):
    return httpx.get(f"{url}/api/streams/{name}/stats").json()["viewer_count"]


def test_parts_carry_headers_and_the_published_bytes(shared_server):
    server = shared_server
    first = make_jpeg(seed=1)
    publish(server.url, "parts_cam", first)
    with httpx.stream("GET", f"{server.url}/stream/parts_cam", timeout=10) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "multipart/x-mixed-replace; boundary=frame"
        assert "no-cache" in r.headers["cache-control"]
        parts = iter_parts(r.iter_raw())
        headers, body = next(parts)  # the current frame at once
        assert body == first
        assert headers["content-type"] == "image/jpeg"
        assert int(headers["content-length"]) == len(first)
        assert float(headers["x-timestamp"]) > 1.7e9
        sent = [make_jpeg(seed=s) for s in range(2, 6)]
        got = []
        for jpeg in sent:
            publish(server.url, "parts_cam", jpeg)
            got.append(next(parts)[1])
        assert got == sent


def test_quiet_stream_resends_the_last_frame(shared_server):
    server = shared_server
    jpeg = make_jpeg(seed=3)
    publish(server.url, "quiet_cam", jpeg)
    with httpx.stream("GET", f"{server.url}/stream/quiet_cam", timeout=10) as r:
        parts = iter_parts(r.iter_raw())
        t0 = time.monotonic()
        h1, b1 = next(parts)
        h2, b2 = next(parts)  # nothing published: the same frame comes again
        elapsed = time.monotonic() - t0
    assert b1 == b2 == jpeg and h1["x-timestamp"] == h2["x-timestamp"]
    assert 0.5 < elapsed < 3.0


def test_viewer_count_drops_when_a_viewer_leaves_an_idle_stream(shared_server):
    server = shared_server
    publish(server.url, "leave_cam", make_jpeg())
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"GET /stream/leave_cam HTTP/1.1\r\nHost: x\r\n\r\n")
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    wait_for(lambda: viewer_count(server.url, "leave_cam") == 1)
    sock.close()
    left = time.monotonic()
    wait_for(lambda: viewer_count(server.url, "leave_cam") == 0, timeout=3)
    assert time.monotonic() - left < 1.5


def test_deleting_a_stream_ends_its_viewers(shared_server):
    server = shared_server
    publish(server.url, "deleted_cam", make_jpeg())
    with httpx.stream("GET", f"{server.url}/stream/deleted_cam", timeout=10) as r:
        parts = iter_parts(r.iter_raw())
        next(parts)
        httpx.delete(f"{server.url}/api/streams/deleted_cam").raise_for_status()
        remaining = list(parts)  # the response ends instead of hanging
    assert len(remaining) <= 1


def test_slow_viewer_does_not_slow_a_fast_one(start_server):
    srv = start_server({"streams": {"viewer_stall_seconds": 2}})
    pub = Publisher(srv.url, "cam", fps=30, width=1280, height=720, quality=95)
    pub.start()
    try:
        wait_for(lambda: pub.sent > 0)
        slow = socket.create_connection(("127.0.0.1", srv.port))
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.sendall(b"GET /stream/cam HTTP/1.1\r\nHost: x\r\n\r\n")  # and never reads
        received = 0
        start_sent = pub.sent
        deadline = time.monotonic() + 4
        with httpx.stream("GET", f"{srv.url}/stream/cam", timeout=10) as r:
            for _ in iter_parts(r.iter_raw()):
                received += 1
                if time.monotonic() > deadline:
                    break
        published = pub.sent - start_sent
        stats = httpx.get(f"{srv.url}/api/streams/cam/stats").json()
    finally:
        pub.stop()
    slow.close()
    assert published > 40
    assert received >= 0.8 * published, (received, published)
    assert stats["frames_dropped_slow_viewers"] > 0  # the slow one skipped frames...
    assert stats["viewer_count"] == 0  # ...and was closed after 2 s of taking nothing
    assert "closing a viewer of cam" in srv.output()
    assert "ERROR" not in srv.output()


def test_viewer_that_stops_reading_resumes_near_live(server):
    # Frames published while a viewer reads nothing wait for it only in the server's
    # buffers; once it reads again, what it gets before the newest frame is that
    # backlog. With TCP_NOTSENT_LOWAT on its socket and a transport that counts as full
    # once anything waits in it, that is the frame the link was taking (one, here);
    # without them the socket's send buffer and the transport held five of these
    # ≈50 KB frames (four with the transport limit alone).
    jpegs = [make_jpeg(640, 480, seed=s, quality=95) for s in range(24)]
    publish(server.url, "cam", jpegs[0])
    viewer = socket.socket()
    viewer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: not auto-tuned
    viewer.settimeout(10)
    viewer.connect(("127.0.0.1", server.port))
    try:
        viewer.sendall(b"GET /stream/cam HTTP/1.1\r\nHost: x\r\n\r\n")
        parts = iter_parts(iter(lambda: viewer.recv(65536), b""))
        assert next(parts)[1] == jpegs[0]
        with httpx.Client(timeout=10) as client:  # while the viewer reads nothing
            for jpeg in jpegs[1:]:
                publish(server.url, "cam", jpeg, client).raise_for_status()
        backlog = []
        for _, body in parts:  # it reads again, up to the newest frame
            if body == jpegs[-1]:
                break
            backlog.append(jpegs.index(body))
        else:
            raise AssertionError(f"the newest frame never came; got {backlog}")
    finally:
        viewer.close()
    assert backlog == sorted(backlog) and len(backlog) <= 2, backlog
    stats = httpx.get(f"{server.url}/api/streams/cam/stats").json()
    assert stats["frames_dropped_slow_viewers"] > 0


def test_ffmpeg_decodes_the_live_stream(shared_server, tmp_path):
    server = shared_server
    pub = Publisher(server.url, "ffmpeg_view", fps=15)
    pub.start()
    try:
        wait_for(lambda: pub.sent > 0)
        result = subprocess.run(
            ["ffmpeg", "-nostdin", "-loglevel", "error",
             "-i", f"{server.url}/stream/ffmpeg_view",
             "-frames:v", "8", str(tmp_path / "out%02d.png")],
            capture_output=True, text=True, timeout=60,
        )
    finally:
        pub.stop()
    assert result.returncode == 0, result.stderr
    assert len(list(tmp_path.glob("out*.png"))) == 8


def test_opencv_reads_the_live_stream(shared_server):
    import cv2  # the client extra, installed by make test
    server = shared_server
    pub = Publisher(server.url, "opencv_view", fps=15)
    pub.start()
    try:
        wait_for(lambda: pub.sent > 0)
        cap = cv2.VideoCapture(f"{server.url}/stream/opencv_view")
        ok, image = cap.read()
        cap.release()
    finally:
        pub.stop()
    assert ok and image.shape == (240, 320, 3)
