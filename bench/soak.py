"""``make soak``: N streams × F fps × V viewers for M minutes against one fresh server.

Every ``--interval`` seconds it samples the server (RSS, open file descriptors, frames
the recorder dropped, connections) and what the clients saw in that interval (frames
published and refused, frames viewers got, latency p50/p99, client errors), and at the
end writes a table and a chart (SVG) of the samples:

    python -m bench.soak --streams 50 --fps 30 --viewers 1 --minutes 10

Writes ``bench/SOAK.md``, ``bench/SOAK.json`` and ``bench/soak.svg`` (``--out`` moves
them). A flat RSS and fd line, zero errors and a steady p99 are what a soak should show.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

from .clients import PUBLISHERS, Counters, HttpConnection, open_viewer
from .load import _recorder_dropped, _wait_for_streams, percentile
from .procstat import cpu_seconds, memory_kb
from .scenarios import jpeg_for
from .servers import BenchServer

HERE = Path(__file__).resolve().parent


def open_fds(pid: int) -> int:
    """File descriptors ``pid`` holds open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


class Sampler:
    """Turns the running counters into one row per interval."""

    def __init__(self, server: BenchServer, c: Counters, api: HttpConnection, prefix: str):
        self.server, self.c, self.api, self.prefix = server, c, api, prefix
        self.rows: list[dict] = []
        self.started = time.monotonic()
        self._last = self._snapshot(self.started)

    def _snapshot(self, now: float) -> dict:
        c = self.c
        return {"t": now, "sent": c.sent, "accepted": c.accepted, "rejected": c.rejected,
                "received": c.received, "skipped": c.skipped, "errors": len(c.errors),
                "latencies": len(c.latencies), "cpu": cpu_seconds(self.server.proc.pid)}

    async def sample(self) -> dict:
        now = time.monotonic()
        snap = self._snapshot(now)
        last, self._last = self._last, snap
        span = snap["t"] - last["t"]
        ms = [x * 1000 for x in self.c.latencies[last["latencies"]:snap["latencies"]]]
        pid = self.server.proc.pid
        row = {
            "minute": round((now - self.started) / 60, 2),
            "rss_mb": round(memory_kb(pid).get("VmRSS", 0) / 1024, 1),
            "fds": open_fds(pid),
            "server_cores": round((snap["cpu"] - last["cpu"]) / span, 3),
            "published_fps": round((snap["accepted"] - last["accepted"]) / span, 1),
            "refused": snap["rejected"] - last["rejected"],
            "viewed_fps": round((snap["received"] - last["received"]) / span, 1),
            "skipped": snap["skipped"] - last["skipped"],
            "p50_ms": _round(percentile(ms, 50)),
            "p99_ms": _round(percentile(ms, 99)),
            "client_errors": snap["errors"] - last["errors"],
            "recorder_dropped": await _recorder_dropped(self.api, self.prefix),
        }
        self.rows.append(row)
        return row


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


async def soak(server: BenchServer, args) -> list[dict]:
    c = Counters()
    c.window.start, c.window.end = 0.0, float("inf")  # count everything, sample the deltas
    prefix = f"soak{random.randrange(1 << 20):x}"
    names = [f"{prefix}_{i}" for i in range(args.streams)]
    jpeg = jpeg_for(args.size)
    span = 1.0 / args.fps
    publisher = PUBLISHERS[args.ingest]
    tasks = [asyncio.create_task(publisher(server.host, server.port, name, jpeg, args.fps, c,
                                           random.uniform(0, span))) for name in names]
    api = HttpConnection(server.host, server.port)
    await _wait_for_streams(api, prefix, args.streams, timeout=5 + args.streams / 100)
    viewers = [await open_viewer(server.host, server.port, name, c)
               for name in names for _ in range(args.viewers)]
    sampler = Sampler(server, c, api, prefix)
    deadline = sampler.started + args.minutes * 60
    print(f"{'minute':>6} {'RSS MB':>7} {'fds':>5} {'cores':>5} {'pub/s':>7} {'view/s':>7} "
          f"{'p99 ms':>7} {'errors':>6} {'rec drop':>8}", flush=True)
    while time.monotonic() < deadline:
        await asyncio.sleep(min(args.interval, max(0.0, deadline - time.monotonic())))
        row = await sampler.sample()
        print(f"{row['minute']:6.2f} {row['rss_mb']:7.1f} {row['fds']:5d} "
              f"{row['server_cores']:5.2f} {row['published_fps']:7.1f} {row['viewed_fps']:7.1f} "
              f"{_text(row['p99_ms']):>7} {row['client_errors']:6d} "
              f"{_text(row['recorder_dropped']):>8}", flush=True)
    c.stop_at = 0.0
    await asyncio.wait(tasks, timeout=10)
    for transport in viewers:
        transport.close()
    api.close()
    if c.errors:
        print("first client errors:", *c.errors[:5], sep="\n  ")
    return sampler.rows


