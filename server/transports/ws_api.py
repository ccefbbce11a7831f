"""The plain WebSocket at ``wsEndpoint`` (``/ws/stream/{id}``), for clients without Socket.IO.

Each event is one JSON text frame ``{"type": event, ...payload}``. The client may send
``{"type": "pause" | "resume" | "cancel"}``; each gets an ``ack`` frame.

Each socket counts as one open connection of its client's address
(``MAX_CONNECTIONS_PER_ADDRESS``: 429 before the upgrade at the limit), and its frames
are limited in rate (``SOCKET_MESSAGE_RATE``): a frame over the rate is answered with an
``ack`` frame ``{ok: false, error: "Too many messages ..."}`` and does nothing else, as
Socket.IO acks it; the connection stays open.
"""

from __future__ import annotations

import json
import logging

from aiohttp import WSCloseCode, WSMsgType, web

from server.core.commands import Action, session_command
from server.core.models import Resume, encode_json
from server.core.session_view import SessionView
from server.core.sessions import Payload, SessionFull
from server.guards.auth import FORBIDDEN, may_control
from server.guards.ratelimit import limits_key
from server.transports.http_api import (
    acquire_connection,
    ensure_viewer_room,
    identity_of,
    session_of,
    viewer_resume,
)
from server.transports.queued_viewer import QueuedViewer
from server.transports.socket_api import TOO_MANY_MESSAGES
from server.transports.wire.socketio import error_ack

log = logging.getLogger(__name__)

#: The open plain WebSockets, closed on shutdown.
websockets_key = web.AppKey("websockets", set[web.WebSocketResponse])

#: Frames from clients are tiny commands; anything bigger is refused by aiohttp.
MAX_CLIENT_FRAME_BYTES = 4096


class WebSocketViewer(QueuedViewer):
    """One plain WebSocket watching one session: each event is a JSON text frame."""

    #: The ``transport`` label of ``/metrics``.
    transport_label = "websocket"

    __slots__ = ("_ws",)

    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        super().__init__(f"ws:{id(ws)}", request)
        self._ws = ws

    def encode(self, event: str, payload: Payload) -> str:
        return encode_json({"type": event, **payload})

    async def write(self, data: bytes | str) -> bool:
        if self._ws.closed:
            return False
        await self._ws.send_str(str(data))
        return True


#: The command frames a client may send: ``{"type": <action>}``.
_FRAME_ACTIONS = {action.value: action for action in Action}


async def _handle_command(session: SessionView, frame: object, may: bool, within_rate: bool) -> Payload:
    """One command frame from the client (``may``: it is the owner's; ``within_rate``: not
    over ``SOCKET_MESSAGE_RATE``); the ack frame carries its ``action``."""
    name = frame.get("type") if isinstance(frame, dict) else None
    action = _FRAME_ACTIONS.get(name) if isinstance(name, str) else None
    base: Payload = {"action": name if isinstance(name, str) else None}
    if not within_rate:
        return {**base, **error_ack(TOO_MANY_MESSAGES)}
    if action is None:
        return {**base, **error_ack('Expected {"type": "pause" | "resume" | "cancel"}')}
    if not may:
        return {**base, **error_ack(FORBIDDEN)}
    return {**base, **await session_command(session, action)}


async def stream_socket(request: web.Request) -> web.StreamResponse:
    """``GET /ws/stream/{sessionId}[?lastSeq=N&epoch=E&token=T]``: upgrade and stream the
    session's events."""
    session = await session_of(request, query_token=True)
    owner = may_control(identity_of(request, query_token=True), session.user_id)
    resume = viewer_resume(request)
    ensure_viewer_room(session)
    slot = acquire_connection(request)
    try:
        return await _run_socket(request, session, owner, resume)
    finally:
        slot.release()


async def _run_socket(
    request: web.Request, session: SessionView, owner: bool, resume: Resume
) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(heartbeat=30, max_msg_size=MAX_CLIENT_FRAME_BYTES, compress=False)
    await ws.prepare(request)
    viewer = WebSocketViewer(ws, request)
    try:
        session.add_viewer(viewer, resume.last_seq, epoch=resume.epoch, snapshot=resume.snapshot)
    except SessionFull as exc:
        await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=str(exc).encode()[:120])
        return ws
    limits = request.app[limits_key]
    messages = limits.message_bucket()
    sockets = request.app[websockets_key]
    sockets.add(ws)
    try:
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                continue
            within_rate = limits.message_allowed(messages)
            try:
                frame = json.loads(msg.data)
            except ValueError:
                frame = None
            viewer.send("ack", await _handle_command(session, frame, owner, within_rate))
    except ConnectionError:
        pass
    finally:
        sockets.discard(ws)
        session.remove_viewer(viewer.key)
    return ws
