"""Deployment files: the Dockerfile, the systemd unit and the nginx example.

No Docker engine runs here, so the Dockerfile is checked statically and its
HEALTHCHECK command is run against a real server. The unit is checked with
``systemd-analyze verify`` and the nginx example with ``nginx -t`` and a real nginx
proxying a real server (`make test` installs both: tools/test-packages).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

import httpx
import pytest
import yaml

from helpers import REPO, die_with_parent, iter_parts, make_jpeg, publish, wait_for

DOCKERFILE = REPO / "Dockerfile"
UNIT = REPO / "deploy" / "robogpt-video.service"
NGINX = REPO / "deploy" / "nginx" / "robogpt-video.conf"
DEFAULTS = yaml.safe_load((REPO / "config.yaml").read_text())


def instructions(path) -> list[tuple[str, str]]:
    """A Dockerfile as (INSTRUCTION, arguments), continuation lines joined."""
    found, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        keyword, _, args = whole.partition(" ")
        found.append((keyword.upper(), args.strip()))
    return found


def dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def healthcheck_command() -> list[str]:
    (args,) = [args for keyword, args in instructions(DOCKERFILE) if keyword == "HEALTHCHECK"]
    return json.loads(args[args.index("CMD ") + 4 :])


def test_dockerfile_runs_the_server_unprivileged_on_a_slim_image():
    steps = instructions(DOCKERFILE)
    keywords = [keyword for keyword, _ in steps]
    base = steps[0]
    assert base[0] == "FROM" and re.fullmatch(r"python:3\.(1[1-9])-slim", base[1]), base
    users = [args for keyword, args in steps if keyword == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0"), users
    assert keywords.index("USER") < keywords.index("CMD")
    assert ("EXPOSE", str(DEFAULTS["server"]["port"])) in steps
    volumes = [json.loads(args) for keyword, args in steps if keyword == "VOLUME"]
    assert ["/app/recordings", "/app/logs"] in volumes
    assert "/health" in " ".join(healthcheck_command())
    cmd = [args for keyword, args in steps if keyword == "CMD"]
    assert json.loads(cmd[-1]) == ["python", "run_server.py"]
    assert ("WORKDIR", "/app") in steps


def test_dockerfile_copies_existing_files_that_dockerignore_keeps():
    ignored = dockerignore()
    for keyword, args in instructions(DOCKERFILE):
        if keyword != "COPY":
            continue
        *sources, _dest = shlex.split(args)
        for source in sources:
            assert not source.startswith("--"), "no multi-stage copies expected"
            assert (REPO / source).exists(), f"COPY {source}: no such file"
            top = source.rstrip("/").split("/")[0]
            hits = [p for p in ignored if fnmatch.fnmatch(top, p.rstrip("/"))]
            assert not hits, f"COPY {source} is excluded by .dockerignore {hits}"


def test_dockerignore_keeps_local_state_out_of_the_image():
    ignored = set(dockerignore())
    assert {".venv", "recordings", "logs", ".git"} <= ignored
    assert any(p.endswith("__pycache__") for p in ignored)


def test_docker_healthcheck_passes_on_a_live_server_and_fails_on_a_dead_one(
    shared_server, hold_port
):
    server = shared_server
    command = [sys.executable if word == "python" else word for word in healthcheck_command()]
    env = {**os.environ, "SERVER_PORT": str(server.port)}
    assert subprocess.run(command, env=env, timeout=30).returncode == 0
    env["SERVER_PORT"] = str(hold_port())  # bound, never listening: refused
    assert subprocess.run(command, env=env, timeout=30, capture_output=True).returncode != 0


def unit() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_systemd_unit_restarts_and_is_sandboxed():
    settings = unit()
    assert settings["Restart"] == ["always"]
    assert settings["NoNewPrivileges"] == ["yes"]
    assert settings["ProtectSystem"] == ["strict"]
    home = settings["WorkingDirectory"][0]
    writable = " ".join(settings["ReadWritePaths"]).split()
    assert sorted(writable) == [f"{home}/logs", f"{home}/recordings"]
    assert settings["ExecStart"][0].endswith(f"{home}/run_server.py")
    assert settings["User"][0] not in ("root", "0")
    assert float(settings["TimeoutStopSec"][0].rstrip("s")) > 10  # the server needs ≤ 10 s


def test_systemd_analyze_verifies_the_unit(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is missing (apt-get install systemd; `make test` does as root)")
    # The unit names /opt/robogpt-video; verify checks that ExecStart exists, so point
    # it at this checkout's interpreter and entry point.
    home = tmp_path / "opt"
    (home / ".venv" / "bin").mkdir(parents=True)
    (home / ".venv" / "bin" / "python").symlink_to(sys.executable)
    (home / "run_server.py").symlink_to(REPO / "run_server.py")
    copy = tmp_path / "robogpt-video.service"
    copy.write_text(UNIT.read_text().replace("/opt/robogpt-video", str(home)))
    result = subprocess.run(
        [tool, "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "robogpt-video.service" not in result.stderr, result.stderr  # no warnings


def _nginx_main(tmp_path, site):
    """An nginx.conf that runs in the foreground from ``tmp_path`` and serves ``site``."""
    main = tmp_path / "nginx.conf"
    main.write_text(
        f"daemon off;\nmaster_process off;\npid {tmp_path}/nginx.pid;\n"
        f"error_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n  access_log off;\n  client_body_temp_path {tmp_path}/body;\n"
        f"  proxy_temp_path {tmp_path}/proxy;\n  include {site};\n}}\n"
    )
    return main


def nginx_setup(tmp_path, hold_port, upstream_port: int) -> tuple[str, int, object]:
    """The example config made runnable here: self-signed cert, loopback ports.

    nginx cannot bind port 0 and say which port it got, so its ports are held
    (``hold_port(for_server=True)``) until the test ends; nginx sets SO_REUSEADDR and
    binds them alongside the hold, and nothing else can take them in between.
    """
    tool = shutil.which("nginx")
    if tool is None:
        pytest.skip("nginx is missing (apt-get install nginx-light; `make test` does as root)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    https_port, http_port = hold_port(for_server=True), hold_port(for_server=True)
    text = NGINX.read_text()
    for old, new in (
        ("/etc/letsencrypt/live/video.example.com/fullchain.pem", str(cert)),
        ("/etc/letsencrypt/live/video.example.com/privkey.pem", str(key)),
        ("listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;"),
        ("listen [::]:443 ssl http2;", ""),
        ("listen 80;", f"listen 127.0.0.1:{http_port};"),
        ("listen [::]:80;", ""),
        ("server 127.0.0.1:5000;", f"server 127.0.0.1:{upstream_port};"),
    ):
        assert text.count(old) == 1, f"the example no longer has {old!r}"
        text = text.replace(old, new)
    site = tmp_path / "site.conf"
    site.write_text(text)
    main = _nginx_main(tmp_path, site)
    return tool, https_port, main


def test_nginx_example_has_the_streaming_settings():
    text = NGINX.read_text()
    stream = text[text.index("location /stream/") :]
    stream = stream[: stream.index("}")]
    assert "proxy_buffering off;" in stream
    timeout = re.search(r"proxy_read_timeout (\d+)s;", stream)
    assert timeout and int(timeout[1]) >= 600
    size = re.search(r"client_max_body_size (\d+)m;", text)
    limit = DEFAULTS["server"]["max_frame_size_mb"]
    assert size and limit <= int(size[1]) <= limit + 1  # the frame limit + multipart slack
    assert "ssl_certificate " in text and "TLSv1.3" in text


def test_nginx_accepts_the_example(tmp_path, hold_port):
    tool, _, main = nginx_setup(tmp_path, hold_port, hold_port())  # no upstream needed
    result = subprocess.run(
        [tool, "-t", "-p", str(tmp_path), "-c", str(main), "-e", str(tmp_path / "error.log")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_nginx_example_proxies_publish_and_live_mjpeg_over_tls(tmp_path, hold_port, shared_server):
    server = shared_server
    tool, port, main = nginx_setup(tmp_path, hold_port, server.port)
    parent = os.getpid()
    proc = subprocess.Popen(
        [tool, "-p", str(tmp_path), "-c", str(main), "-e", str(tmp_path / "error.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        preexec_fn=lambda: die_with_parent(parent),
    )
    try:
        base = f"https://127.0.0.1:{port}"
        with httpx.Client(verify=False, timeout=10) as client:
            deadline = time.monotonic() + 10
            while True:
                try:
                    if client.get(f"{base}/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise
                    time.sleep(0.1)
            assert publish(base, "cam", make_jpeg(seed=1), client).status_code == 200
            with client.stream("GET", f"{base}/stream/cam") as view:
                assert view.headers["content-type"] == "multipart/x-mixed-replace; boundary=frame"
                parts = iter_parts(view.iter_bytes())
                _, first = next(parts)
                assert first == make_jpeg(seed=1)
                fresh = make_jpeg(seed=2)
                assert publish(base, "cam", fresh, client).status_code == 200
                # Unbuffered: the new frame comes through while the response stays open.
                assert any(jpeg == fresh for _, jpeg in (next(parts) for _ in range(3)))
    finally:
        proc.terminate()
        proc.wait(10)


# -- the cluster: deploy/compose.yaml and its nginx load balancer ---------------------------

COMPOSE = REPO / "deploy" / "compose.yaml"
NGINX_CLUSTER = REPO / "deploy" / "nginx" / "robogpt-video-cluster.conf"


def compose_nodes() -> dict[str, dict]:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    return {name: service for name, service in services.items() if name.startswith("node")}


def _interpolated(value: str, environment: dict[str, str]) -> str:
    """``value`` with compose's ``${NAME:-default}`` filled in from ``environment``."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}",
                  lambda m: environment.get(m[1]) or m[2], value)


