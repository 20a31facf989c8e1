"""``GET /metrics`` on a real server: parseable Prometheus text whose counters move."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from helpers import REPO, iter_parts, make_jpeg, publish, wait_for
from robogpt_video.web.metrics import problem_reason
from robogpt_video.web.mjpeg import SENDFILE_VIEWERS

# Debian's prometheus package, which `make test` installs (tools/test-packages).
PROMTOOL = shutil.which("promtool") or "promtool"
ALERTS = REPO / "deploy" / "prometheus" / "robogpt-video-alerts.yml"


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample of ``/metrics`` as {(name, sorted labels): value}."""
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def stream_value(samples, name: str, stream: str = "cam") -> float:
    return samples.get((name, (("stream", stream),)), 0.0)


def test_metrics_parse_and_move_with_frames(server):
    before = scrape(server.url)
    assert before[("robogpt_video_streams", ())] == 0
    assert ("process_resident_memory_bytes", ()) in before
    assert ("process_open_fds", ()) in before

    frames = [make_jpeg(seed=i) for i in range(20)]
    assert publish(server.url, "cam", frames[0]).status_code == 200
    with httpx.Client(timeout=10) as client, httpx.stream(
        "GET", f"{server.url}/stream/cam", timeout=10
    ) as view:
        parts = iter_parts(view.iter_bytes())
        next(parts)  # the viewer is registered and has its first frame
        during = scrape(server.url)
        for jpeg in frames[1:]:
            assert publish(server.url, "cam", jpeg, client).status_code == 200
        next(parts)
    bad = httpx.post(f"{server.url}/publish/cam", content=b"not a jpeg",
                     headers={"content-type": "image/jpeg"}, timeout=10)
    assert bad.status_code == 400
    after = scrape(server.url)

    assert stream_value(during, "robogpt_video_stream_viewers") == 1
    assert after[("robogpt_video_streams", ())] == 1
    assert stream_value(after, "robogpt_video_stream_frames_in_total") == 20
    assert stream_value(after, "robogpt_video_stream_bytes_in_total") == sum(map(len, frames))
    assert stream_value(after, "robogpt_video_stream_frames_out_total") >= 2
    assert ("robogpt_video_stream_frames_dropped_slow_viewers_total", (("stream", "cam"),)) in after
    assert stream_value(after, "robogpt_video_stream_frames_pushed_total") >= 1
    assert after[("robogpt_video_frames_in_total", (("via", "post"),))] == 20
    assert after[("robogpt_video_publish_seconds_count", ())] == 20
    assert after[("robogpt_video_publish_seconds_sum", ())] > 0
    assert after[("robogpt_video_publish_rejected_total", (("error", "not_jpeg"),))] == 1
    assert after[("process_cpu_seconds_total", ())] >= before[("process_cpu_seconds_total", ())]


def test_recorder_counters_move_with_recorded_frames(server):
    frames = [make_jpeg(seed=i) for i in range(10)]
    with httpx.Client(timeout=10) as client:
        for jpeg in frames:  # 20 fps: under recording.fps, so every frame is recorded
            assert publish(server.url, "cam", jpeg, client).status_code == 200
            time.sleep(0.05)
    # the writer threads catch up
    deadline = time.monotonic() + 10
    while stream_value(scrape(server.url), "robogpt_video_recording_frames_total") < 10:
        assert time.monotonic() < deadline, "the recorder never wrote the frames"
        time.sleep(0.05)
    samples = scrape(server.url)
    assert stream_value(samples, "robogpt_video_recording_bytes_total") >= sum(map(len, frames))
    assert stream_value(samples, "robogpt_video_recording_errors_total") == 0
    assert stream_value(samples, "robogpt_video_recording_frames_dropped_total") == 0
    assert ("robogpt_video_recording_queue_frames", (("stream", "cam"),)) in samples
    assert samples[("robogpt_video_recording_queue_bytes", ())] >= 0
    assert samples[("robogpt_video_recording_queue_max_bytes", ())] == 256 * 1024 * 1024


def test_no_recording_metrics_when_recording_is_off(start_server):
    server = start_server({"recording": {"enabled": False}})
    assert publish(server.url, "cam", make_jpeg()).status_code == 200
    assert not any(name.startswith("robogpt_video_recording") for name, _ in scrape(server.url))


