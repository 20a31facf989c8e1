"""``GET /metrics`` on a real server: parseable Prometheus text whose counters move."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from helpers import iter_parts, make_jpeg, publish
from robogpt_video.config import Settings
from robogpt_video.runtime import Runtime
from robogpt_video.web.metrics import RuntimeCollector


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
    assert stream_value(after, "robogpt_video_stream_frames_dropped_total") >= 0
    assert after[("robogpt_video_publish_seconds_count", ())] == 20
    assert after[("robogpt_video_publish_seconds_sum", ())] > 0
    assert after[("robogpt_video_publish_rejected_total", (("error", "not_jpeg"),))] == 1
    assert after[("process_cpu_seconds_total", ())] >= before[("process_cpu_seconds_total", ())]


class Recorder:
    """The recorder's duck-typed seam: ``stats()`` maps stream names to counters."""

    def stats(self) -> dict:
        return {
            "cam": {"bytes_written": 1234, "frames_written": 10, "frames_dropped": 2,
                    "errors": 1, "queue_frames": 3, "segment": "cam/cam_x.mp4"},
        }


def test_recorder_stats_are_exported_when_a_recorder_exists():
    runtime = Runtime(Settings())
    plain = {f.name for f in RuntimeCollector(runtime).collect()}
    assert not any(name.startswith("robogpt_video_recording") for name in plain)

    runtime.recorder = Recorder()
    families = {f.name: f for f in RuntimeCollector(runtime).collect()}
    values = {f: {s.name: s.value for s in families[f].samples} for f in families}
    assert values["robogpt_video_recording_bytes"] == {"robogpt_video_recording_bytes_total": 1234}
    assert values["robogpt_video_recording_errors"] == {"robogpt_video_recording_errors_total": 1}
    assert values["robogpt_video_recording_frames_dropped"] == {
        "robogpt_video_recording_frames_dropped_total": 2
    }
    assert values["robogpt_video_recording_queue_frames"] == {
        "robogpt_video_recording_queue_frames": 3
    }
