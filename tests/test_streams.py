import asyncio
import os

import pytest

from helpers import make_jpeg
from robogpt_video.config import StreamsSettings
from robogpt_video.errors import InvalidStreamName, StreamLimitReached, ViewerLimitReached
from robogpt_video.jpeg import inspect_jpeg
from robogpt_video.streams import FrameRecord, StreamRegistry, validate_stream_name
from robogpt_video.web.mjpeg import (
    CRLF,
    SENDFILE_VIEWERS,
    FrameWire,
    FrameWires,
    WriteCounters,
    _rest,
    build_part,
    part_head,
)

JPEG = make_jpeg(32, 24)
INFO = inspect_jpeg(JPEG)


def run(coro):
    return asyncio.run(coro)


async def settle(rounds: int = 5) -> None:
    """Let woken tasks run (no timing involved: a few passes of the event loop)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class FakeSink:
    """A viewer's link: records frames, can be full (``paused``) or gone."""

    def __init__(self):
        self.frames = []
        self.paused = False
        self.gone = False
        self.raises = False
        self.drains = 0
        self._drained = asyncio.Event()
        self._drained.set()

    def pause(self):
        self.paused = True
        self._drained.clear()

    def resume(self):
        self.paused = False
        self._drained.set()

    def go_away(self):
        self.gone = True
        self._drained.set()  # drain returns once the client has gone

    async def drain(self):
        self.drains += 1
        await self._drained.wait()

    def write_frame(self, frame):
        if self.raises:
            raise RuntimeError("socket exploded")
        if self.gone:
            return False
        self.frames.append(frame)
        return True

    @property
    def seqs(self):
        return [f.seq for f in self.frames]


async def outcome(*tasks):
    """What the viewers' tasks returned: they must have ended after a few loop passes
    (a regression fails here instead of hanging the test)."""
    await settle()
    assert all(task.done() for task in tasks), "a viewer task did not end"
    results = [task.result() for task in tasks]
    return results[0] if len(results) == 1 else results


async def watch(stream, sink=None):
    """Add a viewer with its own serving task, and let it reach its first wait."""
    sink = sink or FakeSink()
    viewer = stream.add_viewer(sink)
    viewer.task = asyncio.create_task(stream.serve(viewer))
    await settle()
    return viewer, sink


def new_stream(**settings):
    reg = StreamRegistry(StreamsSettings(**settings))
    return reg, reg.get_or_create("cam")


# -- names and the registry ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "camera1", "Cam_2-b", "x" * 64, "0"])
def test_good_names(name):
    assert validate_stream_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "x" * 65, "a b", "../etc", "a/b", "cam.1", "é", "cam\n", "%2e%2e", "a\x00"]
)
def test_bad_names(name):
    with pytest.raises(InvalidStreamName):
        validate_stream_name(name)


def test_registry_refuses_bad_names():
    reg = StreamRegistry(StreamsSettings())
    with pytest.raises(InvalidStreamName):
        reg.get_or_create("../etc")
    assert len(reg) == 0


def test_stream_limit():
    reg = StreamRegistry(StreamsSettings(max_concurrent=2))
    reg.get_or_create("a")
    reg.get_or_create("b")
    assert reg.get_or_create("a") is reg.get("a")
    with pytest.raises(StreamLimitReached):
        reg.get_or_create("c")
    reg.remove("a", "test")
    reg.get_or_create("c")
    assert sorted(s.name for s in reg) == ["b", "c"]


def test_viewer_limit():
    _, stream = new_stream(max_viewers=1)
    stream.add_viewer(FakeSink())
    with pytest.raises(ViewerLimitReached):
        stream.add_viewer(FakeSink())
    assert len(stream.viewers) == 1


class Recorder:
    def __init__(self):
        self.events = []

    def stream_opened(self, stream):
        self.events.append(("open", stream.name))

    def frame_published(self, stream, frame):
        self.events.append(("frame", stream.name, frame.seq))

    def stream_closed(self, stream, reason):
        self.events.append(("close", stream.name, reason))


class Broken:
    def stream_opened(self, stream):
        raise RuntimeError("boom")

    frame_published = stream_closed = lambda self, *a: (_ for _ in ()).throw(RuntimeError("x"))


