"""The real clients with a token: ``StreamPublisher(token=)``, ``robogpt-video publish
--token`` / ``$ROBOGPT_TOKEN`` and the webcam example, against a server with users."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from helpers import REPO, make_jpeg, wait_for
from robogpt_video.client import StreamPublisher

TOKEN = "robot-token-7c1e5a"
ADMIN = ("ops", "ops-password-93f")
USERS = {
    "auth": {
        "users": [
            {"name": "robot", "token": TOKEN,
             "permissions": [{"action": "publish", "streams": "cam_*"}]},
            {"name": ADMIN[0], "password": ADMIN[1], "permissions": [{"action": "view"}]},
        ]
    }
}
EXAMPLE = REPO / "client" / "examples" / "webcam_publisher.py"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from helpers import ServerProcess

    server = ServerProcess(tmp_path_factory.mktemp("auth-clients"), USERS)
    try:
        yield server.start()
    finally:
        server.stop()


def frames(server, name: str) -> int:
    response = httpx.get(f"{server.url}/api/streams/{name}/stats", auth=ADMIN, timeout=5)
    return response.json()["total_frames"] if response.status_code == 200 else 0


@pytest.mark.parametrize("transport", ["http", "stream"])
def test_the_publisher_sends_its_token(server, transport):
    name = f"cam_{transport}"
    with StreamPublisher(server.url, name, max_fps=None, transport=transport,
                         token=TOKEN) as publisher:
        for seed in range(200):
            publisher.publish_jpeg(make_jpeg(seed=seed))
            if frames(server, name) >= 3:
                break
    assert frames(server, name) >= 3
    assert publisher.stats()["errors"] == 0
    assert TOKEN not in repr(publisher.stats())


def test_a_publisher_without_a_token_is_told_why(server):
    publisher = StreamPublisher(server.url, "cam_none", max_fps=None).start()
    try:
        publisher.publish_jpeg(make_jpeg())
        wait_for(lambda: publisher.stats()["errors"] >= 1, what="the refusal")
    finally:
        publisher.stop()
    assert "401" in publisher.stats()["last_error"]
    assert "unauthorized" in publisher.stats()["last_error"]
    assert frames(server, "cam_none") == 0


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_the_publish_command_and_the_example_take_a_token(server, how):
    name = f"cam_cli_{how}"
    env = {k: v for k, v in os.environ.items() if k != "ROBOGPT_TOKEN"}
    if how == "flag":
        command = [sys.executable, "-m", "robogpt_video", "publish", "--token", TOKEN]
    else:
        command = [sys.executable, str(EXAMPLE)]
        env["ROBOGPT_TOKEN"] = TOKEN
    result = subprocess.run(
        command + ["--server", server.url, "--stream", name, "--camera", "test",
                   "--fps", "10", "--duration", "2"],
        capture_output=True, text=True, timeout=60, cwd=REPO, env=env,
    )
    assert result.returncode == 0, result.stderr
    assert frames(server, name) >= 5
    assert TOKEN not in result.stdout + result.stderr


def test_a_wrong_token_shows_the_servers_answer_and_not_the_token(server):
    wrong = "not-the-token-4411"
    result = subprocess.run(
        [sys.executable, "-m", "robogpt_video", "publish", "--token", wrong, "--server",
         server.url, "--stream", "cam_wrong", "--camera", "test", "--fps", "5",
         "--duration", "1.5"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    output = result.stdout + result.stderr
    # Nothing could be sent: a failure, with the server's answer whole.
    assert result.returncode == 1, output
    assert "error: nothing was published to" in result.stderr
    assert "401 unauthorized: the token is not valid" in result.stderr
    assert wrong not in output
    assert frames(server, "cam_wrong") == 0


@pytest.mark.parametrize("how", ["command", "example"])
def test_help_does_not_show_the_token_of_the_environment(how):
    """``--help`` lists each flag's default: $ROBOGPT_TOKEN's value must not be one."""
    env = {**os.environ, "ROBOGPT_TOKEN": TOKEN}
    command = ([sys.executable, "-m", "robogpt_video", "publish"] if how == "command"
               else [sys.executable, str(EXAMPLE)])
    result = subprocess.run(command + ["--help"], capture_output=True, text=True, timeout=60,
                            cwd=REPO, env=env)
    assert result.returncode == 0, result.stderr
    assert "--token" in result.stdout and "$ROBOGPT_TOKEN" in result.stdout
    # argparse wraps the help text, at a hyphen too: compare without the line breaks.
    shown = "".join((result.stdout + result.stderr).split())
    assert TOKEN not in shown
