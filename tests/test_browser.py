"""The dashboard in a real headless Chromium against a real server with real publishers."""

from __future__ import annotations

import threading

import httpx
import pytest

from browser import Chromium, headless_chromium
from helpers import wait_for

# A hash of an image's pixels, drawn small: it changes when the picture changes.
SIGNATURE_JS = """
window.signature = (img) => {
  const canvas = document.createElement("canvas");
  canvas.width = 32; canvas.height = 24;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0, 32, 24);
  let hash = 0;
  for (const value of ctx.getImageData(0, 0, 32, 24).data) hash = (hash * 31 + value) >>> 0;
  return hash;
};
window.tileImg = (name) => document.querySelector(`#grid li[data-stream="${name}"] img`);
window.tileNames = () => [...document.querySelectorAll("#grid li")].map((li) => li.dataset.stream);
"""


@pytest.fixture
def browser(tmp_path):
    """A headless Chromium; it and every helper process are gone after the test."""
    with headless_chromium(tmp_path / "chrome") as chrome:
        yield chrome


def _wait_streams(url: str, names: list[str]) -> None:
    """Until the server lists exactly ``names`` with a frame each."""
    for _ in range(100):
        listed = httpx.get(f"{url}/api/streams").json()["streams"]
        if sorted(s["name"] for s in listed) == names and all(s["width"] for s in listed):
            return
        threading.Event().wait(0.1)
    raise AssertionError(f"server lists {listed}, expected {names}")


def _wait_viewers(url: str, name: str, count: int) -> None:
    """Until the server counts ``count`` viewers of ``name`` (a closed <img> takes a moment)."""
    for _ in range(100):
        viewers = httpx.get(f"{url}/api/streams/{name}/stats").json()["viewer_count"]
        if viewers == count:
            return
        threading.Event().wait(0.1)
    raise AssertionError(f"{name} has {viewers} viewers, expected {count}")


def _open_dashboard(browser: Chromium, url: str) -> None:
    browser.goto(url + "/")
    browser.js(SIGNATURE_JS)


def test_grid_shows_live_pictures_of_every_stream(start_server, publishers, browser):
    server = start_server()
    publishers(server.url, "cam_a", size=(320, 240))
    publishers(server.url, "cam_b", size=(160, 120))
    _wait_streams(server.url, ["cam_a", "cam_b"])
    _open_dashboard(browser, server.url)

    assert browser.wait_for("tileNames().length === 2 && tileNames()") == ["cam_a", "cam_b"]
    widths = "[tileImg('cam_a').naturalWidth, tileImg('cam_b').naturalWidth]"
    browser.wait_for(f"{widths}.every((w) => w > 0)")
    assert browser.js(widths) == [320, 160]
    # Few streams: each tile is a live MJPEG <img> holding one viewer connection.
    assert browser.js("tileImg('cam_a').getAttribute('src')") == "/stream/cam_a"
    listed = httpx.get(f"{server.url}/api/streams").json()["streams"]
    assert [s["viewer_count"] for s in listed] == [1, 1]
    # The pictures move: the pixels of both tiles change over time.
    browser.js("window.first = ['cam_a', 'cam_b'].map((n) => signature(tileImg(n)))")
    browser.wait_for(
        "['cam_a', 'cam_b'].every((n, i) => signature(tileImg(n)) !== first[i])", timeout=10
    )
    caption = browser.wait_for(
        "document.querySelector('#grid li[data-stream=cam_a]').innerText.includes('fps')"
        " && document.querySelector('#grid li[data-stream=cam_a]').innerText"
    )
    assert "cam_a" in caption and "320×240" in caption and "inactive" in caption
    assert browser.wait_for("document.getElementById('health-status').textContent") == "healthy"
    # Tiles are links: reachable with the keyboard, and they have alternative text.
    tiles_js = "[...document.querySelectorAll('#grid a.tile')]"
    assert browser.js(f"{tiles_js}.map((a) => a.tabIndex)") == [0, 0]
    assert browser.js("tileImg('cam_b').alt") == "Live view of cam_b"
    # Access control is off: no sign-in form, no account, no token kept.
    hidden = "['signin', 'account', 'signin-open'].every((id) => document.getElementById(id).hidden)"
    assert browser.js(hidden)
    assert browser.js("sessionStorage.length + localStorage.length") == 0
    _background_tab_lets_go_of_its_tiles(browser, server.url)


