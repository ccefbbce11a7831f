"""``GET /collab/{documentId}``: the y-websocket protocol over aiohttp's WebSocket, so that
``new WebsocketProvider('ws://host/collab', documentId, ydoc)`` from the npm
``y-websocket`` package (and Tiptap's Collaboration extension on it) joins the document.

Everything that refuses a client before the upgrade is an ordinary JSON answer: 400 for a
``documentId`` that is not 1 to 128 characters of ``A-Z a-z 0-9 . _ : -`` or a request
that is no WebSocket upgrade, 401 without a valid ``?token=`` (access control on), 403
when the token's ``docs`` claim does not list the document, 429 past
``COLLAB_MAX_CONNECTIONS_PER_DOCUMENT`` (or ``MAX_CONNECTIONS_PER_ADDRESS``), 503 when the
document store cannot be read. The room (``server.collab.rooms``) serves the rest.

``GET /api/collab/{documentId}?format=markdown|json|text`` exports a document as it stands
(``json``: Tiptap's ``getJSON()`` shape); 404 for a document never written.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from aiohttp import WSMsgType, web
from pycrdt import Doc

from server.collab.export import document_json, document_markdown, document_text
from server.collab.rooms import CLOSE_UNSUPPORTED, Client, DocumentRooms, RoomFull, valid_document_id
from server.guards.auth import FORBIDDEN, may_edit_document
from server.transports.http_api import (
    ApiError,
    acquire_connection,
    identity_of,
    json_response,
    settings_key,
)
from server.transports.ws_api import websockets_key

log = logging.getLogger(__name__)

#: The documents of this process, one room each.
collab_rooms_key = web.AppKey("collab_rooms", DocumentRooms)

#: Seconds between pings to a client (a dead connection is noticed within about twice that).
HEARTBEAT = 30.0
#: Longest close reason sent (RFC 6455 allows 123 bytes).
MAX_REASON_BYTES = 120

INVALID_DOCUMENT_ID = "Invalid documentId: 1 to 128 characters of A-Z a-z 0-9 . _ : -"


class WebSocketChannel(Client):
    """One aiohttp WebSocket as pycrdt's ``Channel``: binary frames in and out. A text
    frame is no y-websocket message: it closes the client (1003)."""

    __slots__ = ("_path", "_ws")

    def __init__(self, ws: web.WebSocketResponse, path: str) -> None:
        self._ws = ws
        self._path = path

    @property
    def path(self) -> str:
        return self._path

    async def recv(self) -> bytes:
        message = await self._ws.receive()
        if message.type is WSMsgType.BINARY:
            data: bytes = message.data
            return data
        if message.type is WSMsgType.TEXT:
            await self.close(CLOSE_UNSUPPORTED, "y-websocket messages are binary frames")
        # CLOSE, CLOSED, ERROR (aiohttp closed it already, e.g. 1009 past the message size).
        raise StopAsyncIteration

    async def send(self, message: bytes) -> None:
        if self._ws.closed:
            return
        with contextlib.suppress(ConnectionError):  # closing: the receiving side ends it
            await self._ws.send_bytes(message)

    async def close(self, code: int, reason: str) -> None:
        await self._ws.close(code=code, message=reason.encode()[:MAX_REASON_BYTES])


async def collab_socket(request: web.Request) -> web.StreamResponse:
    """``GET /collab/{documentId}[?token=T]``: upgrade and serve the document's room."""
    document_id = request.match_info["document_id"]
    if not valid_document_id(document_id):
        raise ApiError(400, INVALID_DOCUMENT_ID)
    if not may_edit_document(identity_of(request, query_token=True), document_id):
        raise ApiError(403, FORBIDDEN)
    ws = web.WebSocketResponse(
        heartbeat=HEARTBEAT,
        max_msg_size=request.app[settings_key].collab_max_message_bytes,
        compress=False,
    )
    if not ws.can_prepare(request).ok:
        raise ApiError(400, "Expected a WebSocket upgrade (the y-websocket protocol)")
    slot = acquire_connection(request)
    try:
        try:
            connection = request.app[collab_rooms_key].connect(document_id)
        except RoomFull as exc:
            raise ApiError(429, str(exc)) from None
        async with connection as room:
            await ws.prepare(request)
            sockets = request.app[websockets_key]
            sockets.add(ws)
            try:
                await room.serve_client(WebSocketChannel(ws, document_id))
            finally:
                sockets.discard(ws)
                await ws.close()
    finally:
        slot.release()
    return ws


#: An update of a document that holds nothing (``Doc().get_update()``).
_EMPTY_UPDATE = Doc().get_update()
EXPORT_FORMATS = ("markdown", "json", "text")


async def export_document(request: web.Request) -> web.Response:
    """``GET /api/collab/{documentId}?format=markdown|json|text`` (``markdown`` by default)."""
    document_id = request.match_info["document_id"]
    if not valid_document_id(document_id):
        raise ApiError(400, INVALID_DOCUMENT_ID)
    if not may_edit_document(identity_of(request, query_token=True), document_id):
        raise ApiError(403, FORBIDDEN)
    kind = request.query.get("format", "markdown")
    if kind not in EXPORT_FORMATS:
        raise ApiError(400, "format must be markdown, json or text")
    rooms = request.app[collab_rooms_key]
    room = rooms.loaded(document_id)
    doc: Doc[Any]
    if room is not None and room.doc.get_update() != _EMPTY_UPDATE:
        doc = room.doc
    else:
        stored = await rooms.store.read(document_id)
        if stored is None:
            raise ApiError(404, "Document not found")
        doc = Doc()
        doc.apply_update(stored)
    if kind == "json":
        return json_response(document_json(doc))
    text = document_markdown(doc) if kind == "markdown" else document_text(doc)
    content_type = "text/markdown" if kind == "markdown" else "text/plain"
    return web.Response(text=text, content_type=content_type, charset="utf-8")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/collab/{document_id}", export_document)
    # Any path under /collab/, so that an invalid id gets 400 rather than 404.
    app.router.add_get("/collab/{document_id:.*}", collab_socket)
