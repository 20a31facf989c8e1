import os
from datetime import datetime, timezone

import pytest

from robogpt_video.errors import InvalidStreamName, NotFound
from robogpt_video.recording.store import RecordingFile, RecordingStore, parse_name

T0 = datetime(2026, 1, 21, 10, 30, 0, tzinfo=timezone.utc)


def test_segment_path_follows_the_brief(tmp_path):
    store = RecordingStore(tmp_path / "recordings")
    path = store.new_segment_path("camera1", T0)
    assert path == tmp_path / "recordings" / "camera1" / "camera1_20260121_103000.mp4"
    assert parse_name(path.name) == ("camera1", T0)


def test_same_second_gets_a_counter(tmp_path):
    store = RecordingStore(tmp_path)
    first = store.new_segment_path("cam_a", T0)
    first.write_bytes(b"x")
    second = store.new_segment_path("cam_a", T0)
    assert second.name == "cam_a_20260121_103000-1.mp4"
    assert parse_name(second.name) == ("cam_a", T0)


def test_a_path_is_reserved_when_it_is_given(tmp_path):
    """Two recorders of one stream in one folder (``serve --workers``) in the same
    second: each gets its own file, even before either has written a byte (the second
    name used to be the first again, and opening it truncated the other's segment)."""
    first, second = RecordingStore(tmp_path), RecordingStore(tmp_path)
    paths = [first.new_segment_path("cam", T0), second.new_segment_path("cam", T0)]
    assert [p.name for p in paths] == ["cam_20260121_103000.mp4", "cam_20260121_103000-1.mp4"]
    assert all(p.exists() for p in paths)


@pytest.mark.parametrize(
    "name", ["x.mp4", "cam_2026_1030.mp4", "../cam_20260121_103000.mp4", "cam_20260121_103000.avi"]
)
def test_foreign_names_do_not_parse(name):
    assert parse_name(name) is None


def test_list_and_resolve_refuse_traversal(tmp_path):
    store = RecordingStore(tmp_path)
    path = store.new_segment_path("cam", T0)
    path.write_bytes(b"data")
    store.write_sidecar(path, {"status": "complete"})
    (tmp_path / "cam" / "notes.txt").write_text("ignored")
    [rec] = store.list()
    assert rec.stream == "cam" and rec.path == path
    assert store.read_sidecar(rec) == {"status": "complete"}
    assert store.resolve("cam", path.name) == rec
    assert store.resolve("cam", rec.sidecar.name) == rec
    with pytest.raises(NotFound):
        store.resolve("cam", "notes.txt")
    with pytest.raises(InvalidStreamName):
        store.resolve("..", path.name)
    with pytest.raises(NotFound):
        store.resolve("other", path.name)


def test_delete_and_prune(tmp_path):
    store = RecordingStore(tmp_path)
    path = store.new_segment_path("cam", T0)
    path.write_bytes(b"12345")
    store.write_sidecar(path, {"a": 1})
    [rec] = store.list()
    assert store.delete(rec) >= 5
    assert store.list() == []
    assert store.remove_empty_dirs() == [tmp_path / "cam"]
    assert not (tmp_path / "cam").exists()


def test_what_is_opened_is_checked_not_only_the_name(tmp_path):
    store = RecordingStore(tmp_path / "recordings")
    path = store.new_segment_path("cam", T0)
    path.write_bytes(b"video")
    rec = store.resolve("cam", path.name)
    outside = tmp_path / "outside.mp4"
    outside.write_bytes(b"secret")
    path.unlink()
    path.symlink_to(outside)  # swapped for a link after it was resolved
    with pytest.raises(NotFound):
        store.open(rec)
    assert store.stat(rec) is None and store.read_sidecar(rec) is None
    assert store.delete(rec) == 0 and path.is_symlink() and outside.exists()


def test_a_fifo_named_like_a_recording_is_not_a_recording(tmp_path):
    store = RecordingStore(tmp_path)
    path = store.new_segment_path("cam", T0)
    path.unlink()  # reserved empty: make it a FIFO instead
    os.mkfifo(path)
    rec = RecordingFile("cam", path, T0)
    assert store.list() == []
    with pytest.raises(NotFound):  # refused at once: opening it does not wait for a writer
        store.open(rec)
    assert store.delete(rec) == 0 and path.exists()
