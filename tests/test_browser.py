"""The dashboard in a real headless Chromium against a real server with real publishers."""

from __future__ import annotations

import httpx
import pytest

from browser import Chromium, headless_chromium
from helpers import wait_for

# A hash of a canvas's pixels, drawn small: it changes when the picture changes.
PAGE_JS = """
window.signature = (source) => {
  const canvas = document.createElement("canvas");
  canvas.width = 32; canvas.height = 24;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(source, 0, 0, 32, 24);
  let hash = 0;
  for (const value of ctx.getImageData(0, 0, 32, 24).data) hash = (hash * 31 + value) >>> 0;
  return hash;
};
window.tile = (name) => document.querySelector(`#grid li[data-stream="${name}"]`);
window.tileCanvas = (name) => tile(name).querySelector("canvas");
// Frames a tile drew (the page counts them in data-frames), and their width (0: none yet).
window.frames = (name) => Number(tile(name).querySelector(".media").dataset.frames || 0);
window.tileWidth = (name) => frames(name) ? tileCanvas(name).width : 0;
window.tileStatus = (name) => tile(name).querySelector(".media").dataset.status;
window.tileNames = () => [...document.querySelectorAll("#grid li")].map((li) => li.dataset.stream);
window.svFrames = () => Number(document.getElementById("sv-media").dataset.frames || 0);
window.svCanvas = () => document.querySelector("#sv-media canvas");
// Resources the page loaded that are a live picture by HTTP (none should be).
window.pictureRequests = () => performance.getEntriesByType("resource")
  .map((e) => e.name).filter((url) => /[/](stream|snapshot)[/]/.test(url));
"""


@pytest.fixture
def browser(tmp_path):
    """A headless Chromium; it and every helper process are gone after the test."""
    with headless_chromium(tmp_path / "chrome") as chrome:
        chrome.page("Emulation.setDeviceMetricsOverride", width=1280, height=800,
                    deviceScaleFactor=1, mobile=False)
        yield chrome


def _stats(url: str, name: str) -> dict:
    return httpx.get(f"{url}/api/streams/{name}/stats", timeout=10).json()


def _wait_streams(url: str, names: list[str]) -> None:
    """Until the server lists exactly ``names`` with a frame each."""
    def listed():
        streams = httpx.get(f"{url}/api/streams", timeout=10).json()["streams"]
        return sorted(s["name"] for s in streams) == names and all(s["width"] for s in streams)

    wait_for(listed, what=f"the streams {names}")


def _wait_viewers(url: str, name: str, count: int) -> None:
    """Until the server counts ``count`` viewers of ``name``."""
    wait_for(lambda: _stats(url, name)["viewer_count"] == count,
             what=f"{count} viewer(s) of {name}")


def _open_dashboard(browser: Chromium, url: str) -> None:
    browser.goto(url + "/")
    browser.js(PAGE_JS)


def _one_socket(browser: Chromium, url: str) -> None:
    """The page's only WebSocket is /ws/view, and it loaded no picture over HTTP."""
    assert browser.websockets() == [url.replace("http://", "ws://") + "/ws/view"]
    assert browser.js("pictureRequests()") == []


