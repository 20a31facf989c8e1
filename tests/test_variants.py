"""Viewer-chosen rate and size against a real server: ``?fps=``, ``?width=&quality=``."""

import threading
import time

import httpx
import numpy as np
import pytest
import simplejpeg

from helpers import iter_parts, make_jpeg, publish, wait_for


def stats(server, name):
    return httpx.get(f"{server.url}/api/streams/{name}/stats", timeout=10).json()


def size_of(jpeg):
    height, width = simplejpeg.decode_jpeg_header(jpeg)[:2]
    return width, height


def looks_like(small, original):
    """``small`` is ``original`` downscaled (mean difference of a few grey levels)."""
    width, height = size_of(small)
    reference = simplejpeg.decode_jpeg(original, min_width=width, min_height=height)
    assert reference.shape[:2] == (height, width)
    diff = np.abs(simplejpeg.decode_jpeg(small).astype(int) - reference.astype(int))
    return diff.mean() < 6


class Reader(threading.Thread):
    """Reads a ``/stream`` response's parts into ``bodies`` until the response ends."""

    def __init__(self, url):
        super().__init__(daemon=True)
        self.url = url
        self.bodies: list[bytes] = []
        self.error = None
        self.response = None

    def run(self):
        try:
            with httpx.stream("GET", self.url, timeout=30) as r:
                self.response = r
                for _, body in iter_parts(r.iter_raw()):
                    self.bodies.append(body)
        except Exception as exc:  # closed by the test
            self.error = exc

    def close(self):
        if self.response is not None:
            self.response.close()
        self.join(10)


def test_width_serves_smaller_frames_of_the_same_picture(shared_server):
    server = shared_server
    first = make_jpeg(640, 480, seed=1)
    publish(server.url, "small_cam", first).raise_for_status()
    with httpx.stream("GET", f"{server.url}/stream/small_cam?width=320&quality=60",
                      timeout=10) as r:
        assert r.status_code == 200
        parts = iter_parts(r.iter_raw())
        _, body = next(parts)  # the latest frame, resized, at once
        assert size_of(body) == (320, 240)
        assert looks_like(body, first)
        for seed in (2, 3):
            frame = make_jpeg(640, 480, seed=seed)
            publish(server.url, "small_cam", frame).raise_for_status()
            _, body = next(parts)
            assert size_of(body) == (320, 240) and looks_like(body, frame)
            assert len(body) < len(frame)
    # An odd width (not a DCT scale of 640) keeps the aspect ratio too.
    with httpx.stream("GET", f"{server.url}/stream/small_cam?width=300", timeout=10) as r:
        _, body = next(iter_parts(r.iter_raw()))
        assert size_of(body) == (300, 225)


def test_no_upscaling_the_original_frames_go_out(shared_server):
    server = shared_server
    frame = make_jpeg(320, 240, seed=4)
    publish(server.url, "narrow_cam", frame).raise_for_status()
    with httpx.stream("GET", f"{server.url}/stream/narrow_cam?width=640", timeout=10) as r:
        _, body = next(iter_parts(r.iter_raw()))
    assert body == frame
    snap = httpx.get(f"{server.url}/snapshot/narrow_cam?width=320", timeout=10)
    assert snap.content == frame


def test_viewers_of_one_variant_share_each_encode_and_it_ends_with_them(shared_server):
    server = shared_server
    name = "shared_variant_cam"
    publish(server.url, name, make_jpeg(640, 480, seed=0)).raise_for_status()
    url = f"{server.url}/stream/{name}?width=320&quality=60"
    with httpx.stream("GET", url, timeout=10) as a, httpx.stream("GET", url, timeout=10) as b:
        parts_a, parts_b = iter_parts(a.iter_raw()), iter_parts(b.iter_raw())
        assert size_of(next(parts_a)[1]) == size_of(next(parts_b)[1]) == (320, 240)
        before = stats(server, name)
        assert before["variants"] == 1 and before["viewer_count"] == 2
        for seed in range(1, 6):
            publish(server.url, name, make_jpeg(640, 480, seed=seed)).raise_for_status()
            # Each gets the frame before the next is published: no skipping by a busy encoder.
            assert next(parts_a)[1] == next(parts_b)[1]
        after = stats(server, name)
        assert after["variant_frames_encoded"] - before["variant_frames_encoded"] == 5
        assert after["variant_frames_skipped_busy"] == 0
    wait_for(lambda: stats(server, name)["variants"] == 0, what="the variant to end")
    ended = stats(server, name)
    assert ended["viewer_count"] == 0
    # What the variant's viewers got stays counted for the stream (2 viewers × 6 frames).
    assert ended["frames_out"] >= 12
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert f'robogpt_video_stream_variants{{stream="{name}"}} 0.0' in metrics
    assert f'robogpt_video_stream_variant_frames_encoded_total{{stream="{name}"}} 6.0' in metrics
    # Nobody watches: frames are no longer encoded.
    publish(server.url, name, make_jpeg(640, 480, seed=9)).raise_for_status()
    assert stats(server, name)["variant_frames_encoded"] == after["variant_frames_encoded"]


