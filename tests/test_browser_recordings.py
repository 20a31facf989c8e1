"""The recordings page (#/recordings) in a real headless Chromium, against a real server
that recorded two streams published over HTTP, one of them with a gap."""

from __future__ import annotations

from datetime import datetime, timezone

import httpx
import pytest

from browser import Chromium, headless_chromium
from helpers import wait_for
from test_browser import PAGE_JS

LONG = "warehouse_north_loading_dock_overhead_camera_02"  # a long file name
CONFIG = {
    # A publisher that stops for a second closes its segment: the next one starts a new
    # file, and the timeline shows the gap between them.
    "recording": {"idle_close_seconds": 1, "segment_seconds": 600},
    "streams": {"timeout_seconds": 600},
}
PLAYER = "document.getElementById('rv-frame')"


@pytest.fixture
def browser(tmp_path):
    with headless_chromium(tmp_path / "chrome") as chrome:
        yield chrome


def _recordings(url: str, stream: str) -> list[dict]:
    answer = httpx.get(f"{url}/api/recordings", params={"stream": stream}, timeout=10)
    return sorted(answer.json()["recordings"], key=lambda r: r["start_time"])


def _frames_written(url: str, stream: str) -> int:
    answer = httpx.get(f"{url}/api/streams/{stream}/stats", timeout=10)
    recording = answer.json().get("recording") if answer.status_code == 200 else None
    return recording["frames_written"] if recording else 0  # no frame yet


def _record(start_server, publishers):
    """cam_a: a finished segment of ≥ 3 s, a gap, then a second segment being written;
    LONG: one segment being written. Returns the server and cam_a's two entries."""
    server = start_server(CONFIG)
    first = publishers(server.url, "cam_a", fps=10)
    publishers(server.url, LONG, fps=10)
    wait_for(lambda: _frames_written(server.url, "cam_a") >= 35, timeout=30,
             what="3.5 s of cam_a recorded")
    first.stop()
    wait_for(lambda: [r["status"] for r in _recordings(server.url, "cam_a")] == ["complete"],
             what="cam_a's first segment closed after the publisher stopped")
    publishers(server.url, "cam_a", fps=10)
    written = _frames_written(server.url, "cam_a")
    wait_for(lambda: len(_recordings(server.url, "cam_a")) == 2
             and _frames_written(server.url, "cam_a") >= written + 10,
             what="cam_a's second segment with a second of frames")
    return server, _recordings(server.url, "cam_a")


def _open_page(browser: Chromium, url: str, rows: int) -> None:
    browser.goto(f"{url}/#/recordings")
    browser.js(PAGE_JS)
    browser.wait_for(f"document.querySelectorAll('#rv-table tbody tr').length === {rows}")


