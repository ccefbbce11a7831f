"""The app factory: builds the aiohttp application with Socket.IO attached. Wiring only."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import socketio
from aiohttp import WSCloseCode, web

from providers.base import AIProvider
from server.collab.peer import DocumentPeers, PeerIdentity
from server.collab.rooms import DocumentRooms, RoomLimits
from server.collab.stores import DocumentStore, MemoryDocumentStore, SQLiteDocumentStore
from server.core.manager import StreamingSessionManager
from server.core.registry import InMemorySessionRegistry
from server.guards.auth import Authenticator, OriginPolicy
from server.guards.metrics import build_registry
from server.guards.ratelimit import Limits, limits_key
from server.settings import Settings
from server.transports.collab_api import add_routes as add_collab_routes
from server.transports.collab_api import collab_rooms_key
from server.transports.http_api import (
    add_routes,
    authenticator_key,
    edge_middleware,
    manager_key,
    settings_key,
    upgrades_key,
)
from server.transports.openapi import add_openapi_route
from server.transports.ops_api import add_routes as add_ops_routes
from server.transports.ops_api import draining_key
from server.transports.sio_direct import DirectHub
from server.transports.socket_api import SocketAPI
from server.transports.sse_api import add_routes as add_sse_routes
from server.transports.ws_api import stream_socket, websockets_key

log = logging.getLogger(__name__)

sio_key = web.AppKey("sio", socketio.AsyncServer)
#: The AI peers of this process (``server.collab.peer``).
collab_peers_key = web.AppKey("collab_peers", DocumentPeers)
socket_api_key = web.AppKey("socket_api", SocketAPI)
#: Direct Socket.IO WebSockets (``server.transports.sio_direct``), when ``SOCKETIO_DIRECT_WEBSOCKET`` is on.
direct_hub_key = web.AppKey("direct_hub", DirectHub)

_NOT_BUILT = """<!doctype html><meta charset="utf-8"><title>Streaming server</title>
<p>The API is running. The demo page is not built: run <code>make dev</code>
(or <code>npm run build</code> in <code>frontend/</code>).</p>"""


def create_app(
    settings: Settings | None = None,
    *,
    providers: Mapping[str, AIProvider] | None = None,
    document_store: DocumentStore | None = None,
) -> web.Application:
    """Build the whole server: HTTP API, Socket.IO, plain WebSocket, collaborative
    documents and the demo page.

    ``providers`` replaces the built-in providers of those names with ready instances
    (tests use it to count pulls or script failures); ``document_store`` replaces the
    store of collaborative documents that ``COLLAB_STORE`` names.
    """
    settings = settings or Settings()
    app = web.Application(
        middlewares=[edge_middleware(OriginPolicy(settings.cors_origins))],
        client_max_size=max(settings.max_body_bytes, settings.max_socket_message_bytes),
    )
    manager = StreamingSessionManager(settings, InMemorySessionRegistry(), providers)
    app[settings_key] = settings
    app[manager_key] = manager
    limits = Limits.from_settings(settings)
    app[limits_key] = limits

    # One origin policy for HTTP, python-socketio and the direct WebSocket path.
    policy = OriginPolicy(settings.cors_origins)
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        cors_allowed_origins="*" if policy.any else _engineio_origins(policy),
        namespaces="*",
        max_http_buffer_size=settings.max_socket_message_bytes,
        ping_interval=settings.socketio_ping_interval,
        ping_timeout=settings.socketio_ping_timeout,
    )
    sio.attach(app)
    app[sio_key] = sio
    authenticator = Authenticator(settings)
    app[authenticator_key] = authenticator
    if not authenticator.enabled and not _loopback(settings.host):
        log.warning(
            "listening on %s with access open: anyone who can reach it may create sessions and "
            "spend the provider's credits; set AUTH_JWT_SECRET or AUTH_JWT_PUBLIC_KEY",
            settings.host,
        )
    api = SocketAPI(sio, manager, authenticator, limits)
    app[socket_api_key] = api
    if settings.socketio_direct_websocket:
        app[direct_hub_key] = DirectHub(
            api,
            ping_interval=settings.socketio_ping_interval,
            ping_timeout=settings.socketio_ping_timeout,
            max_payload=settings.max_socket_message_bytes,
            origins=None if policy.any else policy.allows,
            idle_timeout=settings.keepalive_timeout,
            limits=limits,
            handshake_timeout=settings.handshake_timeout,
            max_partial_total=settings.max_partial_message_bytes_total,
            max_packets_per_turn=settings.max_packets_per_turn,
        )
    app[websockets_key] = set()
    app[upgrades_key] = set()
    app[shutdown_key] = Shutdown()
    rooms = app[collab_rooms_key] = DocumentRooms(
        document_store or _document_store(settings), RoomLimits.from_settings(settings)
    )
    # The AI as a peer: sessions whose start names a ``target`` write into that document.
    peers = app[collab_peers_key] = DocumentPeers(
        rooms,
        flush_interval=settings.collab_flush_ms / 1000,
        identity=PeerIdentity(settings.collab_ai_name, settings.collab_ai_color),
    )
    manager.on_target = peers.attach
    # First in, last out: documents are stored after the sessions that write into them end.
    app.cleanup_ctx.append(_collab_ctx)

    if settings.redis_mode:
        # Imported here: outside Redis mode nothing of Redis is loaded.
        from server.cluster.coordinator import Cluster

        manager.cluster = Cluster(settings, manager)
        app.cleanup_ctx.append(_cluster_ctx)
        # The per-user and per-address limits hold for the cluster as a whole.
        from server.cluster.redis_limits import RedisLimits

        shared = RedisLimits(
            manager.cluster.store,
            manager.cluster.pid,
            limits,
            lease=settings.owner_lease_seconds,
            timeout=settings.redis_timeout,
        )
        app.cleanup_ctx.append(lambda _: shared.run())
    app.cleanup_ctx.append(_sessions_ctx)

    add_routes(app)
    add_sse_routes(app)
    add_openapi_route(app)
    add_ops_routes(app, build_registry(manager))
    app.router.add_get("/ws/stream/{session_id}", stream_socket)
    add_collab_routes(app)
    _add_frontend(app, settings)
    app.on_shutdown.append(_on_shutdown)
    return app


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _engineio_origins(policy: OriginPolicy) -> Callable[[str | None, dict[str, Any]], bool]:
    """The origin policy as python-engineio calls it (with the WSGI-style environ)."""

    def allowed(origin: str | None, environ: dict[str, Any]) -> bool:
        return policy.allows(origin, environ.get("HTTP_HOST"))

    return allowed


def _add_frontend(app: web.Application, settings: Settings) -> None:
    index = settings.static_dir / "index.html"

    async def serve_index(request: web.Request) -> web.StreamResponse:
        if index.is_file():
            return web.FileResponse(index)
        return web.Response(text=_NOT_BUILT, content_type="text/html")

    app.router.add_get("/", serve_index)
    assets = settings.static_dir / "assets"
    if assets.is_dir():
        app.router.add_static("/assets", assets)


def _document_store(settings: Settings) -> DocumentStore:
    """Where collaborative documents persist: Redis in Redis mode (any process serves any
    document), else ``COLLAB_STORE``."""
    if settings.redis_mode:
        # Imported here: outside Redis mode nothing of Redis is loaded.
        from server.cluster.collab_store import RedisDocumentStore
        from server.cluster.redis_store import RedisLink, RedisTarget

        # Its own link to the primary (with Sentinels, followed through failovers).
        link = RedisLink(RedisTarget.from_settings(settings), timeout=settings.redis_timeout)
        return RedisDocumentStore(
            None, process_id=secrets.token_hex(6), timeout=settings.redis_timeout, link=link
        )
    if settings.collab_store == "memory":
        return MemoryDocumentStore()
    return SQLiteDocumentStore(
        settings.collab_data_dir,
        squash_after=settings.collab_squash_after,
        open_documents=settings.collab_sqlite_open_documents,
    )


async def _collab_ctx(app: web.Application) -> AsyncIterator[None]:
    """Collaborative documents: on the way out, store what is not stored yet (within a
    share of ``SHUTDOWN_TIMEOUT``), stop the rooms, close the store."""
    yield
    # The sessions have ended (or moved to another process): each peer writes what it holds.
    await app[collab_peers_key].close()
    budget = app[settings_key].shutdown_timeout * (1 - SHUTDOWN_SHARE - HANDLERS_SHARE)
    await app[collab_rooms_key].close(grace=budget)


async def _cluster_ctx(app: web.Application) -> AsyncIterator[None]:
    """Redis mode: the journal writer, relay, lease and inbox loops (stopped after the
    sessions' own context, so that their last entries are written)."""
    cluster = app[manager_key].cluster
    assert cluster is not None
    async for _ in cluster.run():
        yield


async def _sessions_ctx(app: web.Application) -> AsyncIterator[None]:
    """Run the expiry sweeper, the pacer and the direct sockets' heartbeat for the app's
    lifetime; end live sessions on the way out."""
    manager = app[manager_key]
    loop = asyncio.get_running_loop()
    background = [loop.create_task(manager.run_sweeper()), loop.create_task(manager.run_pacer())]
    hub = app.get(direct_hub_key)
    if hub is not None:
        background.append(loop.create_task(hub.run_heartbeat()))
    yield
    for task in background:
        task.cancel()
    await asyncio.gather(*background, return_exceptions=True)
    await manager.shutdown()
    await manager.close_providers()


#: Shares of ``SHUTDOWN_TIMEOUT``: the graceful steps below end by ``SHUTDOWN_SHARE`` of
#: it; in-flight HTTP handlers then get ``HANDLERS_SHARE`` (``server.runner``), and the
#: cleanup what is left. ``python -m server`` stops waiting at the whole timeout.
SHUTDOWN_SHARE = 0.75
HANDLERS_SHARE = 0.15


class Shutdown:
    """When the shutdown began, and its draining part, run once (:func:`drain`)."""

    __slots__ = ("drained", "started")

    def __init__(self) -> None:
        self.started: float | None = None
        self.drained: asyncio.Task[None] | None = None


shutdown_key = web.AppKey("shutdown", Shutdown)


async def drain(app: web.Application) -> None:
    """The first part of a shutdown, while the listener still takes connections: end
    every live stream (``shutdown``, or hand-over in Redis mode) and let the viewers
    receive it. A long-polling client needs a new request for its last packets, so
    ``python -m server`` calls this before it closes the listener; the shutdown
    handlers call it too (once only)."""
    state = app[shutdown_key]
    if state.drained is None:
        state.started = asyncio.get_running_loop().time()
        state.drained = asyncio.get_running_loop().create_task(_drain(app, state.started))
    await asyncio.shield(state.drained)


def _by(app: web.Application, start: float, share: float) -> contextlib.AbstractAsyncContextManager[None]:
    """The part of the shutdown's graceful budget up to ``share`` of it."""
    budget = app[settings_key].shutdown_timeout * SHUTDOWN_SHARE
    return _within(start + budget * share)


async def _drain(app: web.Application, start: float) -> None:
    app[draining_key].set()  # /readyz: 503 from now on
    manager = app[manager_key]
    manager.closing = True
    cluster = manager.cluster
    if cluster is not None:
        async with _by(app, start, 0.2):
            # Streams another process can resume go on there; the rest end here.
            await cluster.hand_over()
    async with _by(app, start, 0.3):
        await manager.shutdown()
    if cluster is not None:
        async with _by(app, start, 0.4):
            await cluster.written()
        async with _by(app, start, 0.5):
            await cluster.leave()
    async with _by(app, start, 0.75):
        await _flushed(app)


async def _on_shutdown(app: web.Application) -> None:
    """Tell every viewer the stream ends with ``shutdown``, let it flush (:func:`drain`),
    then disconnect.

    Open connections would otherwise keep aiohttp waiting for the whole shutdown timeout.
    Every step has its share of ``SHUTDOWN_TIMEOUT`` (a step late on 400 busy sessions
    must not push the others past it): what is not done by then is dropped.
    """
    await drain(app)
    started = app[shutdown_key].started
    assert started is not None
    settings = app[settings_key]
    loop = asyncio.get_running_loop()
    hub = app.get(direct_hub_key)
    if hub is not None:
        hub.close_all()
    sio = app[sio_key]
    websockets: set[web.WebSocketResponse] = app[websockets_key]
    async with _by(app, started, 1.0):
        # One disconnect per Engine.IO socket: ``eio.disconnect()`` for all of them
        # fails when the last client leaves by itself in the meantime.
        await asyncio.gather(
            *(ws.close(code=WSCloseCode.GOING_AWAY) for ws in tuple(websockets)),
            *(sio.eio.disconnect(eio_sid) for eio_sid in tuple(sio.eio.sockets)),
            return_exceptions=True,
        )
    async with _within(loop.time() + settings.shutdown_timeout * 0.05):
        await sio.shutdown()
    # Engine.IO leaves its WebSocket handlers waiting for the client's close frame;
    # everything was said, so drop what is left rather than wait for aiohttp's timeout.
    upgrades: set[asyncio.Transport] = app[upgrades_key]
    for transport in tuple(upgrades):
        transport.abort()


@contextlib.asynccontextmanager
async def _within(deadline: float) -> AsyncIterator[None]:
    """Run the block until ``deadline`` (the loop's clock), then go on without it."""
    try:
        async with asyncio.timeout_at(deadline):
            yield
    except TimeoutError:
        log.warning("shutdown: a step ran out of its share of SHUTDOWN_TIMEOUT; going on without it")


async def _flushed(app: web.Application) -> None:
    # Backlogs have no "drained" event (Engine.IO's queue is not ours): poll briefly.
    while any(  # noqa: ASYNC110
        viewer.backlog() for session in app[manager_key].registry for viewer in session.viewers.values()
    ):
        await asyncio.sleep(0.02)
