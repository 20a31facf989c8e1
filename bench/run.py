"""``make bench``: the standard scenarios, A/B against the Flask baseline, into REPORT.md.

Every scenario starts fresh server processes (so peak RSS is per scenario) on a free
loopback port with recording on, and is bounded in time; the whole set takes about
four minutes. Numbers from a shared 2-core machine are noisy: compare the ratios
within one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from . import cluster, report, scenarios, variants
from .load import Load
from .profile import profile_headline

HERE = Path(__file__).resolve().parent
STANDARD = [
    "s10x2", "s50x1", "s1x100", "fanout500", "ceiling", "ingest", "recording", "variants",
    "cluster", "profile",
]


def _ab(name: str, load: Load, tmp: Path, results: dict, tries: int = 1) -> None:
    pair = {kind: _best(kind, load, tmp, tries) for kind in ("ours", "baseline")}
    results[name] = pair
    o, b = pair["ours"], pair["baseline"]
    if load.count_only:
        key, label = "fanout_bytes_per_s", "fan-out bytes/s"
    else:
        key, label = "view_pct", "viewer % of frames"
    print(
        f"{name:10s} {label}: ours {report.num(o[key])} baseline {report.num(b[key])} "
        f"({report.ratio(o[key], b[key])}) | p99 ms: ours {report.num(o['p99_ms'])} "
        f"baseline {report.num(b['p99_ms'])} ({report.ratio(o['p99_ms'], b['p99_ms'], False)}) | "
        f"CPU: ours {o['server_cores']:.2f} baseline {b['server_cores']:.2f} "
        f"({report.ratio(o['server_cores'], b['server_cores'], False)} less)",
        flush=True,
    )


def _best(kind: str, load: Load, tmp: Path, tries: int) -> dict:
    """The best of ``tries`` runs of a throughput ceiling (other work on the machine can
    only lower a ceiling); every try is kept under ``tries``."""
    runs = [scenarios.measure(kind, load, tmp) for _ in range(tries)]
    best = max(runs, key=lambda r: r.get("fanout_bytes_per_s") or 0)
    if tries > 1:
        best = {**best, "tries": [r.get("fanout_bytes_per_s") for r in runs]}
    return best


def run(selected: list[str], tmp: Path, quick: bool) -> dict:
    """Run the selected scenarios; returns every measured number."""
    secs = 3.0 if quick else 5.0
    results: dict = {"meta": _meta()}
    if "s10x2" in selected:
        _ab("s10x2", Load(10, 2, seconds=secs, pinned=True), tmp, results)
    if "s50x1" in selected:
        _ab("s50x1", Load(50, 1, seconds=secs + 1, pinned=True), tmp, results)
    if "s1x100" in selected:
        _ab("s1x100", Load(1, 100, seconds=secs, pinned=True), tmp, results)
    if "fanout500" in selected:
        load = Load(1, 500, fps=120, size="1280x720", seconds=secs, warmup=1.5, count_only=True)
        _ab("fanout500", load, tmp, results, tries=2)
    if "ceiling" in selected:
        results["ceiling"] = {
            "ours": scenarios.ceiling("ours", "post", [75, 100, 125, 150, 200, 250, 300], tmp),
            "baseline": scenarios.ceiling("baseline", "post", [5, 10, 15, 20, 30, 50], tmp),
        }
        print("ceiling   ", report.ceiling_line(results["ceiling"]), flush=True)
    if "ingest" in selected:
        results["ingest"] = _ingest(tmp)
    if "recording" in selected:
        results["recording"] = _recording(tmp, secs)
    if "variants" in selected:
        results["variants"] = variants.measure(tmp, secs + 3)
        print("variants  ", variants.line(results["variants"]), flush=True)
    if "cluster" in selected:
        results["cluster"] = cluster.measure(tmp, seconds=secs + 1)
        print("cluster   ", cluster.line(results["cluster"]), flush=True)
    if "profile" in selected:
        results["profile"] = profile_headline(tmp, secs)
    return results


def _ingest(tmp: Path) -> dict:
    out: dict = {}
    for ingest in ("post", "mpjpeg", "ws"):
        for kind in ("ours", "baseline"):
            ok, why = scenarios.ingest_available(kind, ingest, tmp)
            entry: dict = {"available": ok, "why": why}
            if ok:
                entry["single"] = scenarios.single_connection_fps(kind, ingest, tmp)
                if ingest != "post":
                    steps = [100, 200, 300, 400, 500, 600, 800]  # from 100: recording costs CPU per frame
                    entry["ceiling"] = scenarios.ceiling(kind, ingest, steps, tmp)
            out[f"{ingest}/{kind}"] = entry
            print("ingest    ", ingest, kind, report.ingest_line(entry), flush=True)
    return out


def _recording(tmp: Path, secs: float) -> dict:
    load = Load(20, viewers=0, seconds=secs)
    out = {}
    for kind in ("ours", "baseline"):
        on = scenarios.measure(kind, load, tmp, record=True)
        off = scenarios.measure(kind, load, tmp, record=False)
        out[kind] = {"on": on, "off": off}
        print("recording ", kind, report.recording_line(out[kind]), flush=True)
    return out


def _meta() -> dict:
    import os

    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m bench.run``."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--only", nargs="+", choices=STANDARD, help="run only these scenarios")
    parser.add_argument("--quick", action="store_true", help="shorter windows (noisier)")
    parser.add_argument("--out", type=Path, default=HERE / "REPORT.md")
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="robogpt-bench-"))
    try:
        results = run(args.only or STANDARD, tmp, args.quick)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results["meta"]["duration_s"] = round(time.monotonic() - started, 1)
    results["meta"]["loadavg_end"] = __import__("os").getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))
    args.out.write_text(report.render(results))
    print(f"wrote {args.out} in {results['meta']['duration_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