def test_grid_shows_live_pictures_of_every_stream(start_server, publishers, browser):
    server = start_server()
    publishers(server.url, "cam_a", size=(320, 240))
    publishers(server.url, "cam_b", size=(160, 120))
    _wait_streams(server.url, ["cam_a", "cam_b"])
    _open_dashboard(browser, server.url)

    assert browser.wait_for("tileNames().length === 2 && tileNames()") == ["cam_a", "cam_b"]
    widths = "[tileWidth('cam_a'), tileWidth('cam_b')]"
    browser.wait_for(f"{widths}.every((w) => w > 0)")
    assert browser.js(widths) == [320, 160]
    # Both tiles draw from one WebSocket: one server viewer each, no HTTP picture.
    _one_socket(browser, server.url)
    _wait_viewers(server.url, "cam_a", 1)
    _wait_viewers(server.url, "cam_b", 1)
    # The pictures move: the pixels of both tiles change over time.
    browser.js("window.first = ['cam_a', 'cam_b'].map((n) => signature(tileCanvas(n)))")
    browser.wait_for(
        "['cam_a', 'cam_b'].every((n, i) => signature(tileCanvas(n)) !== first[i])", timeout=10
    )
    caption = browser.wait_for(
        "tile('cam_a').innerText.includes('fps') && tile('cam_a').innerText"
    )
    assert "cam_a" in caption and "320×240" in caption and "inactive" in caption
    # A recording dot, and the age of the frame shown.
    browser.wait_for("!tile('cam_a').querySelector('.rec').hidden")
    assert browser.wait_for("tile('cam_a').querySelector('.age').textContent").startswith("frame ")
    # The header counts the viewers the tiles count.
    browser.wait_for(
        "document.getElementById('viewers').textContent === '2 viewers (all streams)'")
    assert browser.js(
        "['cam_a', 'cam_b'].every((n) => tile(n).innerText.includes('· 1 viewer ·'))")
    assert browser.wait_for("document.getElementById('health-status').textContent") == "healthy"
    # Tiles are links: reachable with the keyboard, and their pictures are named.
    tiles_js = "[...document.querySelectorAll('#grid a.tile')]"
    assert browser.js(f"{tiles_js}.map((a) => a.tabIndex)") == [0, 0]
    assert browser.js("tileCanvas('cam_b').getAttribute('aria-label')") == "Live view of cam_b"
    # Access control is off: no sign-in form, no account, no token kept.
    hidden = "['signin', 'account', 'signin-open'].every((id) => document.getElementById(id).hidden)"
    assert browser.js(hidden)
    assert browser.js("sessionStorage.length + localStorage.length") == 0
    # frames_out counts what the socket sent (at least what the tile drew).
    drawn = browser.js("frames('cam_a')")
    assert _stats(server.url, "cam_a")["frames_out"] >= drawn > 0
    _background_tab_costs_nothing(browser, server.url)


def _background_tab_costs_nothing(browser: Chromium, url: str) -> None:
    # Another tab in front: this one asks for no frame (zero viewers, frames_out still),
    # then for all of them again when it is back in front.
    other = browser.open_tab()
    browser.wait_for("document.visibilityState === 'hidden'")
    _wait_viewers(url, "cam_a", 0)
    _wait_viewers(url, "cam_b", 0)
    before = _stats(url, "cam_a")["frames_out"]
    total = _stats(url, "cam_a")["total_frames"]
    wait_for(lambda: _stats(url, "cam_a")["total_frames"] >= total + 5, what="5 more frames")
    assert _stats(url, "cam_a")["frames_out"] == before
    browser.close_tab(other)
    browser.wait_for("document.visibilityState === 'visible'")
    _wait_viewers(url, "cam_a", 1)
    drawn = browser.js("frames('cam_a')")
    browser.wait_for(f"frames('cam_a') > {drawn}")


def test_a_tile_asks_for_frames_no_wider_than_it_shows_in_its_aspect_ratio(
    start_server, publishers, browser
):
    server = start_server()
    publishers(server.url, "wide_cam", size=(640, 360))
    publishers(server.url, "narrow_cam", size=(160, 120))
    _wait_streams(server.url, ["narrow_cam", "wide_cam"])
    _open_dashboard(browser, server.url)
    browser.wait_for("tileNames().length === 2")
    browser.wait_for("tileWidth('wide_cam') > 0 && tileWidth('narrow_cam') > 0")
    shown = browser.js(
        "Math.ceil(tileCanvas('wide_cam').clientWidth * devicePixelRatio / 160) * 160")
    assert shown < 640  # the 1280-pixel window holds tiles narrower than that
    browser.wait_for(f"tileWidth('wide_cam') === {shown}")
    # A stream no wider than its tile is sent as it is.
    assert browser.js("tileWidth('narrow_cam')") == 160
    assert _stats(server.url, "wide_cam")["variants"] == 1
    assert _stats(server.url, "narrow_cam")["variants"] == 0
    # Each tile has its stream's shape (16:9 and 4:3), not one fixed shape for all.
    ratio = "tileCanvas('{}').clientHeight / tileCanvas('{}').clientWidth"
    assert abs(browser.js(ratio.format("wide_cam", "wide_cam")) - 360 / 640) < 0.02
    assert abs(browser.js(ratio.format("narrow_cam", "narrow_cam")) - 120 / 160) < 0.02


