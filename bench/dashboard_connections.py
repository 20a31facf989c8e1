"""The dashboard with many live tiles: frames each tile draws, over one WebSocket.

    python -m bench.dashboard_connections [--streams 16] [--fps 30] [--seconds 10]

Publishes N streams at F frames a second (320x240 camera-like JPEGs, one WebSocket
publisher each), opens the dashboard in headless Chromium with a window tall enough to
show every tile, and prints, over the measured seconds: frames each tile drew a second
(the page counts them, ``data-frames``), the page's JavaScript heap, the server's CPU (all its threads, from
/proc), the page's WebSockets and HTTP picture requests, and how long
``fetch('/health')`` from the page takes (the browser's connections are not used up).
Needs ``chromium``. Results: docs/dashboard.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from websockets.sync.client import connect

from .frames import camera_jpeg
from .procstat import cpu_seconds
from .servers import REPO, BenchServer

sys.path.insert(0, str(REPO / "tests"))
from browser import Chromium, find_chromium  # noqa: E402  (the tests' CDP driver)

FRAMES_JS = ("Object.fromEntries([...document.querySelectorAll('#grid li')].map((li) => "
             "[li.dataset.stream, Number(li.querySelector('.media').dataset.frames || 0)]))")
PICTURES_JS = ("performance.getEntriesByType('resource').filter((e) => "
               "/[/](stream|snapshot)[/]/.test(e.name)).length")
FETCH_JS = """(async () => {
  const started = performance.now();
  await fetch("/health", { cache: "no-store" });
  return Math.round(performance.now() - started);
})()"""


def _publish(url: str, name: str, fps: float, stop: threading.Event) -> None:
    jpeg = camera_jpeg(320, 240, seed=hash(name) % 100)
    with connect(f"{url.replace('http', 'ws')}/ws/publish/{name}") as ws:
        step = 1 / fps
        due = time.monotonic()
        while not stop.is_set():
            ws.send(jpeg)
            due += step
            stop.wait(max(0.0, due - time.monotonic()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--fps", type=float, default=30)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    executable = find_chromium()
    if executable is None:
        sys.exit("chromium is required: apt-get install chromium")
    with tempfile.TemporaryDirectory() as tmp:
        with BenchServer("ours", Path(tmp) / "srv", record=False) as server:
            _run(server, Path(tmp), executable, args)


def _run(server: BenchServer, tmp: Path, executable: str, args) -> None:
    url = f"http://{server.host}:{server.port}"
    stop = threading.Event()
    names = [f"cam{i:02d}" for i in range(args.streams)]
    threads = [threading.Thread(target=_publish, args=(url, name, args.fps, stop))
               for name in names]
    for thread in threads:
        thread.start()
    try:
        browser = Chromium(tmp / "chrome", executable)
        try:
            rows = -(-args.streams // 4)  # 4 tiles a row at 1280 px
            browser.page("Emulation.setDeviceMetricsOverride", width=1280,
                         height=120 + rows * 300, deviceScaleFactor=1, mobile=False)
            browser.goto(url + "/")
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                drawn = browser.js(FRAMES_JS)
                if len(drawn) == args.streams and all(drawn.values()):
                    break
                time.sleep(0.2)
            time.sleep(1)  # settled
            _measure(browser, server, url, args)
        finally:
            browser.close()
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def _frames(url: str, names: list[str]) -> tuple[int, int]:
    """Frames published and frames sent to viewers, over every stream."""
    stats = [httpx.get(f"{url}/api/streams/{name}/stats").json() for name in names]
    return sum(s["total_frames"] for s in stats), sum(s["frames_out"] for s in stats)


def _measure(browser: Chromium, server: BenchServer, url: str, args) -> None:
    pids = server.pids()
    names = sorted(browser.js(FRAMES_JS))
    before = time.monotonic()
    in0, out0 = _frames(url, names)
    ta = (before + time.monotonic()) / 2  # when the counters were read, about
    cpu0 = sum(map(cpu_seconds, pids))
    browser.page("HeapProfiler.collectGarbage")
    heap0 = browser.page("Runtime.getHeapUsage")["usedSize"]
    start, t0 = browser.js(FRAMES_JS), time.monotonic()
    time.sleep(args.seconds)
    end, t1 = browser.js(FRAMES_JS), time.monotonic()
    browser.page("HeapProfiler.collectGarbage")
    heap1 = browser.page("Runtime.getHeapUsage")["usedSize"]
    cpu = (sum(map(cpu_seconds, pids)) - cpu0) / (t1 - t0)
    before = time.monotonic()
    in1, out1 = _frames(url, names)
    span = (before + time.monotonic()) / 2 - ta
    published, sent = (in1 - in0) / span, (out1 - out0) / span
    rates = sorted((end[name] - start.get(name, 0)) / (t1 - t0) for name in end)
    streams = httpx.get(f"{url}/api/streams").json()["streams"]
    print(f"{args.streams} streams × {args.fps:g} fps (320x240) for {t1 - t0:.1f} s, "
          f"{len(end)} tiles on screen")
    print(f"  frames drawn per tile per second: median {statistics.median(rates):.1f}, "
          f"min {rates[0]:.1f}, max {rates[-1]:.1f}")
    print(f"  frames published: {published:.0f}/s, sent by the server (frames_out): "
          f"{sent:.0f}/s")
    print(f"  server CPU: {cpu * 100:.0f} % of one core (receiving the publishers' frames "
          f"included)")
    print(f"  server viewers: {sum(s['viewer_count'] for s in streams)}, page WebSockets: "
          f"{len(browser.websockets())}, HTTP picture requests: {browser.js(PICTURES_JS)}")
    print(f"  page's JavaScript heap after garbage collection: {heap0 / 1e6:.1f} MB before, "
          f"{heap1 / 1e6:.1f} MB after {sum(end.values()) - sum(start.values())} frames drawn")
    print(f"  fetch('/health') from the page: {browser.js(FETCH_JS)} ms")


if __name__ == "__main__":
    main()
