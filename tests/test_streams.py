import asyncio
import os

import pytest

from helpers import make_jpeg
from robogpt_video.config import StreamsSettings
from robogpt_video.errors import InvalidStreamName, StreamLimitReached, ViewerLimitReached
from robogpt_video.jpeg import inspect_jpeg
from robogpt_video.streams import StreamRegistry, build_part, validate_stream_name

JPEG = make_jpeg(32, 24)
INFO = inspect_jpeg(JPEG)


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("name", ["a", "camera1", "Cam_2-b", "x" * 64, "0"])
def test_good_names(name):
    assert validate_stream_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "x" * 65, "a b", "../etc", "a/b", "cam.1", "é", "cam\n", "%2e%2e", "a\x00"]
)
def test_bad_names(name):
    with pytest.raises(InvalidStreamName):
        validate_stream_name(name)


def test_part_is_built_once_with_headers():
    part, offset = build_part(JPEG, 1700000000.5)
    head = part[:offset].decode()
    assert head.startswith("--frame\r\nContent-Type: image/jpeg\r\n")
    assert f"Content-Length: {len(JPEG)}\r\n" in head
    assert "X-Timestamp: 1700000000.500000\r\n\r\n" in head
    assert part[offset:-2] == JPEG and part.endswith(b"\r\n")


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


def test_ring_buffer_and_counters():
    reg = StreamRegistry(StreamsSettings(max_buffer_frames=4))
    stream = reg.get_or_create("cam")
    for _ in range(10):
        stream.publish(JPEG, INFO)
    stats = stream.stats()
    assert stats["buffer_size"] == 4 and stats["total_frames"] == 10
    assert stats["bytes_in"] == 10 * len(JPEG)
    assert [f.seq for f in stream.buffer] == [7, 8, 9, 10]
    assert stats["has_current_frame"] and stats["width"] == 32


def test_stream_limit():
    reg = StreamRegistry(StreamsSettings(max_concurrent=2))
    reg.get_or_create("a")
    reg.get_or_create("b")
    assert reg.get_or_create("a") is reg.get("a")
    with pytest.raises(StreamLimitReached):
        reg.get_or_create("c")
    reg.remove("a", "test")
    reg.get_or_create("c")


def test_viewer_limit():
    stream = StreamRegistry(StreamsSettings(max_viewers=1)).get_or_create("a")
    stream.add_viewer()
    with pytest.raises(ViewerLimitReached):
        stream.add_viewer()


def test_viewer_gets_latest_and_slow_viewer_skips():
    async def scenario():
        stream = StreamRegistry(StreamsSettings()).get_or_create("cam")
        viewer = stream.add_viewer()
        stream.publish(JPEG, INFO)
        first = await stream.next_frame(viewer)
        for _ in range(5):  # the viewer is busy while five frames arrive
            stream.publish(JPEG, INFO)
        newest = await stream.next_frame(viewer)
        return first.seq, newest.seq, stream.frames_skipped

    assert run(scenario()) == (1, 6, 4)


def test_waiting_viewer_wakes_on_publish_and_many_share_one_part():
    async def scenario():
        stream = StreamRegistry(StreamsSettings()).get_or_create("cam")
        viewers = [stream.add_viewer() for _ in range(50)]
        tasks = [asyncio.create_task(stream.next_frame(v)) for v in viewers]
        await asyncio.sleep(0)
        assert not any(t.done() for t in tasks)  # no frame yet: they wait
        frame = stream.publish(JPEG, INFO)
        results = await asyncio.gather(*tasks)
        return all(r is frame for r in results)

    assert run(scenario())


def test_quiet_stream_resends_last_frame_on_tick():
    async def scenario():
        stream = StreamRegistry(StreamsSettings(resend_seconds=1)).get_or_create("cam")
        viewer = stream.add_viewer()
        frame = stream.publish(JPEG, INFO)
        assert await stream.next_frame(viewer) is frame
        task = asyncio.create_task(stream.next_frame(viewer))
        await asyncio.sleep(0)
        stream.tick(stream.last_wake + 0.5)  # too early: nothing happens
        await asyncio.sleep(0)
        early = task.done()
        stream.tick(stream.last_wake + 1.0)
        again = await task
        return early, again is frame

    assert run(scenario()) == (False, True)


def test_closing_ends_waiting_viewers():
    async def scenario():
        reg = StreamRegistry(StreamsSettings())
        stream = reg.get_or_create("cam")
        viewer = stream.add_viewer()
        task = asyncio.create_task(stream.next_frame(viewer))
        await asyncio.sleep(0)
        reg.remove("cam", "deleted")
        return await task, reg.get("cam")

    assert run(scenario()) == (None, None)


def test_viewer_close_wakes_only_that_viewer():
    async def scenario():
        stream = StreamRegistry(StreamsSettings()).get_or_create("cam")
        a, b = stream.add_viewer(), stream.add_viewer()
        ta = asyncio.create_task(stream.next_frame(a))
        tb = asyncio.create_task(stream.next_frame(b))
        await asyncio.sleep(0)
        a.close()
        result_a = await ta
        await asyncio.sleep(0)
        still_waiting = not tb.done()
        stream.publish(JPEG, INFO)
        return result_a, still_waiting, (await tb).seq

    assert run(scenario()) == (None, True, 1)


def test_inactive_seconds_uses_the_clock():
    now = [1000.0]
    stream = StreamRegistry(StreamsSettings(), clock=lambda: now[0]).get_or_create("cam")
    now[0] = 1010.0
    assert stream.inactive_seconds() == 10.0
    stream.publish(JPEG, INFO)
    now[0] = 1012.5
    assert stream.inactive_seconds() == 2.5
    assert stream.summary()["uptime_seconds"] == 12.5


def test_chunk_pieces_from_any_offset_are_the_rest_of_the_chunk():
    stream = StreamRegistry(StreamsSettings()).get_or_create("cam")
    frame = stream.publish(JPEG, INFO)
    whole = b"".join(frame.chunk_pieces())
    assert len(whole) == frame.chunk_size
    assert whole == b"%x\r\n" % len(frame.part) + frame.part + b"\r\n"
    head = len(b"%x\r\n" % len(frame.part))
    for start in (1, head - 1, head, head + 1, head + len(frame.part) - 1,
                  head + len(frame.part), frame.chunk_size - 1):
        assert b"".join(bytes(p) for p in frame.chunk_pieces(start)) == whole[start:]


def test_chunk_file_holds_the_chunk_and_release_closes_it():
    stream = StreamRegistry(StreamsSettings()).get_or_create("cam")
    frame = stream.publish(JPEG, INFO)
    assert frame.chunk_file() is None  # one viewer's worth: not worth a memfd
    frame = stream.publish(JPEG, INFO)
    frame.sendfile = True
    fd = frame.chunk_file()
    assert fd is not None and frame.chunk_file() == fd
    assert os.pread(fd, frame.chunk_size + 10, 0) == b"".join(frame.chunk_pieces())
    newer = stream.publish(JPEG, INFO)  # the previous latest is released
    with pytest.raises(OSError):
        os.fstat(fd)
    assert frame.chunk_file() is None and newer.chunk_file() is None
