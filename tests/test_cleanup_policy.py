"""Cleanup decisions with a fake clock: no sleeping, no disk."""

from datetime import datetime, time, timedelta
from pathlib import Path

import pytest

from robogpt_video.cleanup.policy import (
    DAY,
    Segment,
    expired,
    inactive_streams,
    is_busy,
    next_daily_run,
    parse_hhmm,
    parse_iso,
    plan_disk_guard,
    segment_end,
)

NOW = 1_790_000_000.0  # a fixed "now" in epoch seconds (2026-09-21)
GRACE = 60.0


def seg(name: str, start: float, end: float | None = None, size: int = 100, **kw) -> Segment:
    """A segment of stream ``cam`` that started/ended ``start``/``end`` seconds before NOW."""
    end = start if end is None else end
    fields = {"mtime": NOW - end, "status": "complete", **kw}
    return Segment("cam", Path(f"/r/cam/{name}.mp4"), NOW - start, NOW - end, size, **fields)


# -- inactive streams ---------------------------------------------------------------------


def test_streams_time_out_at_exactly_the_timeout():
    idle = {"fresh": 0.0, "almost": 299.999, "exact": 300.0, "gone": 5000.0}
    assert inactive_streams(idle, 300) == ["exact", "gone"]
    assert inactive_streams({}, 300) == []


# -- daily schedule -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "now, at, expected",
    [
        ("2026-03-10 02:59:59", "03:00", "2026-03-10 03:00:00"),
        ("2026-03-10 03:00:00", "03:00", "2026-03-11 03:00:00"),  # strictly after: ran now
        ("2026-03-10 03:00:01", "03:00", "2026-03-11 03:00:00"),
        ("2026-03-10 23:59:30", "00:00", "2026-03-11 00:00:00"),  # across midnight
        ("2026-03-10 23:30:00", "00:15", "2026-03-11 00:15:00"),
        ("2026-03-11 00:10:00", "00:15", "2026-03-11 00:15:00"),  # just after midnight
        ("2026-12-31 23:59:00", "00:00", "2027-01-01 00:00:00"),  # across a year
        ("2028-02-28 23:00:00", "23:59", "2028-02-28 23:59:00"),
        ("2028-02-28 23:59:00", "23:59", "2028-02-29 23:59:00"),  # leap day
    ],
)
def test_next_daily_run(now, at, expected):
    parsed = datetime.fromisoformat(now)
    assert next_daily_run(parsed, parse_hhmm(at)) == datetime.fromisoformat(expected)


def test_a_fake_clock_walking_three_days_runs_once_a_day_at_the_time():
    at = time(0, 30)
    clock = datetime(2026, 5, 1, 22, 0)
    due = next_daily_run(clock, at)
    runs = []
    while clock < datetime(2026, 5, 4, 22, 0):
        clock += timedelta(seconds=60)  # the service's interval
        if clock >= due:
            runs.append(clock)
            due = next_daily_run(clock, at)
    assert runs == [datetime(2026, 5, d, 0, 30) for d in (2, 3, 4)]


# -- segment end and busy segments --------------------------------------------------------


def test_parse_iso():
    assert parse_iso("2026-01-21T10:45:23Z") == datetime.fromisoformat(
        "2026-01-21T10:45:23+00:00"
    ).timestamp()
    assert parse_iso("2026-01-21T10:45:23.500+00:00") % 1 == 0.5
    for bad in (None, "", "yesterday", 12, "2026-01-21T10:45:23"):  # naive is ambiguous
        assert parse_iso(bad) is None


def test_segment_end_is_the_later_of_end_time_and_mtime():
    start = NOW - 3 * DAY
    sidecar = {"end_time": "2026-09-01T00:00:00Z"}
    end_time = parse_iso(sidecar["end_time"])
    assert segment_end(sidecar, mtime=end_time - 10, start=start) == end_time
    assert segment_end(sidecar, mtime=NOW, start=start) == NOW  # still being written
    assert segment_end(None, mtime=NOW - 5, start=start) == NOW - 5  # no sidecar
    assert segment_end({"end_time": None}, mtime=0, start=start) == start