def lint(url: str) -> None:
    """``promtool check metrics`` finds nothing to say about ``/metrics``."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    checked = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0 and not checked.stdout.strip(), checked.stdout + checked.stderr


class CountingViewer:
    """``GET /stream/<name>`` over HTTP/1.1 on a plain socket: counts every body byte
    read from the socket and decodes the chunks (one MJPEG part each)."""

    def __init__(self, port: int, name: str):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(f"GET /stream/{name} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        self.buf = b""
        self.received = 0
        head = self._until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head.lower(), head
        self.received = len(self.buf)  # body bytes that came with the headers
        self.parts: list[bytes] = []

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            self._read()
        item, self.buf = self.buf.split(marker, 1)
        return item

    def _read(self) -> None:
        data = self.sock.recv(65536)
        assert data, "the server closed the connection"
        self.buf += data
        self.received += len(data)

    def part(self) -> bytes:
        """The next chunk's data: one whole MJPEG part."""
        size = int(self._until(b"\r\n"), 16)
        while len(self.buf) < size + 2:
            self._read()
        part, self.buf = self.buf[:size], self.buf[size:]
        assert self._until(b"\r\n") == b""
        self.parts.append(part)
        return part

    def close(self) -> None:
        self.sock.close()


def test_bytes_out_is_what_viewers_received(start_server):
    # No re-sends of a quiet stream's frame: every part written is one read below.
    server = start_server({"streams": {"resend_seconds": 3600}})
    jpegs = [make_jpeg(640, 480, seed=s) for s in range(4)]
    publish(server.url, "cam", jpegs[0])
    viewers = [CountingViewer(server.port, "cam")]
    try:
        viewers[0].part()
        publish(server.url, "cam", jpegs[1])
        viewers[0].part()
        # From SENDFILE_VIEWERS viewers on, parts leave by sendfile from a memfd.
        viewers += [CountingViewer(server.port, "cam") for _ in range(SENDFILE_VIEWERS)]
        for viewer in viewers[1:]:
            viewer.part()
        for jpeg in jpegs[2:]:
            publish(server.url, "cam", jpeg)
            for viewer in viewers:
                assert list(iter_parts([viewer.part()]))[0][1] == jpeg
        samples = scrape(server.url)
    finally:
        for viewer in viewers:
            viewer.close()
    assert samples[("robogpt_video_viewer_writes_total", (("method", "sendfile"),))] > 0
    assert samples[("robogpt_video_viewer_writes_total", (("method", "writev"),))] > 0
    bytes_out = stream_value(samples, "robogpt_video_stream_bytes_out_total")
    parts = [part for viewer in viewers for part in viewer.parts]
    assert all(viewer.buf == b"" for viewer in viewers)  # nothing beyond the last part
    assert bytes_out == sum(map(len, parts))
    received = sum(viewer.received for viewer in viewers)
    # The rest is HTTP/1.1 chunk framing: a size line and a CRLF per part.
    assert 0 < received - bytes_out <= 12 * len(parts)


def test_frame_age_rises_while_quiet_and_drops_after_a_publish(server):
    def age() -> float:
        return stream_value(scrape(server.url), "robogpt_video_stream_frame_age_seconds")

    publish(server.url, "cam", make_jpeg())
    risen = wait_for(lambda: (value := age()) > 1.0 and value, what="the frame age to rise")
    publish(server.url, "cam", make_jpeg(seed=1))
    wait_for(lambda: age() < risen, what="the frame age to drop after a publish")


def test_a_healthy_server_is_not_degraded(server):
    samples = scrape(server.url)
    assert samples[("robogpt_video_degraded", ())] == 0
    assert not any(name == "robogpt_video_problem" for name, _ in samples)


def degraded(url: str) -> list[str]:
    body = httpx.get(f"{url}/health", timeout=10).json()
    return body["problems"] if body["status"] == "degraded" else []


def test_disk_guard_pause_is_a_problem_with_a_stable_reason(start_server):
    # Far more free space wanted than any disk has: the start-up sweep pauses recording.
    server = start_server({"recording": {"min_free_gb": 10**9}})
    problems = wait_for(lambda: degraded(server.url), what="/health to say degraded")
    assert [problem_reason(text) for text in problems] == ["recording_paused"], problems
    samples = scrape(server.url)
    assert samples[("robogpt_video_degraded", ())] == 1
    reasons = {dict(labels)["reason"]: value for (name, labels), value in samples.items()
               if name == "robogpt_video_problem"}
    assert reasons == {"recording_paused": 1}
    lint(server.url)


