"""How far behind live a viewer on a slow link falls: ``python -m bench.slow_viewer``.

One publisher sends 640x480 frames (≈42 KB) at ``--fps`` to our server; one viewer
watches ``GET /stream/<name>`` through a link of 10 KB/s, 100 KB/s and 1 MB/s:

- ``--link tc`` (the default; needs root, ``ip`` and ``tc``): the viewer runs in its
  own network namespace behind a veth pair whose server-side end is shaped by a token
  bucket (``tc qdisc … tbf``), so the server's TCP socket meets a real bottleneck.
- ``--link reader``: the viewer runs on loopback with a small SO_RCVBUF and reads only
  as many bytes as the rate allows (a slow client rather than a slow network).

For every part the viewer records its arrival time, its ``X-Timestamp`` (the server's
clock when the frame arrived there; same machine, same clock) and how many bytes it
had received so far. From those:

- lag: arrival − X-Timestamp;
- in flight: the bytes the viewer received between the frame's publication and its
  arrival (what was queued ahead of it, wherever, plus the part itself);
- frames behind: in flight / the mean part size on the wire. 1 is the floor (the part
  itself has to cross the link); the server's own queues add the rest.

Where the bytes wait is sampled on the server side five times a second with ``ss``
(the viewer's connection is the server socket that has sent the most): ``notsent``,
bytes in the server's socket not yet sent, and ``unacked``, bytes sent and not yet
acknowledged (in the link's queue, on the wire, or in the viewer's receive buffer).
What waits in the server process itself is not visible from outside.

The first seconds of each run are left out (``--warmup``, by default long enough for
the server's queues to fill at that rate); timing results are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .clients import HttpConnection, request_head
from .frames import SIZES, camera_jpeg
from .load import percentile
from .protocol import MjpegResponseReader
from .servers import REPO, BenchServer

RATES_KBPS = (10, 100, 1000)  # KB/s (1 KB = 1000 bytes)


# -- the viewer (runs in the network namespace for --link tc) ---------------------------


def run_viewer(host: str, port: int, name: str, seconds: float, read_rate: float) -> dict:
    """Watch ``/stream/<name>`` for ``seconds``; returns what arrived, and when.

    ``read_rate`` (bytes/s) > 0 reads no faster than that, with a 4 KB SO_RCVBUF.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if read_rate:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(1.0)
    sock.connect((host, port))
    sock.sendall(f"GET /stream/{name} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    reader = MjpegResponseReader()
    started = time.time()
    received = 0
    samples: list[tuple[float, int]] = [(started, 0)]  # (time, bytes received by then)
    parts: list[tuple[float, float, int]] = []  # (arrival, X-Timestamp, bytes received)
    while (now := time.time()) < started + seconds:
        want = 65536
        if read_rate:
            want = min(want, int(read_rate * (now - started)) - received)
            if want <= 0:
                time.sleep(0.01)
                continue
        try:
            data = sock.recv(want)
        except socket.timeout:
            continue
        if not data:
            break
        arrival = time.time()
        received += len(data)
        samples.append((arrival, received))
        for part in reader.feed(data):
            parts.append((arrival, float(part.headers["x-timestamp"]), received))
    sock.close()
    return {"started": started, "samples": samples, "parts": parts}


# -- the link -----------------------------------------------------------------------------


class ShapedLink:
    """A veth pair, one end in a network namespace, the other shaped with ``tbf``."""

    def __init__(self) -> None:
        tag = os.getpid() % 100000
        self.netns = f"rgv-slow-{tag}"
        self.outer, self.inner = f"rgvs{tag}a", f"rgvs{tag}b"
        net = 16 + tag % 200
        self.server_ip, self.viewer_ip = f"10.213.{net}.1", f"10.213.{net}.2"

    def _run(self, *cmd: str) -> None:
        subprocess.run(cmd, check=True, capture_output=True)

    def __enter__(self) -> "ShapedLink":
        self._run("ip", "netns", "add", self.netns)
        try:
            self._run("ip", "link", "add", self.outer, "type", "veth", "peer", "name", self.inner)
            self._run("ip", "link", "set", self.inner, "netns", self.netns)
            self._run("ip", "addr", "add", f"{self.server_ip}/30", "dev", self.outer)
            self._run("ip", "link", "set", self.outer, "up")
            inside = ("ip", "netns", "exec", self.netns)
            self._run(*inside, "ip", "addr", "add", f"{self.viewer_ip}/30", "dev", self.inner)
            self._run(*inside, "ip", "link", "set", self.inner, "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def shape(self, rate: float) -> str:
        """Limit what the server sends to ``rate`` bytes/s; returns the qdisc as tc shows it."""
        burst = max(3000, int(rate / 50))  # ≥ 2 packets, and ≥ one 20 ms tick of the rate
        self._run("tc", "qdisc", "replace", "dev", self.outer, "root", "tbf",
                  "rate", f"{int(rate * 8)}bit", "burst", str(burst), "latency", "100ms")
        shown = subprocess.run(["tc", "qdisc", "show", "dev", self.outer],
                               check=True, capture_output=True, text=True)
        return shown.stdout.strip()

    def viewer_command(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns]

    def __exit__(self, *exc) -> None:
        subprocess.run(["ip", "link", "del", self.outer], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)


class LoopbackLink:
    """No shaping: the viewer itself reads no faster than the rate (``--link reader``)."""

    server_ip = "127.0.0.1"

    def __enter__(self) -> "LoopbackLink":
        return self

    def shape(self, rate: float) -> str:
        return f"reader-limited to {rate:.0f} B/s, SO_RCVBUF 4096"

    def viewer_command(self) -> list[str]:
        return []

    def __exit__(self, *exc) -> None:
        pass


# -- where the bytes wait (server side) --------------------------------------------------

_SS_SOCKET = re.compile(r"^(\d+)\s+(\d+)\s+(\S+)\s+(\S+)")  # Recv-Q Send-Q local peer
_SS_FIELD = re.compile(r"\b(bytes_sent|notsent):(\d+)")


async def sample_queues(port: int, stop: asyncio.Event, out: list) -> None:
    """Every 0.2 s: (time, notsent, unacked) of the server's busiest socket on ``port``."""
    while not stop.is_set():
        proc = await asyncio.create_subprocess_exec(
            "ss", "-tinH", "state", "established", "sport", f"= :{port}",
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        text, _ = await proc.communicate()
        best = None
        for block in re.split(r"\n(?=\S)", text.decode()):
            head = _SS_SOCKET.match(block)
            if head is None:
                continue
            fields = dict(_SS_FIELD.findall(block))
            send_q, notsent = int(head[2]), int(fields.get("notsent", 0))
            sent = int(fields.get("bytes_sent", 0))
            if best is None or sent > best[0]:
                best = (sent, notsent, send_q - notsent)
        if best is not None:
            out.append((time.time(), best[1], best[2]))
        try:
            await asyncio.wait_for(stop.wait(), 0.2)
        except asyncio.TimeoutError:
            pass


# -- one run ------------------------------------------------------------------------------


async def _publish(host: str, port: int, name: str, jpeg: bytes, fps: float,
                   stop: asyncio.Event, first: asyncio.Event) -> int:
    conn = HttpConnection(host, port)
    head = request_head("POST", f"/publish/{name}", host,
                        {"Content-Type": "image/jpeg", "Content-Length": str(len(jpeg))})
    period, sent = 1.0 / fps, 0
    next_at = time.monotonic()
    try:
        while not stop.is_set():
            response, _ = await conn.request(head, (jpeg,))
            if response.status != 200:
                raise RuntimeError(f"publish answered {response.status}")
            sent += 1
            first.set()
            next_at = max(next_at + period, time.monotonic() - period)
            try:
                await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))
            except asyncio.TimeoutError:
                pass
    finally:
        conn.close()
    return sent


async def measure_rate(server: BenchServer, link, rate: float, fps: float, jpeg: bytes,
                       warmup: float, window: float, name: str) -> dict:
    """Publish at ``fps`` while one viewer watches through ``link`` at ``rate`` bytes/s."""
    qdisc = link.shape(rate)
    stop, first = asyncio.Event(), asyncio.Event()
    publisher = asyncio.create_task(
        _publish(server.host, server.port, name, jpeg, fps, stop, first))
    await first.wait()
    read_rate = rate if isinstance(link, LoopbackLink) else 0
    cmd = [*link.viewer_command(), sys.executable, "-m", "bench.slow_viewer", "--viewer",
           f"{server.host}:{server.port}/{name}", "--seconds", str(warmup + window),
           "--read-rate", str(read_rate)]
    proc = await asyncio.create_subprocess_exec(
        *cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    queues: list = []
    sampler = asyncio.create_task(sample_queues(server.port, stop, queues))
    out, err = await proc.communicate()
    stop.set()
    published = await publisher
    await sampler
    if proc.returncode != 0:
        raise RuntimeError(f"viewer failed: {err.decode(errors='replace')}")
    seen = json.loads(out)
    result = summarise(seen, warmup)
    begin = seen["started"] + warmup
    late = [q for q in queues if q[0] >= begin]
    if late:
        result["notsent_kb"] = _spread([q[1] / 1000 for q in late])
        result["unacked_kb"] = _spread([q[2] / 1000 for q in late])
    result.update(rate_kbps=rate / 1000, fps=fps, jpeg_bytes=len(jpeg), qdisc=qdisc,
                  published=published,
                  stall_closes=server.output().count(f"closing a viewer of {name}:"))
    return result


def summarise(seen: dict, warmup: float) -> dict:
    """Lag, bytes in flight and frames behind of the parts that arrived after ``warmup``."""
    samples, parts = seen["samples"], seen["parts"]
    times = [t for t, _ in samples]
    begin = seen["started"] + warmup
    measured = [p for p in parts if p[0] >= begin]
    if len(measured) < 2:
        last = f"{parts[-1][0] - seen['started']:.1f} s" if parts else "never"
        return {"parts": len(measured), "error": (
            f"fewer than two parts after the warm-up ({len(parts)} in all, the last at {last}, "
            f"{samples[-1][1]} bytes, until {samples[-1][0] - seen['started']:.1f} s)")}
    # The unit "one frame": bytes on the wire per part (chunk line, part head, JPEG, CRLFs).
    first_index = parts.index(measured[0])
    before = parts[first_index - 1][2] if first_index else 0
    part_bytes = (measured[-1][2] - before) / len(measured)
    elapsed = measured[-1][0] - begin
    link = (measured[-1][2] - _bytes_at(samples, times, begin)) / elapsed if elapsed > 0 else 0
    lags, flights = [], []
    for arrival, stamp, received in measured:
        lags.append(arrival - stamp)
        flights.append(received - _bytes_at(samples, times, stamp))
    behind = [f / part_bytes for f in flights]
    return {
        "parts": len(measured),
        "part_bytes": round(part_bytes),
        "link_bytes_per_s": round(link),
        "frames_per_s": round(len(measured) / elapsed, 2) if elapsed > 0 else None,
        "lag_s": _spread(lags),
        "in_flight_kb": _spread([f / 1000 for f in flights]),
        "frames_behind": _spread(behind),
    }


def _bytes_at(samples: list, times: list, t: float) -> int:
    """Bytes the viewer had received at time ``t``."""
    index = bisect.bisect_right(times, t) - 1
    return samples[index][1] if index >= 0 else 0


def _spread(values: list[float]) -> dict:
    return {"p50": round(percentile(values, 50), 3), "p95": round(percentile(values, 95), 3),
            "max": round(max(values), 3)}


def default_warmup(rate: float) -> float:
    """Long enough for ≈400 KB of queues to fill at ``rate``, and ≥ 5 s."""
    return min(60.0, max(5.0, 400e3 / rate + 5))


def default_window(rate: float) -> float:
    """Enough parts to see their spread: ≥ 10 s, ≥ ≈10 parts at ``rate``."""
    return min(60.0, max(10.0, 500e3 / rate))


def line(r: dict) -> str:
    closed = f" | closed as stalled {r['stall_closes']}×" if r.get("stall_closes") else ""
    if "error" in r:
        return f"{r['rate_kbps']:>6g} KB/s: {r['error']}{closed}"
    lag, flight, behind = r["lag_s"], r["in_flight_kb"], r["frames_behind"]
    return (
        f"{r['rate_kbps']:>6g} KB/s link (measured {r['link_bytes_per_s'] / 1000:7.1f} KB/s), "
        f"{r['part_bytes'] / 1000:.1f} KB parts, {r['frames_per_s']:5.2f} parts/s | "
        f"lag s p50 {lag['p50']:6.2f} p95 {lag['p95']:6.2f} max {lag['max']:6.2f} | "
        f"in flight KB p50 {flight['p50']:6.1f} max {flight['max']:6.1f} | "
        f"frames behind p50 {behind['p50']:5.2f} p95 {behind['p95']:5.2f} max {behind['max']:5.2f}"
        f"{_queues(r)}{closed}"
    )


def _queues(r: dict) -> str:
    if "notsent_kb" not in r:
        return ""
    notsent, unacked = r["notsent_kb"], r["unacked_kb"]
    return (f" | server socket KB: notsent p50 {notsent['p50']:.1f} max {notsent['max']:.1f}, "
            f"unacked p50 {unacked['p50']:.1f} max {unacked['max']:.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.slow_viewer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--link", choices=("tc", "reader"), default="tc")
    parser.add_argument("--rates", type=float, nargs="+", default=RATES_KBPS, help="KB/s")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--size", choices=sorted(SIZES), default="640x480")
    parser.add_argument("--warmup", type=float, help="seconds left out (default: by rate)")
    parser.add_argument("--window", type=float, help="seconds measured (default: by rate)")
    parser.add_argument("--config", type=json.loads, default={},
                        help="server config overrides as JSON, e.g. '{\"server\": {...}}'")
    parser.add_argument("--json", type=Path, help="also write every number here")
    parser.add_argument("--viewer", help=argparse.SUPPRESS)  # host:port/name (internal)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--read-rate", type=float, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.viewer:
        address, name = args.viewer.split("/", 1)
        host, port = address.rsplit(":", 1)
        json.dump(run_viewer(host, int(port), name, args.seconds, args.read_rate), sys.stdout)
        return 0
    jpeg = camera_jpeg(*SIZES[args.size])
    tmp = Path(tempfile.mkdtemp(prefix="robogpt-slow-"))
    results = []
    try:
        with ShapedLink() if args.link == "tc" else LoopbackLink() as link:
            server = BenchServer("ours", tmp / "server", record=False)
            server.host = link.server_ip
            if args.config:
                server.command = _with_config(server, args.config)
            with server:
                for index, kbps in enumerate(args.rates):
                    rate = kbps * 1000
                    warmup = args.warmup if args.warmup is not None else default_warmup(rate)
                    window = args.window if args.window is not None else default_window(rate)
                    result = asyncio.run(measure_rate(
                        server, link, rate, args.fps, jpeg, warmup, window, f"slow{index}"))
                    result.update(link=args.link, warmup_s=warmup, window_s=window)
                    results.append(result)
                    print(line(result), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


def _with_config(server: BenchServer, extra: dict):
    """``server.command`` with ``extra`` merged into the config it writes."""
    import yaml

    plain = server.command

    def command() -> list[str]:
        cmd = plain()
        path = Path(cmd[-1])
        config = yaml.safe_load(path.read_text())
        for section, values in extra.items():
            config.setdefault(section, {}).update(values)
        path.write_text(yaml.safe_dump(config))
        return cmd

    return command


if __name__ == "__main__":
    sys.exit(main())