def test_listeners_see_every_frame_and_broken_ones_cost_nothing():
    reg = StreamRegistry(StreamsSettings())
    seen = Recorder()
    reg.listeners += [Broken(), seen]
    stream = reg.get_or_create("cam")
    frames = [stream.publish(JPEG, INFO) for _ in range(3)]
    reg.remove("cam", "test")
    assert seen.events == [
        ("open", "cam"),
        ("frame", "cam", 1),
        ("frame", "cam", 2),
        ("frame", "cam", 3),
        ("close", "cam", "test"),
    ]
    assert [f.seq for f in frames] == [1, 2, 3]
    assert bytes(frames[0].jpeg) == JPEG
    assert frames[0].size == len(JPEG) and (frames[0].width, frames[0].height) == (32, 24)


def test_recent_is_bounded_and_counters():
    _, stream = new_stream(max_buffer_frames=4)
    for _ in range(10):
        stream.publish(JPEG, INFO)
    stats = stream.stats()
    assert stats["buffer_size"] == 4 and stats["max_buffer_frames"] == 4
    assert stats["total_frames"] == 10 and stats["bytes_in"] == 10 * len(JPEG)
    assert [r.seq for r in stream.recent] == [7, 8, 9, 10]
    assert stats["has_current_frame"] and stats["width"] == 32 and stats["height"] == 24
    assert stats["last_frame_size"] == len(JPEG)
    # Records only: no image bytes are kept for the recent frames.
    assert FrameRecord._fields == ("seq", "timestamp", "size", "width", "height")
    for record in stream.recent:
        assert isinstance(record, FrameRecord)
        assert not any(isinstance(v, (bytes, bytearray, memoryview)) for v in record)
        assert record.size == len(JPEG) and (record.width, record.height) == (32, 24)


def test_recent_frames_give_the_interval():
    now = [1000.0]
    stream = StreamRegistry(StreamsSettings(max_buffer_frames=3), clock=lambda: now[0])
    stream = stream.get_or_create("cam")
    for t in (1000.0, 1000.5, 1000.54, 1000.6):  # the first falls out of the buffer
        now[0] = t
        stream.publish(JPEG, INFO)
    frames = stream.recent_frames()
    assert [f["sequence"] for f in frames] == [2, 3, 4]
    assert frames[0]["interval_ms"] is None
    assert frames[1]["interval_ms"] == pytest.approx(40.0)
    assert frames[2]["interval_ms"] == pytest.approx(60.0)
    assert frames[0]["time"] == "1970-01-01T00:16:40.500Z"
    assert frames[2]["timestamp"] == 1000.6
    assert all(f["size"] == len(JPEG) and f["width"] == 32 and f["height"] == 24 for f in frames)


def test_inactive_seconds_uses_the_clock():
    now = [1000.0]
    stream = StreamRegistry(StreamsSettings(), clock=lambda: now[0]).get_or_create("cam")
    now[0] = 1010.0
    assert stream.inactive_seconds() == 10.0
    stream.publish(JPEG, INFO)
    now[0] = 1012.5
    assert stream.inactive_seconds() == 2.5
    assert stream.summary()["uptime_seconds"] == 12.5


# -- the fan-out engine ---------------------------------------------------------------------


def test_idle_viewer_gets_every_frame_from_publish_without_its_task_running():
    async def scenario():
        _, stream = new_stream()
        viewer, sink = await watch(stream)
        waiter = viewer.waiter
        assert waiter is not None and not waiter.done()  # parked: no frame yet
        for seq in range(1, 6):
            frame = stream.publish(JPEG, INFO)
            # No await since publish: the viewer's task cannot have run.
            assert sink.frames[-1] is frame and frame.seq == seq
        assert sink.seqs == [1, 2, 3, 4, 5]
        assert viewer.waiter is waiter and not waiter.done() and not viewer.task.done()
        assert stream.frames_pushed == 5 and stream.frames_out == 5
        assert stream.frames_dropped_slow_viewers == 0
        # A viewer joining later gets the latest frame from its own task (not pushed).
        late, late_sink = await watch(stream)
        assert late_sink.seqs == [5] and late.last_seq == 5
        assert stream.frames_pushed == 5 and stream.frames_out == 6
        stream.publish(JPEG, INFO)
        assert sink.seqs[-1] == late_sink.seqs[-1] == 6
        assert stream.frames_pushed == 7 and stream.stats()["frames_pushed"] == 7
        stream.close("done")
        return await outcome(viewer.task, late.task)

    assert run(scenario()) == [True, True]


