"""Socket.IO events: ``join-stream`` and friends on ``/``, and the ``/stream/{id}`` namespaces.

Every handler answers with an ack: ``{ok: true, ...}`` or ``{ok: false, error}``. A
malformed payload changes nothing and never affects other clients.

On python-socketio's path each Engine.IO session (long-polling, or WebSocket) also counts
against its client's limits: one open connection for its address until it ends (taken
over from :func:`server.transports.http_api.edge_middleware`), a rate of messages
(``SOCKET_MESSAGE_RATE``: an event or namespace CONNECT over it gets ``{ok: false,
error}`` or CONNECT_ERROR and does nothing else), and ``HANDSHAKE_TIMEOUT`` to connect a
namespace, after which it is closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import socketio
from pydantic import ValidationError

from server.core.commands import EVENT_ACTIONS, session_command
from server.core.errors import StoreUnavailable
from server.core.manager import StreamingSessionManager
from server.core.models import JoinIn, Resume, parse_resume, parse_session_id
from server.core.session_view import SessionView
from server.core.sessions import SessionFull, Viewer
from server.guards.auth import FORBIDDEN, Authenticator, Identity, Unauthorized, may_control, may_view
from server.guards.ratelimit import Limits, TokenBucket
from server.transports.engineio_adapter import (
    aiohttp_request,
    close_engineio_session,
    engineio_sid,
    has_namespace,
    on_engineio_sessions,
)
from server.transports.http_api import ConnectionSlot, engineio_slot_key
from server.transports.socketio_viewer import SocketIOViewer
from server.transports.wire.socketio import Ack, error_ack

log = logging.getLogger(__name__)

STREAM_NAMESPACE_PREFIX = "/stream/"
SESSION_NOT_FOUND = "Session not found"
#: The ack of an event whose packet is no ``[name, ...args]`` with a string name.
MALFORMED_EVENT = "Malformed event"
TOO_MANY_MESSAGES = "Too many messages on this connection (SOCKET_MESSAGE_RATE)"


def _session_ref(data: object) -> tuple[str, Resume]:
    """A ``sessionId`` or ``{sessionId, lastSeq?, epoch?, snapshot?}``; raises ``ValueError``
    with a clear message."""
    if isinstance(data, dict):
        try:
            ref = JoinIn.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "payload"
            raise ValueError(f"Invalid {where}: {first['msg']}") from None
        return ref.session_id, Resume(ref.last_seq, ref.epoch, ref.snapshot)
    session_id = parse_session_id(data)
    if session_id is None:
        raise ValueError("Expected a sessionId (a session UUID) or {sessionId, lastSeq}")
    return session_id, Resume()


Handler = Callable[..., Awaitable[Ack]]


def _guarded(handler: Handler) -> Handler:
    """Turn any unexpected exception into an ``ok: false`` ack instead of a silent drop."""

    async def wrapper(*args: Any) -> Ack:
        try:
            return await handler(*args)
        except Exception:
            log.exception("socket handler %s failed", handler.__name__)
            return error_ack("Internal server error")

    wrapper.__name__ = handler.__name__
    return wrapper


class ReleasableViewer(Viewer, Protocol):
    """A viewer that holds what it is sent until the client has its CONNECT or ack."""

    def release(self) -> None: ...


class ConnectRefused(Exception):
    """A ``/stream/{id}`` namespace refuses the connection (sent as CONNECT_ERROR)."""


@dataclass(slots=True)
class _EngineIOSession:
    """What one of python-socketio's Engine.IO sessions holds against its client's limits."""

    #: Its messages' rate (``None``: unlimited).
    messages: TokenBucket | None
    #: Its place among its address's connections (``None``: not counted).
    slot: ConnectionSlot | None
    #: ``HANDSHAKE_TIMEOUT``: when it is closed unless it has connected a namespace.
    deadline: asyncio.TimerHandle


class SocketAPI:
    """The Socket.IO events, independent of the connection that carries them.

    Two transports feed it: python-socketio (long-polling, and WebSockets upgraded from
    it) through the handlers registered here, and :mod:`server.transports.sio_direct` for clients
    that open a WebSocket straight away. Both call the same methods, so both behave
    the same on the wire.
    """

    def __init__(
        self,
        sio: socketio.AsyncServer,
        manager: StreamingSessionManager,
        authenticator: Authenticator,
        limits: Limits | None = None,
    ) -> None:
        self.sio = sio
        self.manager = manager
        self.authenticator = authenticator
        #: The app's rate limits (``None``: unlimited); python-socketio's path only, the
        #: direct path applies them itself.
        self.limits = limits
        #: python-socketio's Engine.IO sessions, by Engine.IO sid.
        self._engineio: dict[str, _EngineIOSession] = {}
        #: Sessions being closed for ``HANDSHAKE_TIMEOUT`` (kept from the garbage collector).
        self._closing: set[asyncio.Task[None]] = set()
        #: Namespace ``/``: each connection's identity (``None``: access is open).
        self._identities: dict[str, Identity | None] = {}
        #: Namespace ``/``: what each connection joined (connection key -> session id -> ...).
        self._joined: dict[str, dict[str, tuple[SessionView, Viewer]]] = {}
        #: ``/stream/{id}`` namespaces: (namespace, viewer key) -> its session, viewer and identity.
        self._stream_viewers: dict[tuple[str, str], tuple[SessionView, Viewer, Identity | None]] = {}

        sio.on("*", _guarded(self._sio_root_event), namespace="/")
        sio.on("disconnect", self._sio_root_disconnect, namespace="/")
        sio.on("connect", self._sio_connect, namespace="*")
        sio.on("disconnect", self._sio_disconnect, namespace="*")
        sio.on("*", _guarded(self._sio_stream_event), namespace="*")
        on_engineio_sessions(sio, self._eio_opened, self._eio_closed)

    def _identity(self, auth: object) -> Identity | None:
        """The identity in a handshake's ``auth: {token}``; :class:`ConnectRefused` when a
        token is needed and this one is missing or invalid."""
        token = auth.get("token") if isinstance(auth, dict) else None
        try:
            return self.authenticator.verify(token)
        except Unauthorized as exc:
            raise ConnectRefused(str(exc)) from None

    def connect_root(self, conn: str, auth: object) -> None:
        """Connection ``conn`` connects to namespace ``/`` (raises :class:`ConnectRefused`)."""
        self._identities[conn] = self._identity(auth)

    async def _lookup(self, data: object) -> tuple[SessionView, Resume]:
        session_id, resume = _session_ref(data)
        session = await self.manager.find(session_id)
        if session is None:
            raise LookupError(SESSION_NOT_FOUND)
        return session, resume

    # -- namespace "/" ------------------------------------------------------

    async def root_event(
        self,
        conn: str,
        event: str,
        args: Sequence[object],
        make_viewer: Callable[[], ReleasableViewer],
    ) -> Ack:
        """One event on namespace ``/`` from connection ``conn``; returns its ack."""
        if not isinstance(event, str):  # python-socketio passes any JSON value as the name
            return error_ack(MALFORMED_EVENT)
        payload = args[0] if args else None
        try:
            if event == "join-stream":
                return await self._join(conn, payload, make_viewer)
            if event == "leave-stream":
                return await self._leave(conn, payload)
            action = EVENT_ACTIONS.get(event)
            if action is None:
                return error_ack(f"Unknown event {event[:64]!r}")
            session, _ = await self._lookup(payload)
        except (ValueError, LookupError, StoreUnavailable) as exc:
            return error_ack(str(exc))
        if not may_control(self._identities.get(conn), session.user_id):
            return error_ack(FORBIDDEN)
        return await session_command(session, action)

    async def _join(self, conn: str, payload: object, make_viewer: Callable[[], ReleasableViewer]) -> Ack:
        session, resume = await self._lookup(payload)
        if not may_view(self._identities.get(conn), session.user_id):
            return error_ack(FORBIDDEN)
        viewer = make_viewer()
        try:
            position = session.add_viewer(
                viewer, resume.last_seq, epoch=resume.epoch, snapshot=resume.snapshot
            )
        except SessionFull as exc:
            return error_ack(str(exc))
        self._joined.setdefault(conn, {})[session.id] = (session, viewer)
        # The ack goes out as the event's handler returns; the replay follows it.
        asyncio.get_running_loop().call_soon(viewer.release)
        return {"ok": True, **position}

    async def _leave(self, conn: str, payload: object) -> Ack:
        session_id, _ = _session_ref(payload)
        joined = self._joined.get(conn, {}).pop(session_id, None)
        if joined is None:
            await self._lookup(payload)  # an unknown session is an error, as on join
            return {"ok": True}
        session, viewer = joined
        session.remove_viewer(viewer.key)
        return {"ok": True}

    def root_closed(self, conn: str) -> None:
        """Connection ``conn`` left namespace ``/``: it stops watching what it joined."""
        self._identities.pop(conn, None)
        for session, viewer in self._joined.pop(conn, {}).values():
            session.remove_viewer(viewer.key)

    # -- namespaces "/stream/{id}" ------------------------------------------

    async def _namespace_session(self, namespace: str) -> SessionView | None:
        if not namespace.startswith(STREAM_NAMESPACE_PREFIX):
            return None
        session_id = parse_session_id(namespace[len(STREAM_NAMESPACE_PREFIX) :])
        return await self.manager.find(session_id) if session_id else None

    async def attach(self, namespace: str, auth: object, viewer: Viewer) -> None:
        """A client connects to ``/stream/{id}``: resume from ``auth`` (``lastSeq``, ``epoch``,
        ``snapshot``) and keep it live.

        Raises :class:`ConnectRefused` with the reason the client is told.
        """
        fields = auth if isinstance(auth, dict) else {}
        identity = self._identity(auth)
        try:
            resume = parse_resume(fields.get("lastSeq"), fields.get("epoch"), fields.get("snapshot", False))
            session = await self._namespace_session(namespace)
        except (ValueError, StoreUnavailable) as exc:
            raise ConnectRefused(str(exc)) from None
        if session is None:
            raise ConnectRefused(SESSION_NOT_FOUND)
        if not may_view(identity, session.user_id):
            raise ConnectRefused(FORBIDDEN)
        try:
            session.add_viewer(viewer, resume.last_seq, epoch=resume.epoch, snapshot=resume.snapshot)
        except SessionFull as exc:
            raise ConnectRefused(str(exc)) from None
        self._stream_viewers[(namespace, viewer.key)] = (session, viewer, identity)

    def detach(self, namespace: str, key: str) -> None:
        """The viewer ``key`` left ``namespace`` (or its connection closed)."""
        attached = self._stream_viewers.pop((namespace, key), None)
        if attached is not None:
            attached[0].remove_viewer(key)

    async def stream_event(self, namespace: str, key: str, event: str) -> Ack:
        """One event from viewer ``key`` on a ``/stream/{id}`` namespace; the namespace
        names the session."""
        if not isinstance(event, str):
            return error_ack(MALFORMED_EVENT)
        action = EVENT_ACTIONS.get(event)
        if action is None:
            return error_ack(f"Unknown event {event[:64]!r}")
        try:
            session = await self._namespace_session(namespace)
        except StoreUnavailable as exc:
            return error_ack(str(exc))
        if session is None:
            return error_ack(SESSION_NOT_FOUND)
        attached = self._stream_viewers.get((namespace, key))
        if attached is None and self.authenticator.enabled:
            return error_ack(FORBIDDEN)
        if not may_control(attached[2] if attached is not None else None, session.user_id):
            return error_ack(FORBIDDEN)
        return await session_command(session, action)

    def viewers(self) -> int:
        return len(self._stream_viewers) + sum(len(v) for v in self._joined.values())

    # -- python-socketio's handlers -----------------------------------------

    def _eio_opened(self, eio_sid: str, environ: dict[str, Any]) -> None:
        request = aiohttp_request(environ)
        slot = request.pop(engineio_slot_key, None) if request is not None else None
        deadline = asyncio.get_running_loop().call_later(
            self.manager.settings.handshake_timeout, self._eio_handshake_expired, eio_sid
        )
        messages = self.limits.message_bucket() if self.limits is not None else None
        self._engineio[eio_sid] = _EngineIOSession(messages, slot, deadline)

    def _eio_closed(self, eio_sid: str) -> None:
        session = self._engineio.pop(eio_sid, None)
        if session is None:
            return
        session.deadline.cancel()
        if session.slot is not None:
            session.slot.release()

    def _eio_handshake_expired(self, eio_sid: str) -> None:
        if eio_sid not in self._engineio or has_namespace(self.sio, eio_sid):
            return
        log.debug("engine.io session closed: no namespace connected within HANDSHAKE_TIMEOUT")
        task = asyncio.get_running_loop().create_task(close_engineio_session(self.sio, eio_sid))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _sio_over_rate(self, sid: str, namespace: str) -> bool:
        """One more message on Socket.IO connection ``sid``: whether its Engine.IO session
        is over ``SOCKET_MESSAGE_RATE`` (counted)."""
        eio_sid = engineio_sid(self.sio, sid, namespace)
        session = self._engineio.get(eio_sid) if eio_sid is not None else None
        if session is None or session.messages is None or self.limits is None:
            return False
        return not self.limits.message_allowed(session.messages)

    async def _sio_root_event(self, event: str, sid: str, *args: object) -> Ack:
        if self._sio_over_rate(sid, "/"):
            return error_ack(TOO_MANY_MESSAGES)
        return await self.root_event(sid, event, args, lambda: SocketIOViewer(self.sio, sid, "/"))

    async def _sio_root_disconnect(self, sid: str, *args: object) -> None:
        self.root_closed(sid)

    async def _sio_connect(
        self, namespace: str, sid: str, environ: dict[str, Any], auth: object = None
    ) -> bool:
        if self._sio_over_rate(sid, namespace):
            raise socketio.exceptions.ConnectionRefusedError(TOO_MANY_MESSAGES)
        try:
            if namespace == "/":
                self.connect_root(sid, auth)
                return True
            viewer = SocketIOViewer(self.sio, sid, namespace)
            await self.attach(namespace, auth, viewer)
        except ConnectRefused as exc:
            raise socketio.exceptions.ConnectionRefusedError(str(exc)) from None
        # The CONNECT packet goes out as this handler returns; the replay follows it.
        asyncio.get_running_loop().call_soon(viewer.release)
        return True

    async def _sio_disconnect(self, namespace: str, sid: str, *args: object) -> None:
        self.detach(namespace, f"sio:{namespace}:{sid}")

    async def _sio_stream_event(self, event: str, namespace: str, sid: str, *args: object) -> Ack:
        if self._sio_over_rate(sid, namespace):
            return error_ack(TOO_MANY_MESSAGES)
        return await self.stream_event(namespace, f"sio:{namespace}:{sid}", event)
