"""Where the server's time goes in the headline scenario, sampled with py-spy."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from .load import Load, run_load
from .scenarios import jpeg_for
from .servers import BenchServer


def py_spy() -> str | None:
    """The py-spy executable (the ``bench`` extra installs it), if present."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def profile_headline(tmp: Path, secs: float) -> dict:
    """Sample our server during S=50×1 (a separate run: sampling costs a little CPU)."""
    exe = py_spy()
    if exe is None:
        return {"available": False, "why": "py-spy is not installed (pip install py-spy)"}
    workdir = Path(tempfile.mkdtemp(prefix="profile-", dir=tmp))
    raw = workdir / "profile.txt"
    load = Load(50, 1, seconds=secs)
    with BenchServer("ours", workdir) as server:
        spy = subprocess.Popen(
            [exe, "record", "-p", str(server.proc.pid), "-d", str(int(secs + 3)), "-r", "200",
             "--nonblocking", "-f", "raw", "-o", str(raw)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        result = asyncio.run(run_load(server, load, jpeg_for(load.size)))
        try:
            _, err = spy.communicate(timeout=secs + 20)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
    if not raw.exists():
        return {"available": False, "why": err.decode(errors="replace")[-400:]}
    return {"available": True, "load": result, **summarise(raw.read_text())}


def summarise(text: str, top: int = 15) -> dict:
    """Self time per function and per package from py-spy's raw (collapsed) output."""
    by_function: Counter = Counter()
    by_package: Counter = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        leaf = stack.split(";")[-1]
        by_function[leaf] += n
        by_package[_package(leaf)] += n
    return {
        "samples": total,
        "functions": [(name, n / total * 100) for name, n in by_function.most_common(top)] if total else [],
        "packages": [(name, n / total * 100) for name, n in by_package.most_common(10)] if total else [],
    }


def _package(frame: str) -> str:
    """``robogpt_video``, ``aiohttp``, ``starlette``, ... from ``func (path/file.py:12)``."""
    path = frame.rpartition("(")[2]
    for name in ("robogpt_video", "aiohttp", "aiohttp_asgi", "yarl", "multidict", "starlette", "fastapi", "python_multipart",
                 "multipart", "asyncio", "uvloop", "av", "simplejpeg", "logging", "threading"):
        if f"/{name}/" in path or f"{name}/" in path.split("site-packages/")[-1][: len(name) + 1]:
            return name
    return "other (" + path.split("/")[-1].split(":")[0] + ")"