def test_sixteen_streams_all_live_over_one_socket_and_hidden_tiles_cost_nothing(
    start_server, publishers, browser
):
    server = start_server({"recording": {"enabled": False}})
    names = [f"fleet{i:02d}" for i in range(16)]
    for name in names:
        publishers(server.url, name, size=(160, 120), fps=10)
    _wait_streams(server.url, names)
    _open_dashboard(browser, server.url)
    browser.wait_for(f"tileNames().length === {len(names)}")

    offscreen_js = ("tileNames().filter((n) => tile(n).getBoundingClientRect().top"
                    " >= innerHeight)")
    hidden = browser.js(offscreen_js)
    visible = [name for name in names if name not in hidden]
    assert hidden and visible, (hidden, visible)
    # Every tile on screen draws frames, counted per tile by the page.
    browser.wait_for(f"{visible}.every((n) => frames(n) >= 5)", timeout=30)
    _one_socket(browser, server.url)
    # Tiles below the fold ask for nothing: no viewer, no frame sent.
    for name in hidden:
        _wait_viewers(server.url, name, 0)
    before = {name: _stats(server.url, name)["frames_out"] for name in hidden}
    watched = _stats(server.url, visible[0])["frames_out"]
    wait_for(lambda: _stats(server.url, visible[0])["frames_out"] >= watched + 10,
             what="10 more frames to a tile on screen")
    assert {name: _stats(server.url, name)["frames_out"] for name in hidden} == before
    assert browser.js(f"{hidden}.map(frames)") == [0] * len(hidden)
    assert browser.js(f"{hidden}.map(tileStatus)") == ["paused"] * len(hidden)

    # Scrolled into view, they draw; those scrolled out let go.
    browser.js("window.scrollTo(0, document.body.scrollHeight)")
    browser.wait_for(f"{hidden}.every((n) => frames(n) >= 5)", timeout=30)
    for name in hidden:
        assert _stats(server.url, name)["frames_out"] > before[name]
    gone = browser.js(
        "tileNames().filter((n) => tile(n).getBoundingClientRect().bottom <= 0)")
    assert gone
    for name in gone:
        _wait_viewers(server.url, name, 0)
    _one_socket(browser, server.url)


def test_streams_come_and_go_and_an_ended_stream_says_so(start_server, publishers, browser):
    server = start_server(
        {"streams": {"timeout_seconds": 2}, "cleanup": {"interval_seconds": 0.5}}
    )
    publishers(server.url, "cam_a")
    publishers(server.url, "cam_b")
    _wait_streams(server.url, ["cam_a", "cam_b"])
    _open_dashboard(browser, server.url)
    browser.wait_for("tileNames().length === 2 && frames('cam_a') > 0")
    # Mark the page and the two canvases: a reload or a rebuilt tile loses the mark.
    browser.js("window.sameDocument = true;"
               "tileCanvas('cam_a').kept = tileCanvas('cam_b').kept = true")

    extra = publishers(server.url, "cam_0")
    assert browser.wait_for("tileNames().length === 3 && tileNames()") == [
        "cam_0",
        "cam_a",
        "cam_b",
    ]
    browser.wait_for("frames('cam_0') > 0")
    extra.stop()  # the server removes it after 2 s without a frame
    # The tile says so over its last picture (not a broken image), then goes.
    browser.wait_for("tileStatus('cam_0') === 'ended'", timeout=15)
    assert browser.js("tile('cam_0').querySelector('.state').textContent") == "Stream ended"
    assert browser.js("!tile('cam_0').querySelector('.state').hidden")
    browser.wait_for("tileNames().join() === 'cam_a,cam_b'", timeout=25)

    assert browser.js("window.sameDocument === true")
    assert browser.js("tileCanvas('cam_a').kept && tileCanvas('cam_b').kept")
    assert httpx.get(f"{server.url}/api/streams/cam_0/stats").status_code == 404

    # Deleted while its publisher goes on: a new stream of the same name within a frame.
    # The tile shows it ended, then subscribes again and moves on.
    assert httpx.delete(f"{server.url}/api/streams/cam_a").status_code == 200
    browser.wait_for("tileStatus('cam_a') === 'ended'")
    drawn = browser.js("frames('cam_a')")
    browser.wait_for(f"tileStatus('cam_a') === 'live' && frames('cam_a') > {drawn}")
    browser.js("window.first = signature(tileCanvas('cam_a'))")
    browser.wait_for("signature(tileCanvas('cam_a')) !== first")
    assert browser.js("tileCanvas('cam_a').kept && window.sameDocument === true")
    _one_socket(browser, server.url)


