"""``GET /readyz`` (can this process take sessions?) next to ``GET /healthz`` (is it alive?)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from server.app import create_app
from tests.helpers import WAIT, LiveServer, ServerFactory, StreamingTestServer, make_settings
from tests.server_process import free_port


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as resp:
        return resp.status, await resp.json()


async def wait_ready(http: aiohttp.ClientSession, server: LiveServer) -> tuple[int, Any]:
    """In Redis mode the process is ready once its command channel is subscribed, a moment
    after it listens: wait for that event, then ask."""
    cluster = server.manager.cluster
    if cluster is not None:
        async with asyncio.timeout(WAIT):
            await cluster.listening.wait()
    return await get(http, f"{server.url}/readyz")


async def test_ready_when_it_can_take_sessions(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server()
    assert await wait_ready(http, server) == (200, {"status": "ready"})
    assert await get(http, f"{server.url}/healthz") == (200, {"status": "ok"})


async def test_not_ready_while_redis_is_unreachable(http: aiohttp.ClientSession) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    app = create_app(make_settings(redis_url=dead, redis_timeout=0.5))
    server = StreamingTestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        url = str(server.make_url("")).rstrip("/")
        status, body = await get(http, f"{url}/readyz")
        assert status == 503
        assert "Redis" in body["error"]
        assert await get(http, f"{url}/healthz") == (200, {"status": "ok"}), "alive all the same"
    finally:
        await server.close()


async def test_not_ready_once_shutdown_has_begun(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server()
    await wait_ready(http, server)
    # The shutdown handlers, run by hand: the listener stays open, so /readyz can be asked.
    await server.app.shutdown()
    assert await get(http, f"{server.url}/readyz") == (503, {"error": "The server is shutting down"})
    assert await get(http, f"{server.url}/healthz") == (200, {"status": "ok"})
