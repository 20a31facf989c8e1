"""The dashboard with access control on, in a real headless Chromium: a real server with
users, robots publishing with a token over real HTTP, signing in through the page's form."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from browser import Chromium, headless_chromium
from helpers import wait_for

PASSWORD = "open sesame"
ROBOT_TOKEN = "robot-7f3a9c"
GUEST_TOKEN = "guest-51d2e8"
OPS = {"name": "ops", "password": PASSWORD,
       "permissions": [{"action": "view"}, {"action": "playback"}, {"action": "admin"}]}
ROBOT = {"name": "robot", "token": ROBOT_TOKEN, "permissions": [{"action": "publish"}]}
GUEST = {"name": "guest", "token": GUEST_TOKEN,
         "permissions": [{"action": "view", "streams": "cam_a"}]}
SESSION_KEY = "robogpt-video.session"

PAGE_JS = """
window.byId = (id) => document.getElementById(id);
window.shown = (id) => !document.getElementById(id).hidden;
// The width of the frames a tile (or the stream view) drew; 0 before the first one.
window.drawnWidth = (media) =>
  media && media.dataset.frames > 0 ? media.querySelector("canvas").width : 0;
window.tileWidth = (name) =>
  drawnWidth(document.querySelector(`#grid li[data-stream="${name}"] .media`));
window.svWidth = () => drawnWidth(byId("sv-media"));
window.tileNames = () => [...document.querySelectorAll("#grid li")].map((li) => li.dataset.stream);
"""


@pytest.fixture
def publishers(publishers):
    """Publishers that send the robot's token."""

    def start(url: str, name: str, **kwargs):
        return publishers(url, name, headers={"Authorization": f"Bearer {ROBOT_TOKEN}"}, **kwargs)

    return start


@pytest.fixture
def browser(tmp_path):
    with headless_chromium(tmp_path / "chrome") as chrome:
        yield chrome


def _listed(url: str) -> dict[str, dict]:
    """The server's streams, as ops sees them (every one)."""
    streams = httpx.get(f"{url}/api/streams", auth=("ops", PASSWORD)).json()["streams"]
    return {s["name"]: s for s in streams}


def _wait_streams(url: str, names: list[str]) -> None:
    """Until the server lists exactly ``names``, each with a frame."""
    wait_for(lambda: sorted(_listed(url)) == names and all(
        s["width"] for s in _listed(url).values()), what=f"the streams {names}")


def _wait_viewers(url: str, counts: dict[str, int]) -> None:
    """Until the server counts these viewers (a closed <img> takes a moment to go)."""
    wait_for(lambda: {n: _listed(url)[n]["viewer_count"] for n in counts} == counts,
             what=f"viewers {counts}")


def _open(browser: Chromium, url: str) -> None:
    browser.goto(url + "/")
    browser.js(PAGE_JS)


def _sign_in(browser: Chromium, name: str, secret: str) -> None:
    """Fill in the form and send it like a user: Enter in the password field."""
    browser.js(f"byId('signin-name').value = {json.dumps(name)};"
               f"byId('signin-secret').value = {json.dumps(secret)};"
               "byId('signin-secret').focus()")
    browser.press("Enter", 13, "\r")


def _error_after(browser: Chromium, secret: str, name: str = "") -> str:
    """Sign in with wrong credentials; the form's error text."""
    browser.js("byId('signin-error').textContent = ''")
    _sign_in(browser, name, secret)
    return browser.wait_for("shown('signin-error') && byId('signin-error').textContent")


def _kept() -> str:
    return f"JSON.parse(sessionStorage.getItem('{SESSION_KEY}'))"


