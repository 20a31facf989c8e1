import pytest

from helpers import ServerProcess


@pytest.fixture
def start_server(tmp_path):
    """Start real servers with config overrides; every one is stopped after the test."""
    servers: list[ServerProcess] = []

    def start(config: dict | None = None, env: dict | None = None, workdir=None) -> ServerProcess:
        server = ServerProcess(workdir or tmp_path / f"srv{len(servers)}", config, env)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(start_server):
    """One real server with default settings on a free loopback port."""
    return start_server()
