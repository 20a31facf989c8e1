import pytest

from helpers import PortHold, ServerProcess


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
    """One real server with default settings, on the port it bound (port 0)."""
    return start_server()


@pytest.fixture
def hold_port():
    """``hold_port(for_server=False) -> port``: loopback ports held until the test ends."""
    holds: list[PortHold] = []

    def hold(for_server: bool = False) -> int:
        holds.append(PortHold(for_server))
        return holds[-1].port

    yield hold
    for held in holds:
        held.close()
