"""The brief's endpoints against a real server: every field, every error."""

import json
import re
import subprocess
from datetime import datetime

import httpx
import pytest

from helpers import make_jpeg, publish

JPEG = make_jpeg(320, 240)
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?$")


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["status"] == "error" and body["error"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    return body


def stream_names(url: str) -> set[str]:
    return {s["name"] for s in httpx.get(f"{url}/api/streams", timeout=10).json()["streams"]}


# Tests that take ``shared_server`` share one server: each uses its own stream names and
# asserts nothing about the server as a whole. Tests that count streams or read the
# log take their own ``server``.


def test_publish_multipart_as_in_the_brief(shared_server):
    r = publish(shared_server.url, "brief_cam", JPEG)
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "success" and body["stream"] == "brief_cam"
    assert body["frame_size"] == len(JPEG)
    assert (body["width"], body["height"]) == (320, 240)


def test_publish_raw_jpeg_body(shared_server):
    r = httpx.post(
        f"{shared_server.url}/publish/raw", content=JPEG, headers={"Content-Type": "image/jpeg"}
    )
    assert r.status_code == 200 and r.json()["frame_size"] == len(JPEG)


def test_brief_custom_publisher_with_requests(shared_server):
    import requests

    files = {"frame": ("frame.jpg", JPEG, "image/jpeg")}
    response = requests.post(f"{shared_server.url}/publish/req_cam", files=files, timeout=10)
    assert response.status_code == 200


def test_list_and_stats_have_every_brief_field(server):
    for i in range(3):
        assert publish(server.url, "camera1", make_jpeg(seed=i)).status_code == 200
    listing = httpx.get(f"{server.url}/api/streams").json()
    assert listing["count"] == 1
    [entry] = listing["streams"]
    for key in ("name", "created_at", "uptime_seconds", "total_frames", "viewer_count", "inactive_seconds"):
        assert key in entry
    assert entry["name"] == "camera1" and entry["total_frames"] == 3 and entry["viewer_count"] == 0
    assert ISO.match(entry["created_at"]) and entry["inactive_seconds"] >= 0

    stats = httpx.get(f"{server.url}/api/streams/camera1/stats").json()
    for key in (
        "name", "created_at", "uptime_seconds", "last_frame_time", "inactive_seconds",
        "total_frames", "viewer_count", "buffer_size", "has_current_frame",
    ):
        assert key in stats, key
    assert stats["buffer_size"] == 3 and stats["has_current_frame"] is True
    assert ISO.match(stats["last_frame_time"])
    assert datetime.fromisoformat(stats["last_frame_time"].replace("Z", "+00:00")) >= (
        datetime.fromisoformat(stats["created_at"].replace("Z", "+00:00"))
    )
    assert stats["bytes_in"] == sum(len(make_jpeg(seed=i)) for i in range(3))


def test_buffer_size_is_bounded_by_max_buffer_frames(start_server):
    srv = start_server({"streams": {"max_buffer_frames": 5}})
    with httpx.Client() as client:
        for i in range(12):
            publish(srv.url, "cam", JPEG, client)
    assert httpx.get(f"{srv.url}/api/streams/cam/stats").json()["buffer_size"] == 5


def test_delete_stream(server):
    publish(server.url, "camera1", JPEG)
    r = httpx.delete(f"{server.url}/api/streams/camera1")
    assert r.json() == {"status": "success", "message": "Stream 'camera1' deleted"}
    assert httpx.get(f"{server.url}/api/streams").json() == {"count": 0, "streams": []}
    assert_error(httpx.delete(f"{server.url}/api/streams/camera1"), 404, "stream_not_found")


def test_health(server):
    publish(server.url, "a", JPEG)
    body = httpx.get(f"{server.url}/health").json()
    assert body["status"] == "healthy"
    assert body["active_streams"] == 1 and body["max_streams"] == 50
    assert body["recording_enabled"] is True
    assert body["config"] == {"timeout_seconds": 300, "max_buffer_frames": 30, "retention_days": 7}


def test_snapshot(shared_server):
    url = shared_server.url
    assert_error(httpx.get(f"{url}/snapshot/snap_cam"), 404, "stream_not_found")
    publish(url, "snap_cam", JPEG)
    r = httpx.get(f"{url}/snapshot/snap_cam")
    assert r.status_code == 200 and r.content == JPEG
    assert r.headers["content-type"] == "image/jpeg"
    assert float(r.headers["x-timestamp"]) > 1.7e9
    assert "no-store" in r.headers["cache-control"]


def test_openapi_docs(shared_server):
    assert httpx.get(f"{shared_server.url}/docs").status_code == 200
    paths = httpx.get(f"{shared_server.url}/openapi.json").json()["paths"]
    assert {"/api/streams", "/api/streams/{name}/stats", "/health"} <= set(paths)


def test_cors(shared_server):
    publish(shared_server.url, "cors_cam", JPEG)
    r = httpx.get(f"{shared_server.url}/api/streams", headers={"Origin": "http://dash.example"})
    assert r.headers["access-control-allow-origin"] == "*"
    pre = httpx.options(
        f"{shared_server.url}/publish/cors_cam",
        headers={"Origin": "http://dash.example", "Access-Control-Request-Method": "POST"},
    )
    assert pre.status_code == 200


def test_cors_can_be_disabled(start_server):
    srv = start_server({"server": {"cors_enabled": False}})
    r = httpx.get(f"{srv.url}/health", headers={"Origin": "http://dash.example"})
    assert "access-control-allow-origin" not in r.headers


def multipart(field="frame", data=JPEG):
    return {"files": {field: ("f.jpg", data, "image/jpeg")}}


# No test publishes to "refused" or "nope" (the table runs on the shared server).
BAD_INPUTS = [
    ("post", "/publish/bad%20name", multipart(), 400, "invalid_stream_name"),
    ("post", "/publish/" + "x" * 65, multipart(), 400, "invalid_stream_name"),
    ("post", "/publish/cam.jpg", multipart(), 400, "invalid_stream_name"),
    ("post", "/publish/refused", multipart(data=b""), 400, "empty_frame"),
    ("post", "/publish/refused", multipart(data=b"not a jpeg"), 400, "not_jpeg"),
    ("post", "/publish/refused", multipart(data=JPEG[: len(JPEG) // 2]), 400, "truncated_jpeg"),
    ("post", "/publish/refused", multipart(field="image"), 400, "missing_frame_field"),
    ("post", "/publish/refused", {"content": b"", "headers": {"Content-Type": "image/jpeg"}}, 400, "empty_frame"),
    ("post", "/publish/refused", {"content": b"{}", "headers": {"Content-Type": "application/json"}}, 415, "unsupported_media_type"),
    ("post", "/publish/refused", {"content": b"--x\r\n", "headers": {"Content-Type": "multipart/form-data"}}, 400, "bad_multipart"),
    ("get", "/stream/nope", {}, 404, "stream_not_found"),
    ("get", "/stream/bad%20name", {}, 400, "invalid_stream_name"),
    ("get", "/snapshot/nope", {}, 404, "stream_not_found"),
    ("get", "/api/streams/nope/stats", {}, 404, "stream_not_found"),
    ("get", "/api/streams/bad%21/stats", {}, 400, "invalid_stream_name"),
    ("delete", "/api/streams/nope", {}, 404, "stream_not_found"),
    ("get", "/no/such/route", {}, 404, "not_found"),
    ("get", "/publish/cam", {}, 405, "method_not_allowed"),
]


@pytest.mark.parametrize("method, path, kwargs, status, code", BAD_INPUTS)
def test_bad_inputs_table(shared_server, method, path, kwargs, status, code):
    before = stream_names(shared_server.url)
    r = httpx.request(method.upper(), shared_server.url + path, timeout=10, **kwargs)
    assert_error(r, status, code)
    # nothing was created by a refused frame
    assert stream_names(shared_server.url) - before == set()


def test_bad_frame_does_not_disturb_an_existing_stream(shared_server):
    url = shared_server.url
    publish(url, "kept_cam", JPEG)
    assert_error(publish(url, "kept_cam", b"garbage"), 400, "not_jpeg")
    stats = httpx.get(f"{url}/api/streams/kept_cam/stats").json()
    assert stats["total_frames"] == 1
    assert httpx.get(f"{url}/snapshot/kept_cam").content == JPEG


def test_too_large_is_refused_before_the_body_is_read(start_server):
    srv = start_server({"server": {"max_frame_size_mb": 0.05}})  # 52 KB
    big = make_jpeg(1280, 720, quality=98)
    assert len(big) > 60_000
    assert_error(publish(srv.url, "cam", big), 413, "frame_too_large")
    raw = httpx.post(f"{srv.url}/publish/cam", content=big, headers={"Content-Type": "image/jpeg"})
    assert_error(raw, 413, "frame_too_large")

    # chunked upload without Content-Length: stopped once past the limit
    def chunks():
        for i in range(0, len(big), 8192):
            yield big[i : i + 8192]

    chunked = httpx.post(f"{srv.url}/publish/cam", content=chunks(), headers={"Content-Type": "image/jpeg"})
    assert_error(chunked, 413, "frame_too_large")
    # the same server still takes a frame within the limit on a fresh request
    assert publish(srv.url, "cam", JPEG).status_code == 200


def test_stream_limit_is_503(start_server):
    srv = start_server({"streams": {"max_concurrent": 2}})
    assert publish(srv.url, "a", JPEG).status_code == 200
    assert publish(srv.url, "b", JPEG).status_code == 200
    refused = publish(srv.url, "c", JPEG)
    assert_error(refused, 503, "stream_limit_reached")
    assert refused.headers["retry-after"] == "10"
    assert publish(srv.url, "a", JPEG).status_code == 200  # existing streams still take frames
    httpx.delete(f"{srv.url}/api/streams/a")
    assert publish(srv.url, "c", JPEG).status_code == 200


def test_log_file_is_written_without_a_line_per_frame(server):
    with httpx.Client() as client:
        for _ in range(50):
            publish(server.url, "cam", JPEG, client)
    log = (server.workdir / "logs" / "server.log").read_text()
    assert "stream cam created" in log
    assert len(log.splitlines()) < 20


@pytest.mark.parametrize("host, shown", [("127.0.0.1", "127.0.0.1"), ("0.0.0.0", "localhost")])
def test_start_up_says_where_the_dashboard_is_and_how_to_publish(start_server, tmp_path,
                                                                 host, shown):
    server = start_server({"server": {"host": host}})
    local = f"http://{shown}:{server.port}"
    line = next(row for row in server.output().splitlines() if "dashboard: " in row)
    assert f"dashboard: {local}/" in line
    command = line.split("publish a frame: ", 1)[1]
    assert command == f"curl -F frame=@photo.jpg {local}/publish/camera1"
    (tmp_path / "photo.jpg").write_bytes(make_jpeg())
    done = subprocess.run(command.split() + ["--silent", "--show-error"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "success"
