"""Logs stay small: repeats collapse to one line with a count, floods cost a few lines."""

from __future__ import annotations

import logging
import re

import httpx

from robogpt_video.logs import RepeatFilter


class Clock:
    """A hand-turned monotonic clock."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def capture(window: float) -> tuple[logging.Logger, list[str], RepeatFilter, Clock]:
    clock = Clock()
    repeat = RepeatFilter(window, clock)
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    handler.addFilter(repeat)
    second = logging.Handler()  # a second handler must not double the counts
    second.emit = lambda record: None
    second.addFilter(repeat)
    logger = logging.getLogger(f"test.repeat.{id(repeat)}")
    logger.propagate = False
    logger.handlers[:] = [handler, second]
    logger.setLevel(logging.INFO)
    return logger, lines, repeat, clock


def test_repeats_within_the_window_collapse_with_a_count():
    logger, lines, repeat, clock = capture(window=10)
    for i in range(500):
        logger.warning("bad frame from %s", f"client{i}")
    logger.warning("another message")
    assert lines == ["bad frame from client0", "another message"]

    clock.now += 11
    logger.warning("bad frame from %s", "late")
    assert lines[-1] == "bad frame from late (repeated 499 times)"


def test_pending_counts_are_written_by_a_later_record_or_flush():
    logger, lines, repeat, clock = capture(window=5)
    for _ in range(3):
        logger.warning("disk slow")
    clock.now += 6
    logger.warning("something else")  # sweeps closed windows first
    assert lines == ["disk slow", "disk slow (repeated 2 times)", "something else"]
    logger.info("stream created")
    logger.info("stream created")  # info lines are never collapsed
    assert lines[-2:] == ["stream created", "stream created"]

    for _ in range(4):
        logger.error("queue full on %s", "cam")
    repeat.flush()
    assert lines[-2:] == ["queue full on cam", "queue full on cam (repeated 3 times)"]
    repeat.flush()
    assert len(lines) == 7


def test_window_zero_turns_collapsing_off():
    logger, lines, _, _ = capture(window=0)
    for _ in range(3):
        logger.warning("same")
    assert lines == ["same"] * 3


def test_flood_of_invalid_frames_keeps_the_log_small(start_server):
    server = start_server()
    log_file = server.workdir / "logs" / "server.log"
    size_before = log_file.stat().st_size
    floods = 2000
    with httpx.Client(timeout=10) as client:
        for i in range(floods):
            response = client.post(
                f"{server.url}/publish/cam{i % 7}",
                content=b"definitely not a jpeg %d" % i,
                headers={"content-type": "image/jpeg"},
            )
            assert response.status_code == 400
    assert server.stop() == 0

    text = log_file.read_text()
    grown = len(text.encode()) - size_before
    assert grown < 4096, f"log grew {grown} bytes for {floods} bad frames:\n{text}"
    refused = [line for line in text.splitlines() if "publish refused" in line]
    counted = sum(int(m[1]) if (m := re.search(r"\(repeated (\d+) times\)$", line)) else 1
                  for line in refused)
    assert counted == floods, refused  # nothing lost: every refusal is a line or in a count
    assert len(refused) <= 10