def _text(value) -> str:
    return "-" if value is None else f"{value:g}"


COLUMNS = [("minute", "minute"), ("rss_mb", "RSS MB"), ("fds", "fds"),
           ("server_cores", "server cores"), ("published_fps", "published/s"),
           ("refused", "refused"), ("viewed_fps", "viewed/s"), ("skipped", "skipped"),
           ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"), ("client_errors", "client errors"),
           ("recorder_dropped", "recorder dropped (total)")]


def render(meta: dict, rows: list[dict], chart: str) -> str:
    lines = [
        "# Soak",
        "",
        f"`python -m bench.soak {meta['command']}` on {meta['when']} "
        f"({meta['machine']}): {meta['streams']} streams × {meta['fps']} fps "
        f"({meta['ingest']}, {meta['size']}) × {meta['viewers']} viewer(s) each, "
        f"{meta['minutes']} min, recording on. One row per {meta['interval']} s; "
        "rates are per second over the row's interval, counts are of the interval.",
        "",
        f"![RSS and p99 latency over time]({chart})",
        "",
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        lines.append("| " + " | ".join(_text(row[key]) for key, _ in COLUMNS) + " |")
    if rows:
        rss = [r["rss_mb"] for r in rows]
        lines += ["", f"RSS {min(rss):g}–{max(rss):g} MB; fds {min(r['fds'] for r in rows)}–"
                      f"{max(r['fds'] for r in rows)}; client errors "
                      f"{sum(r['client_errors'] for r in rows)}; refused publishes "
                      f"{sum(r['refused'] for r in rows)}."]
    return "\n".join(lines) + "\n"


def svg_chart(rows: list[dict], width: int = 720, height: int = 260) -> str:
    """RSS (MB) and p99 latency (ms) against minutes, as two polylines on one SVG."""
    pad = 40
    minutes = [r["minute"] for r in rows] or [0.0]
    span = max(minutes[-1], 1e-9)

    def line(key: str, colour: str) -> tuple[str, float]:
        values = [r[key] for r in rows if r[key] is not None]
        top = max(values, default=1.0) * 1.1 or 1.0
        points = " ".join(
            f"{pad + (r['minute'] / span) * (width - 2 * pad):.1f},"
            f"{height - pad - (r[key] / top) * (height - 2 * pad):.1f}"
            for r in rows if r[key] is not None
        )
        return f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>', top

    rss, rss_top = line("rss_mb", "#1f77b4")
    p99, p99_top = line("p99_ms", "#d62728")
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">'
        f'<rect width="100%" height="100%" fill="white"/>'
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#888"/>'
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#888"/>'
        f'<text x="{pad}" y="{pad - 10}" fill="#1f77b4">RSS MB (top {rss_top:.0f})</text>'
        f'<text x="{width - pad}" y="{pad - 10}" fill="#d62728" text-anchor="end">'
        f'p99 ms (top {p99_top:.0f})</text>'
        f'<text x="{width / 2}" y="{height - 8}" text-anchor="middle">minutes '
        f'(0–{span:.1f})</text>{rss}{p99}</svg>\n'
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--fps", type=float, default=30)
    parser.add_argument("--viewers", type=int, default=1, help="per stream")
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--interval", type=float, default=30, help="seconds between rows")
    parser.add_argument("--ingest", choices=sorted(PUBLISHERS), default="post")
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--out", type=Path, default=HERE, help="folder for SOAK.md/json/svg")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        with BenchServer("ours", Path(tmp) / "server") as server:
            rows = asyncio.run(soak(server, args))
    meta = {
        "command": " ".join(f"--{k} {v}" for k, v in (
            ("streams", args.streams), ("fps", args.fps), ("viewers", args.viewers),
            ("minutes", args.minutes), ("interval", args.interval), ("ingest", args.ingest))),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} cores, {platform.python_implementation()} "
                   f"{platform.python_version()}",
        **{k: getattr(args, k) for k in ("streams", "fps", "viewers", "minutes", "interval",
                                         "ingest", "size")},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.svg").write_text(svg_chart(rows))
    (args.out / "SOAK.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (args.out / "SOAK.md").write_text(render(meta, rows, "soak.svg"))
    print(f"wrote {args.out / 'SOAK.md'}")


if __name__ == "__main__":
    main()
