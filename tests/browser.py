"""A headless Chromium driven over the Chrome DevTools Protocol (the ``websockets`` package).

No browser download and no WebDriver: Debian's ``chromium`` package, one page, and the
few CDP calls the dashboard tests need. The browser runs in its own process group,
which is killed when the test ends, so no renderer or zygote outlives it.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from helpers import make_jpeg

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Needed as root in a container (no sandbox, no GPU); the rest keep a test browser from
# talking to Google or doing background work while it is measured.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)


def find_chromium() -> str | None:
    """The first Chromium or Chrome executable on PATH."""
    return next(filter(None, map(shutil.which, CANDIDATES)), None)


@contextlib.contextmanager
def headless_chromium(home: Path) -> Iterator["Chromium"]:
    """A browser for one test (the ``browser`` fixtures): it and every helper process
    are gone afterwards, and the test fails if one survived."""
    executable = find_chromium()
    if executable is None:
        pytest.fail("the dashboard tests need Chromium: apt-get install chromium")
    chrome = Chromium(home, executable)
    try:
        yield chrome
    finally:
        chrome.close()
    assert chrome.leftovers() == [], "browser processes survived close()"


class Chromium:
    """One headless browser with one page; ``close()`` leaves no process behind."""

    def __init__(self, home: Path, executable: str) -> None:
        self.home = Path(home)
        self.profile = self.home / "profile"
        self.profile.mkdir(parents=True, exist_ok=True)
        self._log = open(self.home / "chromium.log", "ab")
        # Crashpad handlers start in sessions of their own (outside the process group)
        # with their database under $XDG_CONFIG_HOME: keep it in ``home`` so they are
        # found by path at the end and write nothing to the real home directory.
        env = {**os.environ, "XDG_CONFIG_HOME": str(self.home / "config")}
        self.proc = subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: killed as one at the end
        )
        self._ids = itertools.count(1)
        self._stack = contextlib.ExitStack()
        self.ws = None
        try:
            url = self._devtools_url()
            self.ws = self._stack.enter_context(connect(url, max_size=None, open_timeout=10))
            target = self.call("Target.createTarget", url="about:blank")["targetId"]
            attached = self.call("Target.attachToTarget", targetId=target, flatten=True)
            self.session = attached["sessionId"]
        except BaseException:
            self.close()
            raise

    def _devtools_url(self, timeout: float = 20.0) -> str:
        # With --remote-debugging-port=0 Chromium picks a port and writes it, with the
        # browser's WebSocket path, to DevToolsActivePort in the profile.
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}")
            lines = port_file.read_text().split() if port_file.exists() else []
            if len(lines) == 2:
                return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
            time.sleep(0.05)
        raise RuntimeError(f"chromium wrote no DevToolsActivePort within {timeout}s")

    def call(self, method: str, session: str | None = None, **params) -> dict:
        """Send one CDP command and return its result (events in between are ignored)."""
        message = {"id": next(self._ids), "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        while True:
            reply = json.loads(self.ws.recv(timeout=30))
            if reply.get("id") == message["id"]:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def page(self, method: str, **params) -> dict:
        """A CDP command to the page."""
        return self.call(method, self.session, **params)

    def goto(self, url: str) -> None:
        """Navigate and wait until the document has been parsed."""
        self.page("Page.navigate", url=url)
        self.wait_for("document.readyState !== 'loading' && location.href !== 'about:blank'")

    def js(self, expression: str):
        """Evaluate JavaScript in the page (promises awaited) and return its JSON value."""
        result = self.page(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 15.0):
        """Poll ``expression`` until truthy and return it; AssertionError with the last value."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"not true within {timeout}s: {expression} (last value {value!r})")

    def press(self, key: str, code: int, text: str = "") -> None:
        """Press and release one key in the focused element, like a user would."""
        common = {"key": key, "code": key, "windowsVirtualKeyCode": code}
        self.page("Input.dispatchKeyEvent", type="keyDown", text=text, **common)
        self.page("Input.dispatchKeyEvent", type="keyUp", **common)

    def open_tab(self) -> str:
        """Open another tab in front, which hides our page; its target id."""
        return self.call("Target.createTarget", url="about:blank", background=False)["targetId"]

    def close_tab(self, target: str) -> None:
        """Close a tab from ``open_tab``; our page is in front again."""
        self.call("Target.closeTarget", targetId=target)

    def websockets(self) -> list[str]:
        """The URLs of the page's open (or opening) WebSockets, found by the JavaScript
        heap (``Runtime.queryObjects``), not by asking the page's script."""
        prototype = self.page("Runtime.evaluate", expression="WebSocket.prototype")
        found = self.page("Runtime.queryObjects",
                          prototypeObjectId=prototype["result"]["objectId"])
        listed = self.page(
            "Runtime.callFunctionOn", objectId=found["objects"]["objectId"], returnByValue=True,
            functionDeclaration="function () { return this.filter((ws) => ws.readyState <= 1)"
            ".map((ws) => ws.url); }",
        )
        return listed["result"]["value"]

    def screenshot(self, path: Path) -> Path:
        """Save a PNG of the page (for looking at it while developing or after a failure)."""
        data = self.page("Page.captureScreenshot", format="png")["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)

    def close(self) -> None:
        """Ask the browser to quit, then kill its whole process group whatever happened."""
        if self.ws is not None:
            try:
                self.call("Browser.close")
            except Exception:  # already gone, or the socket closed under the reply
                pass
            self._stack.close()
            self.ws = None
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self.proc.kill()
        self.proc.wait()
        # Renderers, zygotes, GPU/network helpers, crashpad: a killed process takes a
        # moment to die, so look again until none is left.
        deadline = time.monotonic() + 10
        while (found := self.leftovers()) and time.monotonic() < deadline:
            for pid in (int(line.split()[0]) for line in found):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        self._log.close()

    def leftovers(self) -> list[str]:
        """Running processes of this browser (its group, or naming ``home``): "pid cmdline"."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:  # exited meanwhile
                continue
            state, _ppid, pgid = stat.rsplit(")", 1)[1].split()[:3]
            if state == "Z":  # exited, waiting to be reaped by init: not running
                continue
            ours = int(pgid) == self.proc.pid and b"chrom" in cmdline  # not a reused id
            if ours or str(self.home).encode() in cmdline:
                command = cmdline[:120].replace(b"\0", b" ").decode(errors="replace")
                found.append(f"{entry.name} {command}")
        return found


class Publisher(threading.Thread):
    """Publishes changing JPEGs to one stream until stopped (with ``headers``, e.g. a
    token). A server away for a moment (restarting) is tried again at the next frame;
    ``sent`` counts the frames it accepted, ``last_status`` is its last answer."""

    def __init__(self, url: str, name: str, size=(320, 240), fps: float = 10,
                 headers: dict | None = None):
        super().__init__(daemon=True)
        self.url, self.name, self.size, self.fps = url, name, size, fps
        self.headers = headers or {}
        self.stopped = threading.Event()
        self.sent = 0
        self.last_status: int | None = None

    def run(self) -> None:
        with httpx.Client(timeout=5, headers=self.headers) as client:
            while not self.stopped.wait(1 / self.fps):
                files = {"frame": ("f.jpg", make_jpeg(*self.size, seed=self.sent), "image/jpeg")}
                try:
                    self.last_status = client.post(f"{self.url}/publish/{self.name}",
                                                   files=files).status_code
                except httpx.TransportError:
                    continue
                self.sent += self.last_status == 200

    def stop(self) -> None:
        self.stopped.set()
        self.join(10)