def test_many_idle_viewers_share_one_frame():
    async def scenario():
        _, stream = new_stream()
        viewers = [await watch(stream) for _ in range(50)]
        assert all(not sink.frames for _, sink in viewers)  # nothing published: they wait
        frame = stream.publish(JPEG, INFO)
        assert all(sink.frames == [frame] for _, sink in viewers)
        assert stream.frames_pushed == stream.frames_out == 50
        stream.close("done")
        return await outcome(*(v.task for v, _ in viewers))

    assert all(run(scenario()))


def test_slow_viewer_skips_frames_then_gets_the_newest():
    async def scenario():
        _, stream = new_stream()
        fast, fast_sink = await watch(stream)
        slow, slow_sink = await watch(stream)
        stream.publish(JPEG, INFO)
        assert slow_sink.seqs == fast_sink.seqs == [1]
        slow_sink.pause()
        for seq in range(2, 7):  # publish never waits for the full sink
            frame = stream.publish(JPEG, INFO)
            assert fast_sink.frames[-1] is frame and frame.seq == seq
        assert slow_sink.seqs == [1]
        await settle()
        # The slow viewer's own task now waits for its sink to drain.
        assert slow_sink.drains == 1 and slow.sending_since > 0 and not slow.task.done()
        for _ in range(2):  # frames 7, 8 arrive while it waits
            stream.publish(JPEG, INFO)
        assert slow_sink.seqs == [1] and fast_sink.seqs == list(range(1, 9))
        assert stream.frames_dropped_slow_viewers == 0  # counted when it catches up
        slow_sink.resume()
        await settle()
        assert slow_sink.seqs == [1, 8]  # the newest frame, not the one it held
        assert slow.sending_since == 0.0 and slow.last_seq == 8
        assert stream.frames_dropped_slow_viewers == 6  # frames 2..7
        stream.publish(JPEG, INFO)  # parked again: publish hands it over
        assert slow_sink.seqs == [1, 8, 9] and fast_sink.seqs == list(range(1, 10))
        assert stream.frames_pushed == 9 + 2  # fast: all; slow: 1 and 9 (8 by its task)
        assert stream.frames_out == 9 + 3
        assert stream.frames_dropped_slow_viewers == 6
        stream.close("done")
        return await outcome(fast.task, slow.task)

    assert run(scenario()) == [True, True]


def test_gone_sink_ends_its_viewer_only():
    async def scenario():
        _, stream = new_stream()
        gone, gone_sink = await watch(stream)
        other, other_sink = await watch(stream)
        stream.publish(JPEG, INFO)
        gone_sink.gone = True
        frame = stream.publish(JPEG, INFO)
        assert other_sink.frames[-1] is frame
        await settle()
        assert gone.task.done() and gone.task.result() is False
        assert not other.task.done()
        stream.publish(JPEG, INFO)
        assert other_sink.seqs == [1, 2, 3] and gone_sink.seqs == [1]
        assert stream.frames_out == 4
        stream.close("done")
        return await outcome(other.task)

    assert run(scenario()) is True


def test_gone_sink_at_the_first_frame_ends_serve():
    async def scenario():
        _, stream = new_stream()
        stream.publish(JPEG, INFO)
        sink = FakeSink()
        sink.gone = True
        viewer, _ = await watch(stream, sink)
        return await outcome(viewer.task), stream.frames_out

    assert run(scenario()) == (False, 0)


def test_failing_sink_never_reaches_the_publisher():
    async def scenario():
        _, stream = new_stream()
        bad, bad_sink = await watch(stream)
        good, good_sink = await watch(stream)
        bad_sink.raises = True
        frame = stream.publish(JPEG, INFO)  # must not raise
        assert good_sink.frames == [frame]
        await settle()
        assert bad.task.done() and isinstance(bad.task.exception(), RuntimeError)
        assert not good.task.done()
        stream.close("done")
        return await outcome(good.task)

    assert run(scenario()) is True