def _click(browser: Chromium, selector: str) -> None:
    """A real mouse click (pointer events and all) in the middle of an element."""
    box = browser.js(f"(() => {{ const r = document.querySelector({selector!r})"
                     ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
    for kind in ("mousePressed", "mouseReleased"):
        browser.page("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left",
                     clickCount=1)


def _offset(browser: Chromium) -> float:
    return browser.js("player.offset")


def test_recordings_page_lists_filters_and_plays(start_server, publishers, browser):
    server, (done, later) = _record(start_server, publishers)
    # One time zone for the whole page, named: Tokyo here (UTC+9, no DST).
    browser.page("Emulation.setTimezoneOverride", timezoneId="Asia/Tokyo")
    _open_page(browser, server.url, rows=3)
    assert browser.js("document.getElementById('rv-zone').textContent") == "Asia/Tokyo (UTC+09:00)"
    assert "Asia/Tokyo (UTC+09:00)" in browser.js("document.getElementById('zone').textContent")

    # Every recording of both streams, then only cam_a's once the filter says so.
    rows = "[...document.querySelectorAll('#rv-table tbody tr')]"
    assert sorted(browser.js(f"{rows}.map((r) => r.dataset.stream)")) == ["cam_a", "cam_a", LONG]
    row = f"document.querySelector('#rv-table tr[data-file=\"{done['file']}\"]')"
    start = datetime.fromisoformat(done["start_time"].replace("Z", "+00:00"))
    tokyo = datetime.fromtimestamp(start.timestamp() + 9 * 3600, timezone.utc)
    assert browser.js(f"{row}.cells[2].textContent") == tokyo.strftime("%Y-%m-%d %H:%M:%S")
    browser.js("{ const s = document.getElementById('rv-stream'); s.value = 'cam_a';"
               " s.dispatchEvent(new Event('change')); }")
    browser.wait_for(f"{rows}.length === 2")
    assert browser.js(f"{rows}.map((r) => r.dataset.file)") == [later["file"], done["file"]]

    # The timeline: cam_a's two segments as two spans with a gap between them.
    spans = "[...document.querySelectorAll('.tl-bar[data-stream=cam_a] .tl-span')]"
    browser.wait_for(f"{spans}.length === 2")
    left, right = browser.js(f"{spans}.map((s) => s.getBoundingClientRect())"
                             ".map((r) => [r.left, r.right]).sort((a, b) => a[0] - b[0])")
    assert left[1] < right[0] - 2, "no visible gap between the two segments"

    # Play from the table: the player comes into view and its frames move on.
    browser.js("window.scrollTo(0, document.body.scrollHeight)")
    browser.js(f"{row}.querySelector('button').click()")
    browser.wait_for(f"{PLAYER}.naturalWidth === 320")
    top, bottom, height = browser.js("(() => { const r = document.getElementById('rv-player')"
                                     ".getBoundingClientRect(); return [r.top, r.bottom, innerHeight]; })()")
    assert 0 <= top < height / 2 and bottom > 0, (top, bottom, height)
    browser.js(f"window.first = [player.offset, signature({PLAYER})]")
    browser.wait_for(f"player.offset > first[0] && signature({PLAYER}) !== first[1]")
    assert browser.js("player.url").startswith(done["play_url"] + "?start=0&speed=1")

    # Pause: the request ends and the picture stays; frame steps move one frame.
    browser.js("document.getElementById('rv-toggle').click()")
    browser.wait_for("!player.playing && player.controller === null && player.next !== null")
    paused = browser.js("[player.offset, player.frames, signature(document.getElementById('rv-frame'))]")
    # Nothing arrives while paused: observed over 0.6 s of the page's clock.
    browser.js("new Promise((resolve) => setTimeout(resolve, 600))")
    assert browser.js(f"[player.offset, player.frames, signature({PLAYER})]") == paused
    assert browser.js("document.getElementById('rv-toggle').textContent") == "Play"
    expected = float(browser.js("player.next"))
    browser.js("document.getElementById('rv-forward').click()")
    browser.wait_for(f"player.offset === {expected!r}")
    browser.wait_for(f"signature({PLAYER}) !== {paused[2]}")
    browser.js("document.getElementById('rv-back').click()")
    browser.wait_for(f"player.offset === {paused[0]!r}")
    browser.wait_for(f"signature({PLAYER}) === {paused[2]}")

    # Seek (paused): the frame at that time.
    browser.js("{ const b = document.getElementById('rv-seek'); b.value = '1.05';"
               " b.dispatchEvent(new Event('change')); }")
    browser.wait_for("player.offset <= 1.05 && player.offset > 0.5 && player.next !== null")

    # Speed: the recorded time advances faster per moment of the page's clock at 4×
    # than at ¼× (a ratio of rates, not a duration).
    def rate(speed: str, frames: int) -> float:
        browser.js("{ const v = document.getElementById('rv-speed');"
                   f" v.value = '{speed}'; v.dispatchEvent(new Event('change')); player.trace = []; }}")
        assert browser.js("player.url").endswith(f"&speed={speed}")
        browser.wait_for(f"player.trace.length >= {frames}", timeout=20)
        return browser.js("(() => { const t = player.trace, a = t[0], b = t[t.length - 1];"
                          " return (b[1] - a[1]) / (b[0] - a[0]); })()")

    browser.js("document.getElementById('rv-toggle').click()")  # play on from there
    browser.wait_for("player.playing && player.frames > 0")
    slow = rate("0.25", 4)
    fast = rate("4", 6)
    assert fast > 2 * slow, (fast, slow)

    # Jump to a wall-clock time: the second segment, which covers it.
    later_start = datetime.fromisoformat(later["start_time"].replace("Z", "+00:00")).timestamp()
    browser.js(f"document.getElementById('rv-jump-at').value = inputValue({later_start + 0.5});"
               "document.getElementById('rv-jump').requestSubmit()")
    browser.wait_for(f"player.rec.file === {later['file']!r} && player.frames > 0")
    assert browser.js("player.url").startswith(later["play_url"] + "?start=0.5")
    download = browser.js("document.getElementById('rv-download').getAttribute('href')")
    assert download == later["download_url"]
    assert httpx.head(server.url + download).headers["content-type"] == "video/mp4"

    # A click on the first span of the timeline plays that segment from where it was hit.
    browser.js("window.scrollTo(0, 0)")
    first_span = f".tl-bar[data-stream=cam_a] .tl-span[data-file=\"{done['file']}\"]"
    _click(browser, first_span)
    browser.wait_for(f"player.rec.file === {done['file']!r}")
    assert 0.5 < float(browser.js("new URLSearchParams(player.url.split('?')[1]).get('start')")) < 4.5

    # A drag along a bar chooses a clip's stream and range.
    browser.js("window.scrollTo(0, 0)")  # opening the recording brought the player into view
    bar = browser.js(f"(() => {{ const r = document.querySelector('{first_span}')"
                     ".getBoundingClientRect(); return [r.left, r.right, r.top + r.height / 2]; })()")
    for kind, x in (("mousePressed", bar[0] + 1), ("mouseMoved", bar[0] + 20),
                    ("mouseReleased", bar[1] - 1)):
        browser.page("Input.dispatchMouseEvent", type=kind, x=x, y=bar[2], button="left",
                     buttons=1 if kind == "mouseMoved" else 0, clickCount=1)
    browser.wait_for("document.getElementById('rv-clip-start').value !== ''")
    assert browser.js("document.getElementById('rv-clip-stream').value") == "cam_a"
    chosen = browser.js("[fromInput(document.getElementById('rv-clip-start').value),"
                        " fromInput(document.getElementById('rv-clip-end').value)]")
    assert chosen[1] - chosen[0] > 1
    assert abs(chosen[0] - start.timestamp()) < 1

    # Back to the grid: the page lets go of the replay.
    browser.js("location.hash = '#/'")
    browser.wait_for("document.getElementById('recordings-view').hidden && !player.playing")


def test_long_file_names_wrap_between_words_on_a_phone(start_server, publishers, browser):
    server = start_server(CONFIG)
    publishers(server.url, LONG, fps=10)
    publishers(server.url, "cam_a", fps=10)
    wait_for(lambda: len(_recordings(server.url, LONG)) == 1
             and len(_recordings(server.url, "cam_a")) == 1, what="both streams recorded")
    browser.page("Emulation.setDeviceMetricsOverride", width=390, height=844,
                 deviceScaleFactor=2, mobile=True)
    _open_page(browser, server.url, rows=2)
    assert browser.js("document.documentElement.scrollWidth") <= 390
    overflow = browser.js("[...document.querySelectorAll('#rv-table td')]"
                          ".filter((td) => td.scrollWidth > td.clientWidth).length")
    assert overflow == 0
    # Each piece between the breaks is one line: the name wrapped only at "_", "-", ".".
    lines = browser.js("""(() => {
      const cell = document.querySelector('#rv-table tr[data-stream=%s] td:nth-child(2) .file-name');
      const counts = [...cell.childNodes].filter((n) => n.nodeType === 3).map((n) => {
        const range = document.createRange(); range.selectNodeContents(n);
        return new Set([...range.getClientRects()].map((r) => Math.round(r.top))).size;
      });
      const range = document.createRange(); range.selectNodeContents(cell);
      return [counts, new Set([...range.getClientRects()].map((r) => Math.round(r.top))).size];
    })()""" % LONG)
    pieces, whole = lines
    assert pieces and all(count == 1 for count in pieces), pieces
    assert whole >= 2  # it did wrap, between pieces
    table = browser.js("document.getElementById('rv-table').getBoundingClientRect().right")
    assert table <= 390


def test_a_recording_exports_as_an_h264_clip_that_plays(start_server, publishers, browser):
    """Needs the clip API (POST /api/clips, GET /api/clips/<id>, /api/clips/<id>.mp4)."""
    server = start_server(CONFIG)
    pub = publishers(server.url, "cam_a", fps=10)
    wait_for(lambda: _frames_written(server.url, "cam_a") >= 20, what="2 s of cam_a recorded")
    pub.stop()
    wait_for(lambda: [r["status"] for r in _recordings(server.url, "cam_a")] == ["complete"],
             what="cam_a's segment closed")
    [done] = _recordings(server.url, "cam_a")
    _open_page(browser, server.url, rows=1)
    browser.js("document.querySelector('#rv-table tbody tr button[aria-label^=Export]').click()")
    clip = "document.querySelector('#rv-clips li')"
    browser.wait_for(f"{clip} && {clip}.dataset.status === 'ready'", timeout=60)
    video = f"{clip}.querySelector('video')"
    browser.wait_for(f"{video}.readyState >= 1 && {video}.videoWidth === 320", timeout=20)
    assert browser.js(f"{video}.duration") > 1
    href = browser.js(f"{clip}.querySelector('a[download]').getAttribute('href')")
    assert href.startswith("/api/clips/") and href.endswith(".mp4")
    head = httpx.head(server.url + href, timeout=10)
    assert head.status_code == 200 and head.headers["content-type"] == "video/mp4"
    job = httpx.get(f"{server.url}/api/clips/{browser.js(f'{clip}.dataset.id')}").json()
    assert job["stream"] == "cam_a" and job["status"] == "ready"
    assert job["start"] == pytest.approx(
        datetime.fromisoformat(done["start_time"].replace("Z", "+00:00")).timestamp(), abs=1e-3)
    # The clip form (what a drag on the timeline fills in): a second, shorter clip.
    browser.js(f"document.getElementById('rv-clip-start').value = inputValue({job['start'] + 0.5});"
               f"document.getElementById('rv-clip-end').value = inputValue({job['start'] + 1.5});"
               "document.getElementById('rv-clip-form').requestSubmit()")
    browser.wait_for("document.querySelectorAll('#rv-clips li').length === 2")
    browser.wait_for(f"{clip}.dataset.status === 'ready'", timeout=60)
    second = httpx.get(f"{server.url}/api/clips/{browser.js(f'{clip}.dataset.id')}").json()
    assert (second["start"], second["end"]) == pytest.approx(
        (job["start"] + 0.5, job["start"] + 1.5), abs=2e-3)
