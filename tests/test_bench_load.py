"""The load generator end to end against real servers (correctness only, no timings)."""

from __future__ import annotations

import asyncio
import json

import pytest

from bench.load import Load, percentile, run_load
from bench.profile import summarise
from bench.report import render
from bench.scenarios import jpeg_for
from bench.servers import BenchServer


def test_percentile_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) is None


def test_profile_summary_counts_self_time():
    raw = (
        "main (a.py:1);publish (robogpt_video/web/live.py:40) 30\n"
        "main (a.py:1);_writelines (aiohttp/http_writer.py:9) 70\n"
    )
    summary = summarise(raw)
    assert summary["samples"] == 100
    assert summary["functions"][0] == ("_writelines (aiohttp/http_writer.py:9)", 70.0)
    assert dict(summary["packages"]) == {"aiohttp": 70.0, "robogpt_video": 30.0}


@pytest.mark.parametrize("kind", ["ours", "baseline"])
def test_load_reaches_viewers_with_stamps(kind, tmp_path):
    """Two streams × two viewers: every viewer parses stamped frames; nothing errs."""
    load = Load(2, viewers=2, fps=20, seconds=1.5, warmup=0.3)
    with BenchServer(kind, tmp_path / kind) as server:
        result = asyncio.run(run_load(server, load, jpeg_for("640x480")))
    assert result["error_count"] == 0, result["errors"]
    assert result["accepted_fps"] > 0 and result["view_fps"] > 0
    assert result["p99_ms"] is not None and result["p99_ms"] >= 0
    assert result["server_peak_rss_mb"] > 10
    text = render({"meta": {}, "s10x2": {"ours": {**result, "kind": kind}, "baseline": {**result, "kind": kind}}})
    assert "S=10 × 2 viewers" in text and "| s10x2 |" in text


def test_soak_samples_rows_and_writes_its_report(tmp_path):
    """``make soak`` at a tiny size: rows with server and client numbers, table and chart."""
    from bench import soak

    soak.main(["--streams", "2", "--fps", "10", "--minutes", "0.05", "--interval", "1",
               "--out", str(tmp_path)])
    data = json.loads((tmp_path / "SOAK.json").read_text())
    rows = data["rows"]
    assert len(rows) >= 2
    assert all(row["rss_mb"] > 10 and row["fds"] > 5 for row in rows)
    assert rows[-1]["published_fps"] > 0 and rows[-1]["viewed_fps"] > 0
    assert sum(row["client_errors"] for row in rows) == 0
    report = (tmp_path / "SOAK.md").read_text()
    assert "| minute | RSS MB |" in report and "soak.svg" in report
    assert (tmp_path / "soak.svg").read_text().startswith("<svg")
