"""Fixtures: a real server on an ephemeral port, real HTTP/Socket.IO/WebSocket clients."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import aiohttp
import pytest
import socketio
import uvloop
from aiohttp.test_utils import TestServer

from providers.base import AIProvider
from server.app import create_app
from tests.cluster_nodes import behind_nginx, nodes, viewers  # noqa: F401  (fixtures)
from tests.helpers import LiveServer, ServerFactory, StreamingTestServer, make_settings
from tests.redis_cluster import RedisCluster
from tests.redis_server import RedisServer

#: Fixtures of the fake OpenAI/Anthropic upstream (``upstream``, ``upstream_server``) and of
#: collaborative documents (``start_collab``, ``collab``, ``collaborators``).
pytest_plugins = ["tests.upstream_fixtures", "tests.collab_fixtures"]

#: Suites that measure time or memory against a bound: ``make test`` runs them after the
#: others, alone, so that the parallel workers (pytest-xdist) cannot skew their clocks.
SERIAL = {
    "test_shutdown.py",
    "test_memory.py",
    "test_load.py",
    "test_soak.py",
    "test_render_cost.py",
    "test_faults.py",
    "test_sessions.py",
    "test_wheel.py",
    # Failover time bounds (a new session within 5 s, no write to a demoted primary past
    # the re-check interval).
    "test_ha_sentinel.py",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SERIAL:
            item.add_marker(pytest.mark.serial)


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """Tests run on uvloop, as ``python -m server`` does."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(params=["direct", "engineio"])
def sio_path(request: pytest.FixtureRequest) -> str:
    """Which server code serves Socket.IO WebSockets: ``server.transports.sio_direct`` or python-socketio.

    Modules that use it (``pytestmark = pytest.mark.usefixtures("sio_path")``) run each
    test against both.
    """
    return str(request.param)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the whole run, flushed before each test that uses it."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def shared_redis_cluster() -> Iterator[RedisCluster]:
    """A Redis Cluster (three primaries) for the whole run, flushed before each test."""
    with RedisCluster(replicas=0) as cluster:
        yield cluster


#: Every server test runs in memory, on one Redis and on a Redis Cluster (three primaries
#: started once per worker). ``TEST_STORES=memory,redis`` picks some, for a quicker local run;
#: ``make test`` runs them all.
STORES = [s for s in os.environ.get("TEST_STORES", "memory,redis,cluster").split(",") if s]


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest) -> str:
    """Where sessions live: every server test runs in memory and in Redis mode (one process,
    on one Redis and on a Redis Cluster), so that the modes cannot drift apart."""
    if request.param == "redis":
        request.getfixturevalue("redis_server").flush()
    elif request.param == "cluster":
        request.getfixturevalue("shared_redis_cluster").flush()
    return str(request.param)


@pytest.fixture
async def start_server(request: pytest.FixtureRequest, store: str) -> AsyncIterator[ServerFactory]:
    servers: list[TestServer] = []
    path = request.getfixturevalue("sio_path") if "sio_path" in request.fixturenames else "direct"
    redis_url = request.getfixturevalue("redis_server").url if store == "redis" else None
    cluster_url = request.getfixturevalue("shared_redis_cluster").url if store == "cluster" else None

    async def start(providers: Mapping[str, AIProvider] | None = None, **overrides: Any) -> LiveServer:
        overrides.setdefault("socketio_direct_websocket", path == "direct")
        overrides.setdefault("redis_url", redis_url)
        if cluster_url is not None and not overrides.get("redis_url"):
            overrides.setdefault("redis_cluster_url", cluster_url)
        app = create_app(make_settings(**overrides), providers=providers)
        server = StreamingTestServer(app, host="127.0.0.1", port=0)
        await server.start_server()
        servers.append(server)
        return LiveServer(str(server.make_url("")).rstrip("/"), app)

    yield start
    for server in reversed(servers):
        await server.close()


@pytest.fixture
async def server(start_server: ServerFactory) -> LiveServer:
    return await start_server()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def sio_clients() -> AsyncIterator[Callable[[], socketio.AsyncClient]]:
    clients: list[socketio.AsyncClient] = []

    def make() -> socketio.AsyncClient:
        client = socketio.AsyncClient(reconnection=False)
        clients.append(client)
        return client

    yield make
    for client in clients:
        if client.connected:
            await client.disconnect()
