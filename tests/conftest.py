"""Fixtures: a real server on an ephemeral port, real HTTP/Socket.IO/WebSocket clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
import pytest
import socketio
import uvloop
from aiohttp.test_utils import TestServer

from providers.base import AIProvider
from server.app import create_app
from tests.helpers import LiveServer, ServerFactory, StreamingTestServer, make_settings


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """Tests run on uvloop, as ``python -m server`` does."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(params=["direct", "engineio"])
def sio_path(request: pytest.FixtureRequest) -> str:
    """Which server code serves Socket.IO WebSockets: ``server.sio_direct`` or python-socketio.

    Modules that use it (``pytestmark = pytest.mark.usefixtures("sio_path")``) run each
    test against both.
    """
    return str(request.param)


@pytest.fixture
async def start_server(request: pytest.FixtureRequest) -> AsyncIterator[ServerFactory]:
    servers: list[TestServer] = []
    path = request.getfixturevalue("sio_path") if "sio_path" in request.fixturenames else "direct"

    async def start(providers: Mapping[str, AIProvider] | None = None, **overrides: Any) -> LiveServer:
        overrides.setdefault("socketio_direct_websocket", path == "direct")
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