def test_a_tile_asks_for_frames_no_wider_than_it_shows(start_server, publishers, browser):
    server = start_server()
    publishers(server.url, "wide_cam", size=(640, 480))
    publishers(server.url, "narrow_cam", size=(160, 120))
    _wait_streams(server.url, ["narrow_cam", "wide_cam"])
    _open_dashboard(browser, server.url)
    browser.wait_for("tileNames().length === 2")
    browser.wait_for("tileImg('wide_cam').naturalWidth > 0 && tileImg('narrow_cam').naturalWidth > 0")
    shown = browser.js(
        "Math.ceil(tileImg('wide_cam').closest('a').clientWidth * devicePixelRatio / 160) * 160"
    )
    assert shown < 640  # the 1280-pixel window holds tiles narrower than that
    assert browser.js("tileImg('wide_cam').getAttribute('src')") == f"/stream/wide_cam?width={shown}"
    assert browser.js("tileImg('wide_cam').naturalWidth") == shown
    # A stream no wider than its tile is sent as it is.
    assert browser.js("tileImg('narrow_cam').getAttribute('src')") == "/stream/narrow_cam"
    assert httpx.get(f"{server.url}/api/streams/wide_cam/stats").json()["variants"] == 1


def _background_tab_lets_go_of_its_tiles(browser: Chromium, url: str) -> None:
    # Another tab in front: this one lets go of its MJPEG connections, then takes them again.
    other = browser.open_tab()
    browser.wait_for("document.visibilityState === 'hidden'")
    _wait_viewers(url, "cam_a", 0)
    _wait_viewers(url, "cam_b", 0)
    browser.close_tab(other)
    browser.wait_for("document.visibilityState === 'visible'")
    _wait_viewers(url, "cam_a", 1)
    browser.wait_for("tileImg('cam_a').naturalWidth === 320")


def test_streams_come_and_go_without_reload_or_reconnecting_the_others(
    start_server, publishers, browser
):
    server = start_server(
        {"streams": {"timeout_seconds": 2}, "cleanup": {"interval_seconds": 0.5}}
    )
    publishers(server.url, "cam_a")
    publishers(server.url, "cam_b")
    _wait_streams(server.url, ["cam_a", "cam_b"])
    _open_dashboard(browser, server.url)
    browser.wait_for("tileNames().length === 2 && tileImg('cam_a').naturalWidth > 0")
    # Mark the page and the two <img> elements: a reload or a rebuilt tile loses the mark.
    browser.js("window.sameDocument = true; tileImg('cam_a').kept = tileImg('cam_b').kept = true")

    extra = publishers(server.url, "cam_0")
    assert browser.wait_for("tileNames().length === 3 && tileNames()") == [
        "cam_0",
        "cam_a",
        "cam_b",
    ]
    browser.wait_for("tileImg('cam_0').naturalWidth > 0")
    extra.stop()  # the server removes it after 2 s without a frame
    browser.wait_for("tileNames().join() === 'cam_a,cam_b'", timeout=15)

    assert browser.js("window.sameDocument === true")
    assert browser.js("tileImg('cam_a').kept && tileImg('cam_b').kept")
    assert browser.js("tileImg('cam_a').getAttribute('src')") == "/stream/cam_a"
    assert httpx.get(f"{server.url}/api/streams/cam_0/stats").status_code == 404

    # Deleted while its publisher goes on: a new stream of the same name within a frame.
    # The tile's MJPEG response ended with the old one, so the tile reconnects.
    assert httpx.delete(f"{server.url}/api/streams/cam_a").status_code == 200
    browser.wait_for("tileImg('cam_a').getAttribute('src') === '/stream/cam_a?g=1'")
    browser.js("window.first = signature(tileImg('cam_a'))")
    browser.wait_for("signature(tileImg('cam_a')) !== first")
    assert browser.js("tileImg('cam_a').kept && window.sameDocument === true")


