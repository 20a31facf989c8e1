"""The hot routes (aiohttp handlers) keep the JSON error shape, HEAD, 405 and CORS."""

from __future__ import annotations

import httpx

from helpers import iter_parts, make_jpeg, publish


def test_publish_and_view_errors_keep_the_json_shape(server):
    with httpx.Client(base_url=server.url, timeout=10) as client:
        bad_name = client.post("/publish/bad.name", files={"frame": ("f.jpg", make_jpeg(), "image/jpeg")})
        not_jpeg = client.post("/publish/cam", content=b"hello", headers={"content-type": "image/jpeg"})
        missing = client.get("/stream/nobody")
        wrong_method = client.get("/publish/cam")
    assert bad_name.status_code == 400 and bad_name.json()["error"] == "invalid_stream_name"
    assert not_jpeg.status_code == 400 and not_jpeg.json()["status"] == "error"
    assert missing.status_code == 404 and missing.json()["error"] == "stream_not_found"
    assert wrong_method.status_code == 405 and wrong_method.json()["error"] == "method_not_allowed"
    assert wrong_method.headers["allow"] == "POST, PUT"


def test_view_head_and_parts(server):
    jpeg = make_jpeg(seed=5)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert publish(server.url, "cam", jpeg, client).status_code == 200
        head = client.head("/stream/cam")
        assert head.status_code == 200
        assert head.headers["content-type"] == "multipart/x-mixed-replace; boundary=frame"
        with client.stream("GET", "/stream/cam") as response:
            headers, body = next(iter_parts(response.iter_bytes()))
    assert body == jpeg and headers["content-type"] == "image/jpeg"


def test_browser_requests_still_get_cors_headers(server):
    origin = {"origin": "http://example.test"}
    with httpx.Client(base_url=server.url, timeout=10) as client:
        posted = client.post("/publish/cam", files={"frame": ("f.jpg", make_jpeg(), "image/jpeg")}, headers=origin)
        with client.stream("GET", "/stream/cam", headers=origin) as response:
            viewed = response.headers
        preflight = client.options(
            "/publish/cam",
            headers={**origin, "access-control-request-method": "POST",
                     "access-control-request-headers": "content-type"},
        )
    assert posted.status_code == 200 and posted.headers["access-control-allow-origin"] == "*"
    assert viewed["access-control-allow-origin"] == "*"
    assert preflight.status_code == 200 and "POST" in preflight.headers["access-control-allow-methods"]


def test_a_refused_long_lived_ingest_still_gets_cors_headers(server):
    refused = httpx.post(
        f"{server.url}/publish/cors_refused",
        content=b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: 5\r\n\r\nhello\r\n",
        headers={"Content-Type": "multipart/x-mixed-replace; boundary=frame",
                 "Origin": "http://example.test"},
        timeout=10,
    )
    assert refused.status_code == 400 and refused.json()["error"] == "not_jpeg"
    assert refused.headers["access-control-allow-origin"] == "*"
    assert refused.headers["connection"] == "close"