def test_quiet_stream_resends_the_latest_frame_on_tick():
    async def scenario():
        _, stream = new_stream(resend_seconds=0.5)
        viewer, sink = await watch(stream)
        frame = stream.publish(JPEG, INFO)
        assert sink.frames == [frame]
        base = stream.last_wake
        stream.tick(base + 0.25)  # too early: nothing happens
        await settle()
        assert sink.frames == [frame] and viewer.waiter is not None
        stream.tick(base + 0.5)
        await settle()
        assert sink.frames == [frame, frame]  # the same frame again
        assert stream.frames_out == 2 and stream.frames_pushed == 1
        assert stream.frames_dropped_slow_viewers == 0 and viewer.last_seq == 1
        stream.tick(stream.last_wake + 0.25)  # the resend restarted the quiet period
        await settle()
        assert len(sink.frames) == 2
        assert viewer.waiter is not None and not viewer.waiter.done()  # parked again
        stream.publish(JPEG, INFO)
        assert sink.seqs == [1, 1, 2] and stream.frames_pushed == 2
        stream.close("done")
        return await outcome(viewer.task)

    assert run(scenario()) is True


def test_tick_without_a_frame_sends_nothing():
    async def scenario():
        _, stream = new_stream(resend_seconds=0.5)
        viewer, sink = await watch(stream)
        stream.tick(stream.last_wake + 10)
        await settle()
        assert sink.frames == [] and not viewer.task.done()
        assert viewer.waiter is not None  # waits again
        stream.close("done")
        return await outcome(viewer.task), stream.frames_out

    assert run(scenario()) == (True, 0)


def test_closing_ends_viewers():
    async def scenario():
        reg, stream = new_stream()
        a, _ = await watch(stream)
        b, _ = await watch(stream)
        c, c_sink = await watch(stream)
        stream.publish(JPEG, INFO)
        c_sink.pause()
        stream.publish(JPEG, INFO)
        await settle()
        assert c_sink.drains == 1  # c waits for its full sink
        reg.remove("cam", "deleted")
        assert stream.closed and reg.get("cam") is None
        await settle()
        ended = [a.task.done(), b.task.done(), c.task.done()]
        c_sink.resume()
        results = await outcome(a.task, b.task, c.task)
        # The closed stream sends c nothing more once its sink drains.
        return ended, results, c_sink.seqs

    assert run(scenario()) == ([True, True, False], [True, True, True], [1])


def test_viewer_close_ends_only_that_viewer():
    async def scenario():
        _, stream = new_stream()
        a, a_sink = await watch(stream)
        b, b_sink = await watch(stream)
        a.close()
        result_a = await outcome(a.task)
        await settle()
        still_serving = not b.task.done()
        stream.publish(JPEG, INFO)
        stream.close("done")
        return result_a, still_serving, a_sink.seqs, b_sink.seqs, await outcome(b.task)

    assert run(scenario()) == (True, True, [], [1], True)


def test_remove_viewer_counts_frames_never_delivered():
    async def scenario():
        _, stream = new_stream()
        viewer, sink = await watch(stream)
        done, _ = await watch(stream)
        stream.publish(JPEG, INFO)
        sink.pause()
        for _ in range(3):
            stream.publish(JPEG, INFO)
        await settle()
        sink.go_away()  # the client leaves while its sink is full
        assert await outcome(viewer.task) is False
        assert stream.frames_dropped_slow_viewers == 0
        stream.remove_viewer(viewer)
        assert stream.frames_dropped_slow_viewers == 3  # frames 2, 3, 4
        stream.remove_viewer(viewer)  # a second removal counts nothing
        assert stream.frames_dropped_slow_viewers == 3
        done.close()
        assert await outcome(done.task) is True
        stream.remove_viewer(done)  # got every frame: nothing to count
        assert stream.frames_dropped_slow_viewers == 3
        never = stream.add_viewer(FakeSink())  # never served: nothing to count
        stream.remove_viewer(never)
        return stream.frames_dropped_slow_viewers, len(stream.viewers)

    assert run(scenario()) == (3, 0)


def test_stalled_viewer_is_closed_by_the_registry():
    async def scenario():
        reg, stream = new_stream(viewer_stall_seconds=5)
        viewer, sink = await watch(stream)
        stream.publish(JPEG, INFO)
        sink.pause()
        stream.publish(JPEG, INFO)
        await settle()
        since = viewer.sending_since
        assert since > 0
        reg._close_stalled(stream, since + 4)  # not yet
        assert not viewer.closed
        reg._close_stalled(stream, since + 6)
        assert viewer.closed and viewer.sending_since == 0.0
        await settle()
        assert viewer.task.cancelled()
        return sink.seqs

    assert run(scenario()) == [1]


