"""Frames through Redis pub/sub: CPU per frame of each way to send and receive them.

    python -m bench.redis_bus [--frames 2000] [--runs 3] [--size 49152]

Starts Debian's ``redis-server`` on a unix socket in a temporary directory (``--port 0``:
no TCP, so no port race) and, per run, for each receiver:

* one receiver process subscribes to ``rv:frames:bench`` and takes ``--frames`` frames;
  it reports its own CPU time (``time.process_time``) from its first frame to its last,
  divided by the frames in between;
* this process publishes the frames with redis-py's asyncio client, pipelined in
  batches of 50, and reports its own CPU per frame;
* Redis's CPU per frame is read from ``/proc/<pid>/stat`` (utime + stime) around the run.

Receivers:

* ``redis-py``: ``redis.asyncio`` ``PubSub.listen()`` with hiredis made unimportable in
  that process, so redis-py uses its pure-Python parser (its documented default without
  hiredis);
* ``redis-py+hiredis``: the same, with ``hiredis`` installed (redis-py picks it itself);
* ``hiredis.Reader``: an ``asyncio.Protocol`` on a unix connection that sends SUBSCRIBE
  itself and feeds ``hiredis.Reader`` (its public API) from ``data_received``.

The machine's cores are shared: compare numbers within one run, and repeat runs.
Output buffer limits for pub/sub are lifted in this Redis so that a receiver slower than
the publisher is measured, not disconnected.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHANNEL = b"rv:frames:bench"
RECEIVERS = ("redis-py", "redis-py+hiredis", "hiredis.Reader")
BATCH = 50


def redis_cpu(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_redis(directory: Path) -> tuple[subprocess.Popen, Path]:
    sock = directory / "redis.sock"
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--unixsocket", str(sock), "--save", "",
         "--appendonly", "no", "--client-output-buffer-limit", "pubsub 0 0 0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not sock.exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError("redis-server did not start")
        time.sleep(0.02)
    return proc, sock


# -- receivers (run in a child process) ----------------------------------------------------


async def receive_redis_py(sock: str, frames: int, ready: Path) -> tuple[float, int]:
    import redis.asyncio as redis

    client = redis.Redis(unix_socket_path=sock)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(CHANNEL)
    ready.touch()
    got, started, size = 0, 0.0, 0
    async for message in pubsub.listen():
        if message["type"] != "message":
            continue
        if got == 0:
            started = time.process_time()
        got += 1
        size = len(message["data"])
        if got == frames:
            break
    spent = time.process_time() - started
    await pubsub.aclose()
    await client.aclose()
    return spent, size


class _ReaderProtocol(asyncio.Protocol):
    def __init__(self, frames: int, subscribed: asyncio.Future, done: asyncio.Future):
        import hiredis

        self.reader = hiredis.Reader()
        self.frames, self.subscribed, self.done = frames, subscribed, done
        self.got, self.started, self.size = 0, 0.0, 0

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        while (reply := reader.gets()) is not False:
            if reply[0] != b"message":
                if reply[0] == b"subscribe" and not self.subscribed.done():
                    self.subscribed.set_result(None)
                continue
            if self.got == 0:
                self.started = time.process_time()
            self.got += 1
            self.size = len(reply[2])
            if self.got == self.frames and not self.done.done():
                self.done.set_result(time.process_time() - self.started)


async def receive_hiredis_reader(sock: str, frames: int, ready: Path) -> tuple[float, int]:
    loop = asyncio.get_running_loop()
    subscribed, done = loop.create_future(), loop.create_future()
    transport, protocol = await loop.create_unix_connection(
        lambda: _ReaderProtocol(frames, subscribed, done), sock
    )
    transport.write(b"*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(CHANNEL), CHANNEL))
    await subscribed  # Redis confirms the subscription before any message on it
    ready.touch()
    spent = await done
    transport.close()
    return spent, protocol.size


def child(kind: str, sock: str, frames: int, ready: str) -> None:
    if kind == "redis-py":
        sys.modules["hiredis"] = None  # type: ignore[assignment]  # import fails: pure Python
    receive = receive_hiredis_reader if kind == "hiredis.Reader" else receive_redis_py
    if kind.startswith("redis-py"):
        import redis.utils

        assert redis.utils.HIREDIS_AVAILABLE == (kind == "redis-py+hiredis"), kind
    spent, size = asyncio.run(receive(sock, frames, Path(ready)))
    print(f"{spent / (frames - 1) * 1e6:.1f} {size}", flush=True)


# -- publisher (this process) --------------------------------------------------------------


async def publish(sock: Path, frames: int, payload: bytes) -> float:
    import redis.asyncio as redis

    client = redis.Redis(unix_socket_path=str(sock))
    await client.ping()
    started = time.process_time()
    for first in range(0, frames, BATCH):
        pipe = client.pipeline(transaction=False)
        for _ in range(min(BATCH, frames - first)):
            pipe.publish(CHANNEL, payload)
        await pipe.execute()
    spent = time.process_time() - started
    await client.aclose()
    return spent / frames * 1e6


def run_one(kind: str, sock: Path, pid: int, frames: int, size: int, tmp: Path) -> dict:
    ready = tmp / f"ready-{kind}"
    ready.unlink(missing_ok=True)
    receiver = subprocess.Popen(
        [sys.executable, "-m", "bench.redis_bus", "--child", kind, str(sock), str(frames),
         str(ready)],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent,
    )
    deadline = time.monotonic() + 20
    while not ready.exists():  # the receiver is subscribed
        if receiver.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"receiver {kind} did not subscribe")
        time.sleep(0.02)
    payload = os.urandom(size)
    redis_before = redis_cpu(pid)
    publisher = asyncio.run(publish(sock, frames, payload))
    out, _ = receiver.communicate(timeout=300)
    redis_per_frame = (redis_cpu(pid) - redis_before) / frames * 1e6
    per_frame, got_size = out.split()
    assert int(got_size) == size, (kind, got_size)
    return {"receiver": kind, "receive_us": float(per_frame), "publish_us": publisher,
            "redis_us": redis_per_frame}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=48 * 1024)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, sock, frames, ready = args.child
        child(kind, sock, int(frames), ready)
        return
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is required: apt-get install redis-server")
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="redis-bus-") as name:
        tmp = Path(name)
        proc, sock = start_redis(tmp)
        try:
            for run in range(1, args.runs + 1):
                for kind in RECEIVERS:
                    row = run_one(kind, sock, proc.pid, args.frames, args.size, tmp)
                    row["run"] = run
                    results.append(row)
                    print(f"run {run} {kind:18} receive {row['receive_us']:7.1f} µs/frame  "
                          f"publish {row['publish_us']:6.1f}  redis {row['redis_us']:6.1f}",
                          flush=True)
        finally:
            proc.terminate()
            proc.wait(10)
    print(f"\n{args.frames} frames of {args.size} B per receiver per run, CPU µs per frame:")
    print("| receiver | receive (min–max) | publish, redis-py pipelined | Redis |")
    print("|---|---|---|---|")
    for kind in RECEIVERS:
        rows = [r for r in results if r["receiver"] == kind]

        def span(key: str) -> str:
            values = [r[key] for r in rows]
            return f"{min(values):.0f}–{max(values):.0f}"

        print(f"| {kind} | {span('receive_us')} | {span('publish_us')} | {span('redis_us')} |")


if __name__ == "__main__":
    main()