def test_busy_segments():
    assert is_busy(seg("a", 9 * DAY, open=True), NOW, GRACE)  # open: always
    assert is_busy(seg("b", 9 * DAY, 10, status="recording"), NOW, GRACE)
    assert is_busy(seg("c", 9 * DAY, 10, status=None), NOW, GRACE)  # sidecar not yet written
    assert not is_busy(seg("d", 9 * DAY, GRACE, status="recording"), NOW, GRACE)  # crash leftover
    assert not is_busy(seg("e", 9 * DAY, 10, status="complete"), NOW, GRACE)


# -- retention ----------------------------------------------------------------------------


def test_retention_boundaries():
    week = 7 * DAY
    older = seg("older", 8 * DAY, week + 0.001)
    exact = seg("exact", 8 * DAY, week)  # ended exactly 7 days ago: not *older* than 7 days
    newer = seg("newer", 8 * DAY, week - 1)
    assert expired([older, exact, newer], NOW, 7, GRACE) == [older]
    assert expired([older, exact, newer], NOW, 0, GRACE) == []  # 0 keeps forever
    assert expired([older, exact, newer], NOW, 0.5, GRACE) == [older, exact, newer]


def test_retention_never_takes_a_segment_being_written():
    open_one = seg("open", 30 * DAY, 30 * DAY, open=True)
    writing = seg("writing", 30 * DAY, 30 * DAY, status="recording", mtime=NOW - 1)
    leftover = seg("leftover", 30 * DAY, 30 * DAY, status="recording")
    assert expired([open_one, writing, leftover], NOW, 7, GRACE) == [leftover]


# -- disk guard ---------------------------------------------------------------------------


def guard(segments, free=10**12, max_total=0, min_free=0, paused=False):
    return plan_disk_guard(
        segments,
        now=NOW,
        grace=GRACE,
        free_bytes=free,
        max_total_bytes=max_total,
        min_free_bytes=min_free,
        paused=paused,
    )


def test_guard_is_off_at_zero():
    plan = guard([seg("a", 100), seg("b", 50)])
    assert plan.delete == [] and not plan.pause and plan.total_after == 200


def test_guard_deletes_oldest_first_across_streams_until_under_the_cap():
    other = Segment("dock", Path("/r/dock/x.mp4"), NOW - 250, NOW - 240, 100, NOW - 240, "complete")
    listing = [seg("newest", 10), seg("old", 300), other, seg("mid", 200)]
    plan = guard(listing, max_total=200)
    assert [s.path.stem for s in plan.delete] == ["old", "x"]
    assert plan.total_after == 200 and not plan.pause


def test_guard_skips_busy_segments_and_stops_as_soon_as_limits_hold():
    listing = [
        seg("oldest_open", 900, open=True),
        seg("old", 800),
        seg("writing", 700, 5, status="recording"),
        seg("mid", 600),
        seg("new", 500),
    ]
    plan = guard(listing, free=1000, min_free=1150)
    assert [s.path.stem for s in plan.delete] == ["old", "mid"]
    assert plan.free_after == 1200 and not plan.pause


def test_guard_pauses_when_nothing_is_left_to_delete_and_resumes_with_headroom():
    listing = [seg("open", 900, open=True), seg("old", 800)]
    plan = guard(listing, free=1000, min_free=2000)
    assert [s.path.stem for s in plan.delete] == ["old"] and plan.pause
    assert plan.free_after == 1100
    # Paused: exactly min_free is not enough to resume (5 % headroom), a bit more is.
    assert guard([], free=2000, min_free=2000, paused=True).pause
    assert not guard([], free=2100, min_free=2000, paused=True).pause
    assert not guard([], free=2000, min_free=2000, paused=False).pause


def test_guard_over_the_cap_with_only_open_segments_does_not_pause():
    plan = guard([seg("open", 10, open=True)], max_total=50)
    assert plan.delete == [] and not plan.pause and plan.total_after == 100