def test_sign_in_with_a_password_then_live_tiles_and_recordings_until_sign_out(
    start_server, publishers, browser
):
    server = start_server({"auth": {"users": [OPS, ROBOT]}, "recording": {"segment_seconds": 1}})
    publishers(server.url, "cam_a", size=(320, 240))
    publishers(server.url, "cam_b", size=(160, 120))
    _wait_streams(server.url, ["cam_a", "cam_b"])
    _open(browser, server.url)

    # The first API call answered 401: the page's own form, nothing else.
    browser.wait_for("shown('signin')")
    assert browser.js("document.activeElement.id") == "signin-name"
    assert browser.js("!shown('grid-view') && !shown('account') && tileNames().length === 0")
    assert "signed-in users" in browser.js("byId('signin-note').textContent")
    # No picture was asked for without credentials.
    assert browser.js(
        "performance.getEntriesByType('resource').every((e) => !/[/](stream|snapshot)[/]/.test(e.name))"
    )
    assert browser.websockets() == []

    assert _error_after(browser, "wrong", name="ops") == (
        "Sign-in refused: wrong user name or password"
    )
    assert browser.js("shown('signin') && tileNames().length === 0")

    _sign_in(browser, "ops", PASSWORD)
    assert browser.wait_for("tileNames().length === 2 && tileNames()") == ["cam_a", "cam_b"]
    widths = "[tileWidth('cam_a'), tileWidth('cam_b')]"
    browser.wait_for(f"{widths}.every((w) => w > 0)")
    assert browser.js(widths) == [320, 160]
    assert browser.js("!shown('signin') && byId('account-user').textContent") == "ops"
    token = browser.js(f"{_kept()}.token")
    assert token.startswith("rgv1.")
    assert browser.js("localStorage.length") == 0
    # One socket for every tile, with the token (a browser's WebSocket has no header).
    assert browser.websockets() == [f"{server.url.replace('http', 'ws')}/ws/view?token={token}"]
    _wait_viewers(server.url, {"cam_a": 1, "cam_b": 1})
    # /health's details come with the token.
    assert "streams" in browser.wait_for("byId('summary').textContent")
    assert browser.js("byId('link-recordings').getAttribute('href')") == (
        f"/api/recordings?token={token}"
    )

    # Asked once: a reload in the same tab keeps the sign-in.
    _open(browser, server.url)
    browser.wait_for("tileNames().length === 2 && tileWidth('cam_a') === 320")
    assert browser.js("!shown('signin')")

    _stream_view_plays_a_recording(browser, server.url, token)

    browser.js("location.hash = '#/'")
    browser.wait_for("tileNames().length === 2")
    browser.js("byId('signout').click()")
    browser.wait_for("shown('signin')")
    assert browser.js("byId('signin-note').textContent") == "You signed out."
    assert browser.js(f"sessionStorage.getItem('{SESSION_KEY}')") is None
    assert browser.js("tileNames().length === 0 && !shown('account')")
    _wait_viewers(server.url, {"cam_a": 0, "cam_b": 0})


def _stream_view_plays_a_recording(browser: Chromium, url: str, token: str) -> None:
    browser.js("location.hash = '#/stream/cam_a'")
    browser.wait_for("svWidth() === 320")
    assert browser.js("byId('sv-snapshot').getAttribute('href')") == (
        f"/snapshot/cam_a?token={token}"
    )
    row = "document.querySelector('#recordings tr[data-status=complete]')"
    browser.wait_for(f"!!{row}", timeout=20)
    file = browser.js(f"{row}.dataset.file")
    download = browser.js(f"{row}.querySelector('a[download]').getAttribute('href')")
    assert download == f"/api/recordings/cam_a/{file}?token={token}"
    assert httpx.head(url + download).headers["content-type"] == "video/mp4"
    assert httpx.head(f"{url}/api/recordings/cam_a/{file}").status_code == 401
    browser.js(f"{row}.querySelector('button').click()")
    player = "byId('player-img')"
    browser.wait_for(f"shown('player') && {player}.naturalWidth === 320")
    assert f"/api/recordings/cam_a/{file}/play?t=" in browser.js(f"{player}.src")
    assert f"&token={token}" in browser.js(f"{player}.src")


def test_a_token_user_sees_its_streams_and_is_told_in_place_what_it_may_not_do(
    start_server, publishers, browser
):
    anyone = {"name": "any", "permissions": [{"action": "view", "streams": "lobby"}]}
    server = start_server({"auth": {"users": [OPS, ROBOT, GUEST, anyone]}})
    for name in ("cam_a", "cam_b", "lobby"):
        publishers(server.url, name, size=(160, 120))
    _wait_streams(server.url, ["cam_a", "cam_b", "lobby"])
    _open(browser, server.url)

    # Anyone may watch the lobby: no form, its tile, and a way to sign in.
    browser.wait_for("tileNames().join() === 'lobby' && tileWidth('lobby') === 160")
    assert browser.websockets() == [f"{server.url.replace('http', 'ws')}/ws/view"]
    browser.wait_for("shown('signin-open')")
    assert browser.js("!shown('signin') && !shown('account')")
    browser.js("byId('signin-open').click()")
    browser.wait_for("shown('signin') && shown('signin-cancel')")

    assert _error_after(browser, "not-a-token") == "Sign-in refused: the token is not valid"
    _sign_in(browser, "", GUEST_TOKEN)  # no name: the token itself
    browser.wait_for("byId('account-user').textContent === 'guest'")
    # The server lists only what guest may view, and what anyone may.
    browser.wait_for("tileNames().join() === 'cam_a,lobby' "
                     "&& tileWidth('cam_a') === 160")
    assert browser.js("!shown('signin-open')")

    # Another stream by its address: "not allowed" where the video would be.
    browser.js("location.hash = '#/stream/cam_b'")
    denied = browser.wait_for("shown('sv-denied') && byId('sv-denied').textContent")
    assert denied.startswith("Not allowed: you may not watch cam_b")
    assert "user 'guest' has no view permission on stream 'cam_b'" in denied
    assert browser.js("!shown('sv-media') && !document.querySelector('#sv-media canvas')")
    _wait_viewers(server.url, {"cam_b": 0})
    recordings = browser.wait_for("shown('rec-empty') && byId('rec-empty').textContent")
    assert recordings.startswith("Not allowed: you may not play back recordings")

    # Its own stream: live; its recordings are not guest's to play back.
    browser.js("location.hash = '#/stream/cam_a'")
    browser.wait_for("shown('sv-media') && svWidth() === 160")
    assert browser.js("!shown('sv-denied')")
    browser.wait_for("byId('rec-empty').textContent.startsWith('Not allowed')")

    # Signed out: anonymous again, with the lobby (not a form, anyone may watch it).
    browser.js("location.hash = '#/'")
    browser.js("byId('signout').click()")
    browser.wait_for("tileNames().join() === 'lobby' && tileWidth('lobby') === 160")
    browser.wait_for("shown('signin-open')")
    assert browser.js("!shown('signin') && !shown('account')")


