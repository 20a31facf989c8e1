"""Why the dashboard shows snapshots beyond 4 streams: Chromium's 6 connections per host.

    python -m bench.dashboard_connections [--streams 8]

Publishes N streams, opens the dashboard in headless Chromium with every tile forced
to live MJPEG (``/?tiles=live``) and then to snapshots (``/?tiles=snapshot``), and
prints how many tiles show a picture, how many viewers the server counts and how long
``fetch('/health')`` from the page takes (docs/dashboard.md). Needs ``chromium``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from .frames import camera_jpeg
from .servers import REPO, BenchServer

sys.path.insert(0, str(REPO / "tests"))
from browser import Chromium, find_chromium  # noqa: E402  (the tests' CDP driver)

JPEG = {"content-type": "image/jpeg"}
SHOWN_JS = "[...document.querySelectorAll('#grid img')].filter((i) => i.naturalWidth).length"
FETCH_JS = """(async () => {
  const out = [];
  for (let i = 0; i < 3; i++) {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), 5000);
    const started = performance.now();
    try {
      await fetch(`/health?try=${i}`, { signal: abort.signal, cache: "no-store" });
      out.push(`${Math.round(performance.now() - started)} ms`);
    } catch (error) {
      out.push("stalled > 5 s");
    }
    clearTimeout(timer);
  }
  return out;
})()"""


def _publish(url: str, name: str, stop: threading.Event) -> None:
    jpeg = camera_jpeg(160, 120)
    with httpx.Client(timeout=5) as client:
        while not stop.wait(0.2):
            client.post(f"{url}/publish/{name}", content=jpeg, headers=JPEG)


def measure(browser: Chromium, url: str, mode: str) -> str:
    """One line: tiles with a picture, server viewers, fetch times, with every tile in ``mode``."""
    browser.page("Page.navigate", url=f"{url}/?tiles={mode}")
    time.sleep(4)
    shown = browser.js(SHOWN_JS)
    streams = httpx.get(f"{url}/api/streams").json()["streams"]
    viewers = sum(s["viewer_count"] for s in streams)
    fetches = ", ".join(browser.js(FETCH_JS))
    return (
        f"{mode:>8}: {shown}/{len(streams)} tiles with a picture, {viewers} server viewers, "
        f"fetch('/health'): {fetches}"
    )


def main() -> None:
    """Run both modes and print the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=8)
    args = parser.parse_args()
    executable = find_chromium()
    if executable is None:
        sys.exit("chromium is required: apt-get install chromium")
    with tempfile.TemporaryDirectory() as tmp:
        with BenchServer("ours", Path(tmp) / "srv", record=False) as server:
            _run(server, Path(tmp), executable, args.streams)


def _run(server: BenchServer, tmp: Path, executable: str, count: int) -> None:
    url = f"http://{server.host}:{server.port}"
    stop = threading.Event()
    threads = [
        threading.Thread(target=_publish, args=(url, f"cam{i}", stop)) for i in range(count)
    ]
    for thread in threads:
        thread.start()
    try:
        browser = Chromium(tmp / "chrome", executable)
        try:
            time.sleep(1)
            # Snapshots first: with live tiles the page may hold every connection, and
            # even the next navigation to this server would wait for one.
            for mode in ("snapshot", "live"):
                print(measure(browser, url, mode), flush=True)
        finally:
            browser.close()
    finally:
        stop.set()
        for thread in threads:
            thread.join()


if __name__ == "__main__":
    main()