def test_many_streams_use_snapshots_not_connections(start_server, publishers, browser):
    server = start_server()
    names = [f"cam{i}" for i in range(6)]
    for name in names:
        publishers(server.url, name, size=(160, 120), fps=5)
    _wait_streams(server.url, names)
    _open_dashboard(browser, server.url)

    browser.wait_for(f"tileNames().length === {len(names)}")
    browser.wait_for("tileNames().every((n) => tileImg(n).naturalWidth === 160)")
    sources = browser.js("tileNames().map((n) => tileImg(n).getAttribute('src'))")
    assert all(src.startswith(f"/snapshot/{n}?") for src, n in zip(sources, names))
    browser.js("window.first = tileNames().map((n) => signature(tileImg(n)))")
    browser.wait_for("tileNames().every((n, i) => signature(tileImg(n)) !== first[i])")
    assert browser.js("!document.getElementById('grid-mode').hidden")
    # No tile holds an MJPEG connection, so the browser keeps connections for everything else.
    listed = httpx.get(f"{server.url}/api/streams").json()["streams"]
    assert [s["viewer_count"] for s in listed] == [0] * len(names)


def test_stream_view_shows_live_video_stats_and_plays_a_recording(
    start_server, publishers, browser
):
    server = start_server({"recording": {"segment_seconds": 1}})
    publishers(server.url, "cam", size=(320, 240))
    _wait_streams(server.url, ["cam"])
    wait_for(lambda: any(not rec["open"] for rec in httpx.get(
        f"{server.url}/api/recordings", params={"stream": "cam"}).json()["recordings"]),
        what="a finished one-second segment on disk")
    _open_dashboard(browser, server.url)
    browser.wait_for("tileNames().length === 1")

    browser.js("document.querySelector('#grid a.tile').focus()")
    browser.press("Enter", 13, "\r")  # opened from the keyboard
    browser.wait_for("location.hash === '#/stream/cam'")
    browser.wait_for("document.getElementById('sv-live').naturalWidth === 320")
    _wait_viewers(server.url, "cam", 1)  # the view's live image; the tile let go of its own
    assert browser.js("document.getElementById('sv-live').getAttribute('src')") == "/stream/cam"
    assert browser.js("document.getElementById('grid-view').hidden")
    stats = browser.wait_for(
        "document.getElementById('sv-stats').innerText.includes('Frames')"
        " && document.getElementById('sv-stats').innerText"
    )
    assert "320×240" in stats and "Recorded" in stats
    assert browser.js("document.getElementById('sv-snapshot').getAttribute('href')") == (
        "/snapshot/cam"
    )

    _play_a_finished_recording(browser, server.url)

    # The stream is deleted and its publisher creates it again: the live image reconnects.
    assert httpx.delete(f"{server.url}/api/streams/cam").status_code == 200
    browser.wait_for("document.getElementById('sv-live').src.includes('/stream/cam?t=')")
    browser.js("window.first = signature(document.getElementById('sv-live'))")
    browser.wait_for("signature(document.getElementById('sv-live')) !== first")

    # Back to the grid: the view's live image and the player let go of their connections.
    browser.js("location.hash = '#/'")
    browser.wait_for("!document.getElementById('grid-view').hidden")
    assert browser.js("document.getElementById('sv-live').src.startsWith('data:')")
    # (the grid saw the stream re-created meanwhile, so its tile asks with ?g=1)
    tile_src = browser.js("document.querySelector('#grid img').getAttribute('src')")
    assert tile_src in ("/stream/cam", "/stream/cam?g=1")
    _wait_viewers(server.url, "cam", 1)  # the tile again, alone


def _play_a_finished_recording(browser: Chromium, url: str) -> None:
    row = "document.querySelector('#recordings tr[data-status=complete]')"
    browser.wait_for(f"!!{row}", timeout=20)
    file = browser.js(f"{row}.dataset.file")
    download = browser.js(f"{row}.querySelector('a[download]').getAttribute('href')")
    assert download == f"/api/recordings/cam/{file}"
    assert httpx.head(url + download).headers["content-type"] == "video/mp4"
    browser.js(f"{row}.querySelector('button').click()")
    player = "document.getElementById('player-img')"
    browser.wait_for(f"!document.getElementById('player').hidden && {player}.naturalWidth === 320")
    assert f"/api/recordings/cam/{file}/play" in browser.js(f"{player}.src")


def test_page_and_assets_are_served_from_the_package(server):
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/ui/app.js" defer></script>' in page.text
    for asset, media in (("app.js", "javascript"), ("app.css", "text/css")):
        response = httpx.get(f"{server.url}/ui/{asset}")
        assert response.status_code == 200 and media in response.headers["content-type"]
    missing = httpx.get(server.url + "/ui/nope.js")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
