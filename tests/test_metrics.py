"""``GET /metrics`` on a real server: parseable Prometheus text whose counters move."""

from __future__ import annotations

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from helpers import iter_parts, make_jpeg, publish


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
    assert samples[("robogpt_video_recording_queue_bytes_max", ())] == 256 * 1024 * 1024


def test_no_recording_metrics_when_recording_is_off(start_server):
    server = start_server({"recording": {"enabled": False}})
    assert publish(server.url, "cam", make_jpeg()).status_code == 200
    assert not any(name.startswith("robogpt_video_recording") for name, _ in scrape(server.url))