def test_compose_runs_redis_three_nodes_and_nginx(monkeypatch):
    from robogpt_video.config import load_settings

    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    nodes = compose_nodes()
    assert sorted(services) == ["nginx", "node1", "node2", "node3", "redis"]
    recordings, names = set(), set()
    for service, node in nodes.items():
        assert node["build"] == {"context": "..", "dockerfile": "Dockerfile"}
        assert (COMPOSE.parent / node["build"]["context"] / "Dockerfile").is_file()
        assert node["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "/health" in " ".join(node["healthcheck"]["test"])
        # The node's environment, read by the real settings model (with the image's
        # config.yaml): every key exists and has the value meant.
        for key in [k for k in os.environ if k.startswith("ROBOGPT_")]:
            monkeypatch.delenv(key)
        for key, value in node["environment"].items():
            monkeypatch.setenv(key, _interpolated(str(value), {}))
        settings = load_settings(REPO / "config.yaml")
        # Dashboard sessions: the secret from compose's environment, or none (then Redis).
        assert settings.auth.session_secret is None
        monkeypatch.setenv("ROBOGPT_AUTH__SESSION_SECRET", _interpolated(
            node["environment"]["ROBOGPT_AUTH__SESSION_SECRET"],
            {"ROBOGPT_AUTH__SESSION_SECRET": "s" * 40}))
        assert load_settings(REPO / "config.yaml").auth.session_secret.get_secret_value() == "s" * 40
        cluster = settings.cluster
        assert cluster.redis_url == "redis://redis:6379/0"
        assert cluster.node_name == service
        assert cluster.advertise_url == f"http://{service}:{settings.server.port}"
        names.add(cluster.node_name)
        # Its own recordings volume, where the image's working directory puts them.
        mounts = dict(reversed(v.split(":")[:2]) for v in node["volumes"])
        assert f"/app/{settings.recording.directory}" in mounts
        recordings.add(mounts[f"/app/{settings.recording.directory}"])
        assert mounts[f"/app/{settings.recording.directory}"] in compose["volumes"]
    assert len(names) == len(recordings) == 3  # no two nodes share a name or a directory
    assert "redis-cli" in services["redis"]["healthcheck"]["test"]
    nginx = services["nginx"]
    assert {name: dep["condition"] for name, dep in nginx["depends_on"].items()} == {
        name: "service_healthy" for name in nodes}
    (conf,) = [v.split(":")[0] for v in nginx["volumes"]]
    assert (COMPOSE.parent / conf).resolve() == NGINX_CLUSTER


def test_the_cluster_nginx_conf_balances_the_compose_nodes():
    text = NGINX_CLUSTER.read_text()
    port = DEFAULTS["server"]["port"]
    upstream = re.findall(r"^\s*server (\S+) ", text, re.MULTILINE)
    assert upstream == [f"{name}:{port}" for name in compose_nodes()]
    for path in ("/stream/", "/publish/", "/ws/"):
        block = text[text.index(f"location {path}") :]
        block = block[: block.index("}")]
        assert "proxy_buffering off;" in block, path
        timeout = re.search(r"proxy_read_timeout (\d+)s;", block)
        assert timeout and int(timeout[1]) >= 600, path
    assert "proxy_request_buffering off;" in text
    assert "proxy_set_header Upgrade $http_upgrade;" in text


def nginx_cluster_setup(tmp_path, hold_port, upstream_ports: list[int]):
    """The cluster conf made runnable here: loopback ports for nginx and the nodes."""
    tool = shutil.which("nginx")
    if tool is None:
        pytest.skip("nginx is missing (apt-get install nginx-light; `make test` does as root)")
    port = hold_port(for_server=True)
    text = NGINX_CLUSTER.read_text()
    replacements = [("listen 80;", f"listen 127.0.0.1:{port};"), ("listen [::]:80;", "")]
    replacements += [(f"server node{i}:5000 ", f"server 127.0.0.1:{p} ")
                     for i, p in enumerate(upstream_ports, 1)]
    for old, new in replacements:
        assert text.count(old) == 1, f"the cluster conf no longer has {old!r}"
        text = text.replace(old, new)
    site = tmp_path / "cluster.conf"
    site.write_text(text)
    main = _nginx_main(tmp_path, site)
    return tool, port, main


def test_nginx_accepts_the_cluster_conf(tmp_path, hold_port):
    tool, _, main = nginx_cluster_setup(tmp_path, hold_port, [hold_port() for _ in range(3)])
    result = subprocess.run(
        [tool, "-t", "-p", str(tmp_path), "-c", str(main), "-e", str(tmp_path / "error.log")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


@pytest.mark.skipif(shutil.which("redis-server") is None,
                    reason="redis-server is required: apt-get install redis-server")
def test_the_cluster_behind_nginx_survives_kill_9_of_the_publishers_node(
    tmp_path, hold_port, start_server, redis_server
):
    """Two real nodes and a dead one (a port that refuses) behind a real nginx with the
    cluster conf: a publisher and viewers that know only nginx's URL."""
    from robogpt_video.client import StreamPublisher

    config = {"cluster": {"redis_url": redis_server.url}, "recording": {"enabled": False}}
    nodes = [start_server(config) for _ in range(2)]
    tool, port, main = nginx_cluster_setup(tmp_path, hold_port,
                                           [n.port for n in nodes] + [hold_port()])
    parent = os.getpid()
    proc = subprocess.Popen(
        [tool, "-p", str(tmp_path), "-c", str(main), "-e", str(tmp_path / "error.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        preexec_fn=lambda: die_with_parent(parent),
    )
    base = f"http://127.0.0.1:{port}"

    def node_streams(node) -> int:
        return httpx.get(f"{node.url}/health", timeout=5).json()["node_streams"]

    def fresh_frame_through_nginx(frames: list[bytes]) -> bool:
        with httpx.Client(timeout=10) as client, client.stream("GET", f"{base}/stream/cam") as view:
            if view.status_code != 200:
                return False
            seen = [jpeg for _, (_, jpeg) in zip(range(5), iter_parts(view.iter_bytes()))]
            return any(jpeg in frames[-30:] for jpeg in seen)

    try:
        wait_for(lambda: _answers(f"{base}/health"), what="nginx to answer")
        publisher = StreamPublisher(base, "cam", max_fps=None)
        sent: list[bytes] = []
        with publisher:
            def offer(count: int) -> None:
                for _ in range(count):
                    sent.append(make_jpeg(160, 120, seed=len(sent)))
                    publisher.publish_jpeg(sent[-1])
                    time.sleep(0.02)  # pacing, not synchronisation

            offer(10)
            # Whichever node nginx gave the publisher's connection is the one killed.
            used = wait_for(lambda: next((n for n in nodes if node_streams(n)), None),
                            what="a node to be published to")
            other = nodes[1] if used is nodes[0] else nodes[0]
            assert wait_for(lambda: (offer(3), fresh_frame_through_nginx(sent))[1],
                            what="live frames through nginx")
            used.kill()
            # The publisher reconnects through nginx, which skips the dead node.
            wait_for(lambda: (offer(3), node_streams(other))[1], what="the survivor published to")
            # A viewer through nginx (reconnecting, as the dashboard does) gets new frames.
            wait_for(lambda: (offer(3), fresh_frame_through_nginx(sent))[1],
                     what="new frames through nginx after the kill")
        assert publisher.stats()["frames_sent"] > 0
    finally:
        proc.terminate()
        proc.wait(10)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