def test_an_ended_session_brings_the_form_back_once(
    start_server, publishers, browser, hold_port
):
    # The server is restarted on the same port: its session key is new, so the page's
    # token is no longer valid (as after auth.session_hours).
    port = hold_port(for_server=True)
    server = start_server({"server": {"port": port}, "auth": {"users": [OPS, ROBOT]}})
    publishers(server.url, "cam_a")
    _wait_streams(server.url, ["cam_a"])
    _open(browser, server.url)
    browser.wait_for("shown('signin')")
    _sign_in(browser, "ops", PASSWORD)
    browser.wait_for("tileWidth('cam_a') === 320")
    old = browser.js(f"{_kept()}.token")
    # Watch what the page sends from now on, and how often the form appears.
    browser.js("""
      window.sent = [];
      const send = window.fetch;
      window.fetch = (url, init = {}) => {
        sent.push([String(url), (init.headers || {}).Authorization || null]);
        return send(url, init);
      };
      window.formShown = 0;
      new MutationObserver(() => { if (shown('signin')) formShown += 1; })
        .observe(byId('signin'), { attributes: true, attributeFilter: ['hidden'] });
    """)

    server.stop()
    server.start()
    note = browser.wait_for("shown('signin') && byId('signin-note').textContent")
    assert note == "Your sign-in has ended (the session token is not valid)."
    assert browser.js(f"sessionStorage.getItem('{SESSION_KEY}')") is None
    assert browser.js("tileNames().length === 0 && !shown('account')")
    # The page goes on asking for /health, without the old token, and shows no form again.
    after = browser.js("sent.length")
    browser.wait_for(f"sent.slice({after}).some(([url]) => url === '/health')")
    assert browser.js(f"sent.slice({after}).filter(([, auth]) => auth !== null)") == []
    assert browser.js("formShown") == 1
    # An <img> (as the browser asks for one) with the old token is refused with a
    # Bearer challenge alone: the browser opens no password prompt for it. Other
    # clients still get Basic first.
    image = {"Sec-Fetch-Dest": "image"}
    refused = httpx.get(f"{server.url}/stream/cam_a", params={"token": old}, headers=image)
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"].startswith("Bearer ")
    assert "Basic" not in refused.headers["WWW-Authenticate"]
    for response in (httpx.get(f"{server.url}/stream/cam_a", params={"token": old}),
                     httpx.get(f"{server.url}/stream/cam_a", headers=image)):
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Basic ")

    _sign_in(browser, "ops", PASSWORD)
    browser.wait_for("tileWidth('cam_a') === 320", timeout=20)
    assert browser.js(f"{_kept()}.token") != old


def test_too_many_failed_sign_ins_wait_for_retry_after(start_server, browser):
    server = start_server({"auth": {"users": [OPS], "max_failures_per_minute": 1}})
    _open(browser, server.url)
    browser.wait_for("shown('signin')")
    assert _error_after(browser, "wrong", name="ops") == (
        "Sign-in refused: wrong user name or password"
    )
    error = _error_after(browser, PASSWORD, name="ops")
    assert error.startswith("Sign-in refused: too many failed sign-ins from 127.0.0.1")
    button = browser.js("[byId('signin-submit').disabled, byId('signin-submit').textContent]")
    assert button[0] is True
    wait = re.fullmatch(r"Try again in (\d+) s", button[1])
    assert wait and 1 <= int(wait[1]) <= 60