def test_disk_low_without_a_recorder_is_its_own_reason(start_server):
    server = start_server({"recording": {"enabled": False, "min_free_gb": 10**9}})
    wait_for(lambda: degraded(server.url), what="/health to say degraded")
    samples = scrape(server.url)
    assert samples[("robogpt_video_problem", (("reason", "disk_low"),))] == 1
    assert samples[("robogpt_video_degraded", ())] == 1


def test_problem_texts_map_to_a_fixed_set_of_reasons():
    texts = {
        "recording paused: 1.2 GiB free for /rec, below recording.min_free_gb = 5 GiB":
            "recording_paused",
        "recording of stream 'cam-1' failed: [Errno 28] No space left on device "
        "(retrying in 2 s)": "recording_failed",
        "recording: no write completed for 12 s on 3 stream(s) (the disk is stalled or too "
        "slow)": "recording_stalled",
        "recording: 884 frame(s) dropped from the disk queue in the last 60 s":
            "recorder_dropping",
        "disk space low: 1.2 GiB free for /rec, below recording.min_free_gb = 5 GiB":
            "disk_low",
        "cluster: Redis unreachable at unix:///run/redis.sock: Connection refused":
            "cluster_disconnected",
        "cluster: Redis not connected yet": "cluster_disconnected",
        "recording: 107 frame(s) dropped from the disk queue in the last 60 s to keep the "
        "frames held within server.max_frame_memory_mb (512 MiB)": "recorder_dropping",
        "memory: 600 MiB of frames are held by live streams' latest frames and uploads "
        "being read, over server.max_frame_memory_mb (512 MiB): no frame can wait for the "
        "disk": "frame_memory_over_budget",
        "recording: Redis unreachable: each node records the frames published to it "
        "(no lease)": "recording_without_lease",
        "something new": "other",
    }
    assert {text: problem_reason(text) for text in texts} == texts


def test_disk_and_recordings_size(start_server):
    # The disk guard lists the recordings every interval while max_total_gb is set.
    server = start_server({
        "recording": {"max_total_gb": 1000, "idle_close_seconds": 0.5},
        "cleanup": {"interval_seconds": 0.2},
    })
    listed = ("robogpt_video_recordings_listed_timestamp_seconds", ())
    samples = wait_for(lambda: (found := scrape(server.url)).get(listed) and found,
                       what="the start-up sweep to list the recordings")
    free = samples[("robogpt_video_recordings_disk_free_bytes", ())]
    total = samples[("robogpt_video_recordings_disk_total_bytes", ())]
    assert 0 < free <= total
    with httpx.Client(timeout=10) as client:
        for seed in range(5):
            assert publish(server.url, "cam", make_jpeg(seed=seed), client).status_code == 200

    def on_disk() -> int:
        return sum(path.stat().st_size for path in server.recordings.rglob("*") if path.is_file())

    def closed() -> bool:  # the idle segment's sidecar says how it ended
        return any(b'"complete"' in path.read_bytes()
                   for path in server.recordings.rglob("*.json"))

    wait_for(closed, what="the idle segment to be closed")
    wait_for(lambda: scrape(server.url)[("robogpt_video_recordings_bytes", ())] == on_disk() > 0,
             what="the recordings' size as listed to match the files")


def test_promtool_finds_nothing_to_lint(server):
    publish(server.url, "cam", make_jpeg())
    httpx.post(f"{server.url}/publish/cam", content=b"not a jpeg", timeout=10,
               headers={"content-type": "image/jpeg"})
    with httpx.stream("GET", f"{server.url}/stream/cam", timeout=10) as view:
        next(iter_parts(view.iter_bytes()))
        lint(server.url)


def test_alert_rules_name_only_metrics_the_server_exposes(server):
    publish(server.url, "cam", make_jpeg())
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    families = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
    used = set(re.findall(r"robogpt_video_[a-z_]*[a-z]", ALERTS.read_text()))
    assert used
    for name in used:
        histogram = re.sub(r"_(bucket|count|sum)$", "", name)
        assert name in families or families.get(histogram) == "histogram", name
    checked = subprocess.run([PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
