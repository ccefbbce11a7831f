"""What many test modules share: settings, a live server handle, HTTP calls and recorders."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import socketio
from aiohttp import web
from aiohttp.test_utils import TestServer

from server.core.manager import StreamingSessionManager
from server.runner import StreamingAppRunner
from server.settings import Settings
from server.transports.http_api import manager_key

WAIT = 15.0


def make_settings(**overrides: Any) -> Settings:
    """Settings for tests: demo provider at full speed, no keys from the environment."""
    values: dict[str, Any] = {
        "default_provider": "demo",
        # Collaborative documents in memory unless a test is about their persistence.
        "collab_store": "memory",
        "openai_api_key": None,
        "openai_base_url": None,
        "anthropic_api_key": None,
        "anthropic_base_url": None,
        "demo_tokens_per_second": 0,
        "log_level": "info",
        # Rate limits far above what any test does by accident (hundreds of sessions and
        # clients from one address in a second); tests/test_rate_limits.py sets small ones.
        "session_rate_per_user": 10_000.0,
        "session_burst_per_user": 10_000.0,
        "session_rate_per_address": 10_000.0,
        "session_burst_per_address": 10_000.0,
        "socket_message_rate": 10_000.0,
        "socket_message_burst": 10_000.0,
        "max_connections_per_address": 100_000,
        "handshake_rate_per_address": 10_000.0,
        "handshake_burst_per_address": 10_000.0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@dataclass
class LiveServer:
    """A running app: its base URL and its session manager (for white-box assertions)."""

    url: str
    app: web.Application

    @property
    def manager(self) -> StreamingSessionManager:
        return self.app[manager_key]

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[len("http") :]


ServerFactory = Callable[..., Awaitable[LiveServer]]


class StreamingTestServer(TestServer):
    """aiohttp's test server with the runner ``python -m server`` uses."""

    async def _make_runner(self, **kwargs: Any) -> StreamingAppRunner:
        return StreamingAppRunner(self.app, **kwargs)


async def create_session(
    http: aiohttp.ClientSession, server: LiveServer, user_id: str = "user-1", **config: Any
) -> str:
    async with http.post(
        f"{server.url}/api/streaming/session", json={"userId": user_id, "config": config}
    ) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return str(body["sessionId"])


async def start_stream(
    http: aiohttp.ClientSession, server: LiveServer, session_id: str, prompt: str = "Explain streaming"
) -> None:
    async with http.post(f"{server.url}/api/streaming/{session_id}/start", json={"prompt": prompt}) as resp:
        assert resp.status == 200, await resp.text()
        assert await resp.json() == {"status": "started"}


async def get_session(http: aiohttp.ClientSession, server: LiveServer, session_id: str) -> dict[str, Any]:
    async with http.get(f"{server.url}/api/streaming/{session_id}") as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


@dataclass
class Recorder:
    """Everything one viewer received, with a way to wait for a condition on it."""

    chunks: list[dict[str, Any]] = field(default_factory=list)
    states: list[dict[str, Any]] = field(default_factory=list)
    completes: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    resets: list[dict[str, Any]] = field(default_factory=list)
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self, event: str, payload: dict[str, Any]) -> None:
        {
            "chunk": self.chunks,
            "stream-state": self.states,
            "complete": self.completes,
            "stream-error": self.errors,
            "stream-reset": self.resets,
            "snapshot": self.snapshots,
        }[event].append(payload)
        self.changed.set()

    @property
    def seqs(self) -> list[int]:
        return [c["seq"] for c in self.chunks]

    @property
    def text(self) -> str:
        return "".join(c["content"] for c in self.chunks)

    @property
    def finished(self) -> bool:
        return bool(self.completes or self.errors)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

    async def wait_finished(self, timeout: float = WAIT) -> None:
        await self.wait_for(lambda: self.finished, timeout)


async def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    """Poll a server-side condition (no event to wait on) until it holds or ``timeout``."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


EVENTS = ("chunk", "stream-state", "complete", "stream-error", "stream-reset", "snapshot")


def record_events(client: socketio.AsyncClient, namespace: str = "/") -> Recorder:
    recorder = Recorder()
    for event in EVENTS:

        async def handler(payload: dict[str, Any], event: str = event) -> None:
            recorder.record(event, payload)

        client.on(event, handler, namespace=namespace)
    return recorder


async def stream_viewer(
    make: Callable[[], socketio.AsyncClient],
    server: LiveServer,
    session_id: str,
    auth: dict[str, Any] | None = None,
) -> tuple[socketio.AsyncClient, Recorder]:
    """Connect like the seed's client: to namespace ``/stream/<id>`` over WebSocket."""
    client = make()
    namespace = f"/stream/{session_id}"
    recorder = record_events(client, namespace)
    await client.connect(
        server.url, namespaces=[namespace], transports=["websocket"], auth=auth, wait_timeout=WAIT
    )
    return client, recorder


def assert_exactly_once(recorder: Recorder, total: int) -> None:
    assert recorder.seqs == list(range(total)), "every chunk exactly once, in order"
