import pytest

from helpers import PortHold, RedisServer, ServerProcess


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


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    """One default server for every test of a module that takes it.

    Only for tests that need no special config, use stream names no other test in the
    module uses, and assert nothing about the server as a whole (stream or viewer
    counts, global metrics, its log): those take ``server`` or ``start_server``.
    """
    server = ServerProcess(tmp_path_factory.mktemp("shared"))
    try:
        yield server.start()
    finally:
        server.stop()


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


@pytest.fixture
def publishers(start_server):
    """``publishers(url, name, size=, fps=, headers=)`` starts a :class:`browser.Publisher`;
    all stop before the servers do."""
    from browser import Publisher

    started: list[Publisher] = []

    def start(url: str, name: str, **kwargs) -> Publisher:
        pub = Publisher(url, name, **kwargs)
        pub.start()
        started.append(pub)
        return pub

    yield start
    for pub in started:
        pub.stop()


@pytest.fixture
def redis_server(tmp_path):
    """A real redis-server on a unix socket in the test's folder, stopped after it."""
    server = RedisServer(tmp_path / "redis")
    server.directory.mkdir()
    yield server.start()
    server.stop()
