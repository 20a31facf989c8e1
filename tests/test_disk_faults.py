"""Faults against a real server: a stalled disk, a full disk, resolution flips, and
memory pressure from very large frames behind a stalled disk (docs/reliability.md).

The recordings live on a file system mounted for the test: a small tmpfs fills up
for real (ENOSPC), and an ext4 image on a loop device can be frozen with
``fsfreeze`` (every write to it blocks until it is thawed, as behind a hung disk).
Mounting needs root (CAP_SYS_ADMIN); without it these tests are skipped and say so.
Every mount is thawed and unmounted when the test ends, whatever happened.
"""

from __future__ import annotations

import math
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from bench.memory_pressure import MIB, big_jpeg
from bench.procstat import memory_kb
from helpers import make_jpeg, publish, wait_for
from recording_tools import decode, sidecars


def _run(*command: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        return subprocess.CompletedProcess(command, 127, "", f"{command[0]}: not installed")


class Mounts:
    """File systems mounted under ``tmp_path`` for one test."""

    def __init__(self, root: Path):
        self.root = root
        self.mounted: list[Path] = []
        self.frozen: set[Path] = set()

    def _mount(self, *command: str, target: Path) -> Path:
        target.mkdir(parents=True)
        done = _run(*command, str(target))
        if done.returncode:
            pytest.skip(f"cannot mount a test file system ({' '.join(command)}): "
                        f"{done.stderr.strip()} - these tests need root (CAP_SYS_ADMIN)")
        self.mounted.append(target)
        return target

    def tmpfs(self, size: str) -> Path:
        """A tmpfs of ``size`` (e.g. ``"1m"``): writes past it fail with ENOSPC."""
        return self._mount("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                           target=self.root / f"tmpfs{len(self.mounted)}")

    def resize(self, path: Path, size: str) -> None:
        done = _run("mount", "-o", f"remount,size={size}", str(path))
        assert done.returncode == 0, done.stderr

    def ext4(self, size_mb: int = 64) -> Path:
        """An ext4 image on a loop device (it can be frozen)."""
        image = self.root / f"disk{len(self.mounted)}.img"
        with open(image, "wb") as fh:
            fh.truncate(size_mb * 1024 * 1024)
        made = _run("mkfs.ext4", "-q", "-F", str(image))
        if made.returncode:
            pytest.skip(f"cannot make an ext4 image: {made.stderr.strip()}")
        return self._mount("mount", "-o", "loop", str(image),
                           target=self.root / f"ext4{len(self.mounted)}")

    def freeze(self, path: Path) -> None:
        done = _run("fsfreeze", "-f", str(path))
        assert done.returncode == 0, done.stderr
        self.frozen.add(path)

    def thaw(self, path: Path) -> None:
        if path in self.frozen:
            self.frozen.discard(path)
            done = _run("fsfreeze", "-u", str(path))
            assert done.returncode == 0, done.stderr

    def release(self) -> None:
        """Thaw and unmount everything (lazily if a process still holds a file)."""
        for path in list(self.frozen):
            _run("fsfreeze", "-u", str(path))
        self.frozen.clear()
        for path in reversed(self.mounted):
            if _run("umount", str(path)).returncode:
                _run("umount", "-l", str(path))
        self.mounted.clear()


@pytest.fixture
def mounts(tmp_path):
    """Test file systems; take it before ``start_server`` so the servers stop first."""
    found = Mounts(tmp_path)
    try:
        yield found
    finally:
        found.release()


class Publishers:
    """One thread publishing ``count`` streams round-robin, every frame kept per stream."""

    def __init__(self, url: str, names: list[str], pause: float = 0.01, size=(320, 240)):
        self.url, self.names, self.pause, self.size = url, names, pause, size
        self.sent: dict[str, list[bytes]] = {name: [] for name in names}
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            i = 0
            while not self.stop.is_set():
                for name in self.names:
                    jpeg = make_jpeg(*self.size, seed=i)
                    response = publish(self.url, name, jpeg, client)
                    if response.status_code != 200:
                        self.errors.append(response.text)
                        return
                    self.sent[name].append(jpeg)
                i += 1
                self.stop.wait(self.pause)

    def __enter__(self) -> "Publishers":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(30)

    def frames(self) -> int:
        return min(len(sent) for sent in self.sent.values())


def _health(server) -> dict:
    return httpx.get(f"{server.url}/health", timeout=10).json()


def _recording(server, name: str) -> dict:
    """The stream's recording stats (empty before its first frame)."""
    response = httpx.get(f"{server.url}/api/streams/{name}/stats", timeout=10)
    return response.json()["recording"] if response.status_code == 200 else {}


def _subsequence(part: list[bytes], whole: list[bytes]) -> bool:
    found = iter(whole)
    return all(any(item == other for other in found) for item in part)


def _close_streams(server, names) -> None:
    for name in names:
        assert httpx.delete(f"{server.url}/api/streams/{name}", timeout=10).status_code == 200


def _closed(root: Path, name: str) -> list[dict] | None:
    """Every sidecar of ``name`` once none says ``recording`` any more."""
    found = sidecars(root, name)
    return found if found and all(m["status"] != "recording" for m in found) else None


def test_a_stalled_disk_degrades_health_with_the_reason_until_writes_complete(
    mounts, start_server
):
    disk = mounts.ext4()
    server = start_server({"recording": {
        "directory": str(disk / "recordings"), "queue_frames": 20,
        "stall_seconds": 1, "health_window_seconds": 2,
    }})
    names = ["a", "b", "c"]
    with Publishers(server.url, names, pause=0.04) as publishers:
        wait_for(lambda: all(_recording(server, n).get("frames_written", 0) >= 5 for n in names),
                 what="every stream recording")
        assert _health(server)["status"] == "healthy"
        mounts.freeze(disk)
        try:
            # Each stream counts as stalled once its own oldest frame has waited
            # stall_seconds, so the count reaches 3 a little after the first.
            health = wait_for(
                lambda: (h := _health(server))["status"] == "degraded"
                and len(h["problems"]) == 2
                and any(p.endswith(" on 3 stream(s) (the disk is stalled or too slow)")
                        for p in h["problems"]) and h,
                timeout=30, what="/health degraded for both reasons on all 3 streams while frozen",
            )
            # Every stream drops once its queue is full; /health may say so sooner.
            frozen_stats = wait_for(
                lambda: (stats := {n: _recording(server, n) for n in names})
                and all(stats[n]["frames_dropped"] > 0 for n in names) and stats,
                timeout=30, what="every stream dropping while the disk is frozen",
            )
        finally:
            mounts.thaw(disk)
        stalled, dropped = sorted(health["problems"], key=lambda p: "dropped" in p)
        assert stalled.startswith("recording: no write completed for ")
        assert stalled.endswith(" on 3 stream(s) (the disk is stalled or too slow)")
        assert "recording: " in dropped and " frame(s) dropped from the disk queue in the last 2 s" in dropped
        assert all(frozen_stats[n]["frames_dropped"] > 0 for n in names)
        # Writes complete again, the window passes without drops: healthy again.
        wait_for(lambda: _health(server)["status"] == "healthy", timeout=30,
                 what="/health healthy after the thaw")
        recovered_at = publishers.frames()
        wait_for(lambda: publishers.frames() >= recovered_at + 5, what="frames after the thaw")
    assert not publishers.errors
    wait_for(lambda: all(_recording(server, n)["queue_frames"] == 0 for n in names),
             what="queues drained")
    stats = {n: _recording(server, n) for n in names}
    _close_streams(server, names)
    for name in names:
        metas = wait_for(lambda: _closed(server.recordings, name), what=f"{name} closed")
        packets = [p for m in metas for p in decode(Path(m["recording_path"])).packets]
        sent = publishers.sent[name]
        # What was kept was written once, in order, up to the last frame sent.
        assert _subsequence(packets, sent) and packets[-1] == sent[-1]
        assert len(packets) == sum(m["total_frames"] for m in metas) == stats[name]["frames_written"]
        assert sum(m["frames_dropped"] for m in metas) == stats[name]["frames_dropped"] > 0
        assert all(m["status"] == "complete" for m in metas)


def _litter(root: Path) -> list[str]:
    """Empty videos, temp files and sidecars without a video under ``root``."""
    found = [f"empty {p.name}" for p in root.rglob("*.mp4") if p.stat().st_size == 0]
    found += [f"temp {p.name}" for p in root.rglob("*.tmp")]
    found += [f"orphan {p.name}" for p in root.rglob("*.json")
              if not p.with_suffix(".mp4").exists()]
    return found


def test_a_full_disk_leaves_no_litter_and_torn_segments_are_described_once_space_returns(
    mounts, start_server
):
    disk = mounts.tmpfs("1m")
    server = start_server({"recording": {"directory": str(disk / "recordings")}})
    root = server.recordings
    names = [f"cam{i}" for i in range(8)]
    started = time.monotonic()
    with Publishers(server.url, names, pause=0.04) as publishers:
        # Every stream meets the full disk, then tries a new segment after its back-off
        # twice (1 s, then 2 s later): a file made by each try must not stay behind.
        wait_for(lambda: all(_recording(server, n).get("errors", 0) >= 3 for n in names),
                 timeout=60, what="every stream failing and retrying on the full disk")
        elapsed = time.monotonic() - started
        errors = {n: _recording(server, n)["errors"] for n in names}
        assert _litter(root) == []
        # Back-off, not a tight loop: at most one try at 0, 1, 3, 7, 15 … s after the
        # first failure, which came after the test started.
        assert max(errors.values()) <= 2 + math.log2(1 + elapsed)
        mounts.resize(disk, "32m")  # space returns: writing resumes
        resumed = publishers.frames()
        wait_for(lambda: publishers.frames() >= resumed + 10, what="frames after space returned")
        wait_for(lambda: all(_recording(server, n)["error"] is None for n in names),
                 what="every stream recording again")
        # The segments torn by the full disk say what their files hold now, not after a
        # restart: only the segment each stream is writing says "recording".
        open_now = {_recording(server, n)["segment"] for n in names}
        wait_for(lambda: all(m["status"] != "recording" or m["recording_path"] in open_now
                             for n in names for m in sidecars(root, n)),
                 what="torn segments described")
    assert not publishers.errors
    _close_streams(server, names)
    torn = 0
    for name in names:
        metas = wait_for(lambda: _closed(root, name), what=f"{name} closed")
        assert {m["status"] for m in metas} <= {"complete", "torn"}
        for meta in metas:
            video = Path(meta["recording_path"])
            got = decode(video)
            assert meta["total_frames"] == got.frames > 0
            assert meta["size_bytes"] == video.stat().st_size
            assert _subsequence(got.packets, publishers.sent[name])
            torn += meta["status"] == "torn"
    assert torn >= 1
    assert _litter(root) == []


def test_a_resolution_flip_per_frame_makes_a_bounded_number_of_segments(start_server):
    # Two robots publishing under one name: every frame has the other size.
    server = start_server({"recording": {"fps": 1000}})
    sizes = [(320, 240), (480, 360)]
    sent = [make_jpeg(*sizes[i % 2], seed=i) for i in range(40)]
    started = time.monotonic()
    with httpx.Client(timeout=10) as client:
        for jpeg in sent:
            assert publish(server.url, "shared", jpeg, client).status_code == 200
    wait_for(lambda: (r := _recording(server, "shared"))["queue_frames"] == 0
             and r["frames_written"] + r.get("frames_skipped_resolution", 0) == len(sent),
             what="every frame written or skipped")
    stats = _recording(server, "shared")
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    line = 'robogpt_video_recording_frames_skipped_resolution_total{stream="shared"} '
    [counted] = [float(row[len(line):]) for row in metrics.splitlines() if row.startswith(line)]
    assert counted == stats["frames_skipped_resolution"]
    _close_streams(server, ["shared"])
    metas = wait_for(lambda: _closed(server.recordings, "shared"), what="segments closed")
    minutes = 1 + int((time.monotonic() - started) // 60)
    assert len(metas) <= 6 * minutes  # recording.max_segments_per_minute's default
    assert len(list(server.recordings.rglob("*.mp4"))) == len(metas)
    segments = []
    for meta in metas:
        got = decode(Path(meta["recording_path"]))
        assert (got.width, got.height) == (meta["width"], meta["height"])
        assert got.frames == meta["total_frames"]
        segments.append(got.packets)
    # In publish order: segments opened within one millisecond share a start_time.
    segments.sort(key=lambda packets: sent.index(packets[0]))
    packets = [packet for segment in segments for packet in segment]
    # The first frames each opened a segment while the budget lasted; after that,
    # frames of the other size than the open segment's were skipped, and counted.
    assert packets[:6] == sent[:6] and _subsequence(packets, sent)
    assert len(packets) == stats["frames_written"]
    assert stats["frames_skipped_resolution"] == len(sent) - len(packets) > 0


def _memory_kb(server) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of the server process, in KiB."""
    return memory_kb(server.proc.pid)


def _metric(server, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and line[len(name)] in " {")


@pytest.mark.parametrize("queue_mb, reason", [
    (256, "dropped from the disk queue in the last 60 s"),  # the default cap, mostly
    (4096, "to keep the frames held within server.max_frame_memory_mb (512 MiB)"),
], ids=["default-queue-cap", "frame-budget"])
def test_ten_publishers_of_big_frames_stay_under_a_gigabyte_and_memory_returns(
    mounts, start_server, queue_mb, reason
):
    # The case: 10 publishers of 9.5 MiB frames behind a disk that takes
    # nothing (frozen). With the default queue cap, 256 MiB of them wait for the disk;
    # with a cap far above the frame budget, server.max_frame_memory_mb (512 MiB by
    # default) is what bounds the process.
    disk = mounts.ext4(size_mb=2048)
    server = start_server({
        "recording": {"directory": str(disk / "recordings"), "max_queue_mb": queue_mb},
    })
    jpeg = big_jpeg(int(9.5 * MIB), seed=1)
    names = [f"big{i}" for i in range(10)]
    idle = _memory_kb(server)["VmRSS"]
    codes: list[int] = []

    def publisher(name: str) -> None:
        with httpx.Client(timeout=60) as client:
            for _ in range(15):  # 1.4 GiB in all
                response = client.post(f"{server.url}/publish/{name}", content=jpeg,
                                       headers={"Content-Type": "image/jpeg"})
                codes.append(response.status_code)

    mounts.freeze(disk)
    try:
        threads = [threading.Thread(target=publisher, args=(n,)) for n in names]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        health = _health(server)
        peak = _memory_kb(server)["VmHWM"]
    finally:
        mounts.thaw(disk)
    assert codes == [200] * 150  # publishes are still accepted
    assert peak < 1024 * 1024, f"peak RSS {peak / 1024:.0f} MiB"
    assert any(reason in p for p in health["problems"]), health["problems"]
    assert sum(_recording(server, n)["frames_dropped"] for n in names) > 0
    wait_for(lambda: _metric(server, "robogpt_video_recording_queue_bytes") == 0,
             timeout=60, what="the queued frames written")
    _close_streams(server, names)
    assert _metric(server, "robogpt_video_frame_memory_max_bytes") == 512 * MIB
    assert _metric(server, "robogpt_video_frame_memory_bytes") == 0  # nothing held
    # The frames are let go, and the process gives the memory back (glibc keeps freed
    # heap blocks for reuse until trimmed), within a margin for what the work left.
    wait_for(lambda: _memory_kb(server)["VmRSS"] < idle + 128 * 1024, timeout=30,
             what=f"RSS back near its idle {idle / 1024:.0f} MiB")
