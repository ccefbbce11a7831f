"""Server-Sent Events and chunk catch-up over plain HTTP, for clients without Socket.IO.

``GET /api/streaming/{id}/events`` is one more kind of viewer: the session's events as
``text/event-stream`` (``event:`` the name, ``id:`` the seq on chunks, ``data:`` the same
JSON as Socket.IO), resumable with ``Last-Event-ID`` or ``?lastSeq=``, a comment line
while idle, and the end of the response after ``complete`` or ``stream-error``. Browsers'
``EventSource`` reconnects by itself and sends ``Last-Event-ID``.

Each event stream counts as one open connection of its client's address
(``MAX_CONNECTIONS_PER_ADDRESS``: 429 before the response starts at the limit).

``GET /api/streaming/{id}/chunks?after=N&limit=M`` returns one page of the chunk log.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from server.core.models import Resume, encode_json
from server.core.session_view import SessionView
from server.core.sessions import Payload, SessionFull
from server.transports.http_api import (
    ApiError,
    acquire_connection,
    ensure_viewer_room,
    json_response,
    session_of,
    settings_key,
    settled,
    viewer_resume,
)
from server.transports.queued_viewer import QueuedViewer

log = logging.getLogger(__name__)

#: Events after which the stream ends.
TERMINAL_EVENTS = frozenset({"complete", "stream-error"})
#: Queued after the terminal event: the response ends once it is reached.
END = b""
#: How long a disconnected ``EventSource`` waits before it reconnects, in milliseconds.
RETRY_MS = 1000


def sse_event(event: str, payload: Payload) -> bytes:
    """One event in the ``text/event-stream`` format; chunks carry their seq as ``id``."""
    seq = payload.get("seq") if event == "chunk" else None
    head = f"event: {event}\nid: {seq}\n" if seq is not None else f"event: {event}\n"
    return (head + "data: " + encode_json(payload) + "\n\n").encode()


class SSEViewer(QueuedViewer):
    """One ``text/event-stream`` response watching one session."""

    #: The ``transport`` label of ``/metrics``.
    transport_label = "sse"

    __slots__ = ("_response",)

    def __init__(self, response: web.StreamResponse, request: web.Request) -> None:
        super().__init__(f"sse:{id(response)}", request)
        self._response = response

    def encode(self, event: str, payload: Payload) -> bytes:
        return sse_event(event, payload)

    def send(self, event: str, payload: Payload) -> None:
        super().send(event, payload)
        if event in TERMINAL_EVENTS:
            self._enqueue(END)

    def send_comment(self, text: str) -> None:
        """A comment line (``: text``): keeps an idle connection and its proxies open."""
        if not self.backlog():
            self._enqueue(f": {text}\n\n".encode())

    async def write(self, data: bytes | str) -> bool:
        if data == END or self.done.is_set():
            self.done.set()
            return False
        await self._response.write(bytes(data) if isinstance(data, bytes) else data.encode())
        return True


async def session_events(request: web.Request) -> web.StreamResponse:
    """``GET /api/streaming/{sessionId}/events``: the session's events as SSE."""
    session = await session_of(request, query_token=True)
    resume = viewer_resume(request, request.headers.get("Last-Event-ID"))
    ensure_viewer_room(session)
    slot = acquire_connection(request)
    try:
        return await _send_events(request, session, resume)
    finally:
        slot.release()


async def _send_events(request: web.Request, session: SessionView, resume: Resume) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            # nginx would otherwise buffer the stream.
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    await response.write(f"retry: {RETRY_MS}\n\n".encode())
    viewer = SSEViewer(response, request)
    try:
        session.add_viewer(viewer, resume.last_seq, epoch=resume.epoch, snapshot=resume.snapshot)
    except SessionFull:
        return response
    keepalive = request.app[settings_key].sse_keepalive_interval
    try:
        while not viewer.done.is_set():
            transport = request.transport
            if transport is None or transport.is_closing():
                break
            try:
                await asyncio.wait_for(viewer.done.wait(), keepalive)
            except TimeoutError:
                viewer.send_comment("keep-alive")
    finally:
        session.remove_viewer(viewer.key)
    return response


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"Invalid {name}: expected an integer") from None
    if not low <= value <= high:
        raise ApiError(400, f"Invalid {name}: must be between {low} and {high}")
    return value


async def session_chunks(request: web.Request) -> web.Response:
    """``GET /api/streaming/{sessionId}/chunks?after=N&limit=M``: one page of the log."""
    session = await settled(await session_of(request))
    most = request.app[settings_key].chunks_page_limit
    after = _int_param(request, "after", -1, -1, 2**53)
    limit = _int_param(request, "limit", most, 1, most)
    return json_response(
        {
            "sessionId": session.id,
            "epoch": session.epoch,
            "state": session.state.value,
            "lastSeq": session.last_seq,
            "chunks": session.chunks[after + 1 : after + 1 + limit],
        }
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/streaming/{session_id}/events", session_events)
    app.router.add_get("/api/streaming/{session_id}/chunks", session_chunks)