# -- MJPEG framing (robogpt_video.web.mjpeg) ------------------------------------------------


def test_part_is_built_once_with_headers():
    part = build_part(JPEG, 1700000000.5)
    head = part_head(len(JPEG), 1700000000.5)
    assert part == head + JPEG + CRLF
    text = head.decode()
    assert text.startswith("--frame\r\nContent-Type: image/jpeg\r\n")
    assert f"Content-Length: {len(JPEG)}\r\n" in text
    assert text.endswith("X-Timestamp: 1700000000.500000\r\n\r\n")


def test_wire_pieces_plain_and_chunked():
    _, stream = new_stream()
    frame = stream.publish(JPEG, INFO)
    wire = FrameWire(WriteCounters(), stream)
    part = build_part(JPEG, frame.timestamp)
    plain = wire.pieces(frame, chunked=False)
    assert b"".join(plain) == part
    chunked = wire.pieces(frame, chunked=True)
    assert b"".join(bytes(p) for p in chunked) == b"%x\r\n" % len(part) + part + b"\r\n"
    assert chunked[2] is frame.jpeg  # the JPEG itself is not copied
    assert wire.pieces(frame, chunked=False)[0] is plain[0]  # framed once per frame
    newer = stream.publish(make_jpeg(40, 30), inspect_jpeg(make_jpeg(40, 30)))
    assert b"".join(wire.pieces(newer, chunked=False)) == build_part(
        make_jpeg(40, 30), newer.timestamp
    )


def test_rest_of_the_pieces_from_any_offset():
    _, stream = new_stream()
    frame = stream.publish(JPEG, INFO)
    wire = FrameWire(WriteCounters(), stream)
    pieces = wire.pieces(frame, chunked=True)
    whole = b"".join(bytes(p) for p in pieces)
    head = len(wire.size_line)
    part = wire.part_size
    for start in (0, 1, head - 1, head, head + 1, head + part - 1, head + part, len(whole) - 1):
        assert b"".join(bytes(p) for p in _rest(pieces, start)) == whole[start:]
    assert _rest(pieces, len(whole)) == []


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="no memfd on this platform")
def test_wire_file_holds_the_chunk_and_a_newer_frame_closes_it():
    _, stream = new_stream()
    frame = stream.publish(JPEG, INFO)
    wire = FrameWire(WriteCounters(), stream)
    wire.sinks = SENDFILE_VIEWERS - 1
    assert wire.file(frame) is None  # too few viewers: not worth a memfd
    wire.sinks = SENDFILE_VIEWERS
    fd = wire.file(frame)
    assert fd is not None and wire.file(frame) == fd
    chunk = b"".join(bytes(p) for p in wire.pieces(frame, chunked=True))
    assert os.pread(fd, len(chunk) + 10, 0) == chunk
    newer = stream.publish(JPEG, INFO)
    wire.pieces(newer, chunked=True)  # a newer frame releases the old memfd
    with pytest.raises(OSError):
        os.fstat(fd)
    fd2 = wire.file(newer)
    chunk2 = b"".join(bytes(p) for p in wire.pieces(newer, chunked=True))
    assert fd2 is not None and os.pread(fd2, len(chunk2) + 10, 0) == chunk2
    wire.close()
    with pytest.raises(OSError):
        os.fstat(fd2)


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="no memfd on this platform")
def test_wires_last_leave_closes_the_memfd():
    _, stream = new_stream()
    frame = stream.publish(JPEG, INFO)
    wires = FrameWires()
    joined = [wires.join(stream) for _ in range(SENDFILE_VIEWERS)]
    wire = joined[0]
    assert all(w is wire for w in joined) and wire.sinks == SENDFILE_VIEWERS
    fd = wire.file(frame)
    assert fd is not None
    for w in joined[:-1]:
        wires.leave(stream, w)
    os.fstat(fd)  # still open while one viewer watches
    wires.leave(stream, joined[-1])
    with pytest.raises(OSError):
        os.fstat(fd)
    assert wires.join(stream) is not wire  # a fresh wire for the next viewer