def test_fps_cap_skips_frames_and_counts_them(shared_server):
    server = shared_server
    name = "capped_cam"
    frames = [make_jpeg(320, 240, seed=s) for s in range(30)]
    publish(server.url, name, make_jpeg(320, 240, seed=99)).raise_for_status()
    capped = Reader(f"{server.url}/stream/{name}?fps=2")
    plain = Reader(f"{server.url}/stream/{name}")
    capped.start()
    plain.start()
    try:
        wait_for(lambda: capped.bodies and plain.bodies, what="both viewers' first frame")
        started = time.monotonic()
        with httpx.Client(timeout=10) as client:
            for frame in frames:
                publish(server.url, name, frame, client).raise_for_status()
        elapsed = time.monotonic() - started
        # The plain viewer gets every frame (the cap is per viewer).
        wait_for(lambda: plain.bodies and plain.bodies[-1] == frames[-1], what="the last frame")
        got = [body for body in capped.bodies if body in frames]
        # At most one frame per 1/fps of the time the frames took to arrive, plus the
        # first and a quarter step's tolerance.
        assert len(got) <= elapsed * 2 + 2
        skipped = stats(server, name)["frames_skipped_fps"]
        assert skipped >= 1
        assert skipped + len(got) <= len(frames)
        assert len([b for b in plain.bodies if b in frames]) == len(frames)
    finally:
        capped.close()
        plain.close()


@pytest.mark.parametrize("query", [
    "fps=0", "fps=-1", "fps=121", "fps=abc", "fps=nan", "width=15", "width=4097", "width=1.5",
    "quality=0", "quality=101", "width=320&quality=x",
])
@pytest.mark.parametrize("route", ["stream", "snapshot"])
def test_bad_parameters_are_refused(shared_server, route, query):
    server = shared_server
    publish(server.url, "params_cam", make_jpeg()).raise_for_status()
    r = httpx.get(f"{server.url}/{route}/params_cam?{query}", timeout=10)
    assert r.status_code == 400
    body = r.json()
    assert body["status"] == "error" and body["error"] == "invalid_parameters"
    assert query.split("&")[-1].split("=")[0] in body["message"]


def test_snapshot_width(shared_server):
    server = shared_server
    frame = make_jpeg(640, 480, seed=5)
    publish(server.url, "snap_small_cam", frame).raise_for_status()
    r = httpx.get(f"{server.url}/snapshot/snap_small_cam?width=160&quality=50", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert size_of(r.content) == (160, 120) and looks_like(r.content, frame)
    plain = httpx.get(f"{server.url}/snapshot/snap_small_cam", timeout=10)
    assert plain.content == frame
    # While a variant of that size is watched, the snapshot is its latest output.
    with httpx.stream("GET", f"{server.url}/stream/snap_small_cam?width=160&quality=50",
                      timeout=10) as view:
        _, body = next(iter_parts(view.iter_raw()))
        r = httpx.get(f"{server.url}/snapshot/snap_small_cam?width=160&quality=50", timeout=10)
        assert r.content == body


def test_a_variant_whose_viewers_all_have_caps_encodes_only_frames_they_take(shared_server):
    server = shared_server
    name = "capped_variant_cam"
    publish(server.url, name, make_jpeg(640, 480, seed=0)).raise_for_status()
    with httpx.stream("GET", f"{server.url}/stream/{name}?width=160&fps=1", timeout=10) as r:
        next(iter_parts(r.iter_raw()))
        before = stats(server, name)["variant_frames_encoded"]
        started = time.monotonic()
        with httpx.Client(timeout=10) as client:
            for seed in range(1, 21):
                publish(server.url, name, make_jpeg(640, 480, seed=seed), client)
        elapsed = time.monotonic() - started
        encoded = stats(server, name)["variant_frames_encoded"] - before
        assert encoded <= elapsed * 1 + 2 < 20