def test_the_socket_comes_back_after_a_server_restart(start_server, publishers, browser,
                                                      hold_port):
    port = hold_port(for_server=True)
    server = start_server({"server": {"port": port}})
    publishers(server.url, "cam")
    _wait_streams(server.url, ["cam"])
    _open_dashboard(browser, server.url)
    browser.wait_for("tileNames().length === 1 && frames('cam') > 0")
    server.stop()
    browser.wait_for("['reconnecting', 'ended'].includes(tileStatus('cam'))")
    server.start()
    drawn = browser.js("frames('cam')")
    browser.wait_for(f"tileStatus('cam') === 'live' && frames('cam') > {drawn}", timeout=30)
    _one_socket(browser, server.url)


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
    browser.wait_for("svFrames() > 0 && svCanvas().width === 320")
    _wait_viewers(server.url, "cam", 1)  # the view's player; the tile let go of its own
    _one_socket(browser, server.url)
    assert browser.js("document.getElementById('grid-view').hidden")
    # The player has the stream's shape.
    assert abs(browser.js("svCanvas().clientHeight / svCanvas().clientWidth") - 0.75) < 0.02
    stats = browser.wait_for(
        "document.getElementById('sv-stats').innerText.includes('Frames')"
        " && document.getElementById('sv-stats').innerText"
    )
    assert "320×240" in stats and "Recorded" in stats
    # One time zone, named in the footer (the browser's; UTC in this headless one).
    zone = browser.js("document.getElementById('zone').textContent")
    assert "(UTC+00:00)" in zone, zone
    assert browser.js("document.getElementById('sv-snapshot').getAttribute('href')") == (
        "/snapshot/cam"
    )
    assert browser.wait_for("!document.getElementById('sv-rec').hidden")

    _fullscreen(browser, "#sv-media .fs", "document.getElementById('sv-media')")
    _play_a_finished_recording(browser, server.url)

    # The stream is deleted and its publisher creates it again: the player says it ended,
    # then shows the new stream.
    assert httpx.delete(f"{server.url}/api/streams/cam").status_code == 200
    browser.wait_for("document.getElementById('sv-media').dataset.status === 'ended'")
    drawn = browser.js("svFrames()")
    browser.wait_for(f"svFrames() > {drawn}")

    # Back to the grid: the player lets go, the tile takes its place.
    browser.js("location.hash = '#/'")
    browser.wait_for("!document.getElementById('grid-view').hidden")
    assert browser.js("svCanvas()") is None
    browser.wait_for("frames('cam') > 0")
    _wait_viewers(server.url, "cam", 1)  # the tile again, alone


def _fullscreen(browser: Chromium, button: str, element: str) -> None:
    """Click ``button`` like a user (a real mouse event) and leave fullscreen again."""
    box = browser.js(f"(() => {{ const r = document.querySelector('{button}')"
                     ".getBoundingClientRect();"
                     " return [r.x + r.width / 2, r.y + r.height / 2]; })()")
    for kind in ("mousePressed", "mouseReleased"):
        browser.page("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1],
                     button="left", clickCount=1)
    browser.wait_for(f"document.fullscreenElement === {element}")
    browser.js("document.exitFullscreen()")
    browser.wait_for("document.fullscreenElement === null")


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
