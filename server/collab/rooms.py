"""Rooms of collaborative documents: one Yjs document each, loaded from its store, shared
by the clients connected to it over the y-websocket protocol and by the server's own
writers (the AI peer).

A room is pycrdt-websocket's ``YRoom``, which broadcasts every update of its document,
from a client or from the server, to every client. What pycrdt-websocket 0.16.5 leaves to
its users is done here (research/collab.md §2.3 and §3):

- A client joins the broadcast when it is sent the document (sync step 2), in the same
  event-loop step that encoded it, and everything it is sent goes through one queue in
  order: no update reaches it before the state it builds on (pycrdt-websocket PR #138,
  open; yjs throws "Unexpected case").
- A room is handed out once its document is loaded from the store and observed, so the
  first write to it is sent and stored (a YRoom neither loads by itself nor sees writes
  made before it observes its document: yrs #632).
- Every update is stored through the ``DocumentStore``, in order, merged into one write
  while the last one is under way. The room broadcasts updates itself: a client's at
  once (that client keeps it, and sends it again after a reconnect), the AI peer's
  (origin ``AI_ORIGIN``) only once stored, since the server is their only holder: a
  process that dies leaves no collaborator with AI text its store lost, so the process
  that takes the answer over writes no character twice. A room leaves memory only once it has had no client
  and no writer for ``COLLAB_ROOM_IDLE_TIMEOUT`` and every update is stored; the next one
  to ask for the document loads it again.
- A client that sends what does not decode, a message of a type the protocol does not
  have, or an update that would take the document past its size is closed with a code
  that says which; the document and the other clients go on.
- Awareness: a client that joins is sent every known state, and the states of one that
  leaves are removed for the others, as y-websocket's own server does. The server's own
  clients (each AI session writing, ``server.collab.peer``) announce theirs through
  :meth:`DocumentRoom.announce`. With a ``ReplicatedAwareness`` store (Redis mode), every
  change of the awareness made in this process (a client's, its removal, the server's
  own) goes to the other processes that have the document open, at most every
  ``COLLAB_AWARENESS_FLUSH_MS``, with the latest state of each client that changed; what
  they send is applied with the origin ``ORIGIN_REMOTE`` and sent to this room's
  clients, never back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

from pycrdt import (
    Channel,
    Decoder,
    Doc,
    Subscription,
    TransactionEvent,
    XmlFragment,
    YMessageType,
    YSyncMessageType,
    create_awareness_message,
    create_sync_message,
    create_update_message,
    handle_sync_message,
    merge_updates,
)
from pycrdt.websocket import YRoom

from server.collab.stores import DocumentStore, ReplicatedAwareness, ReplicatedStore
from server.collab.writer import AI_ORIGIN
from server.core.errors import StoreUnavailable
from server.settings import Settings

log = logging.getLogger(__name__)

#: ``documentId``: 1 to 128 of these characters (PROTOCOL.md).
DOCUMENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
#: The fragment Tiptap's Collaboration extension binds (its ``field`` option's default).
FRAGMENT = "default"
#: Origin of the transactions that apply updates other processes wrote (``ReplicatedStore``).
ORIGIN_REMOTE = "remote"
#: Origin of the awareness updates of the server's own clients (:meth:`DocumentRoom.announce`).
_SERVER = "server"
#: pycrdt's origin of the changes of the room's own awareness state (:meth:`set_peer_state`).
_LOCAL = "local"
#: The y-protocols message by which a client asks for every awareness state.
QUERY_AWARENESS = 3
#: The sync messages there are: step 1 (a state vector), step 2 and update (an update).
_SYNC_STEPS = frozenset(
    {YSyncMessageType.SYNC_STEP1, YSyncMessageType.SYNC_STEP2, YSyncMessageType.SYNC_UPDATE}
)
#: An update that changes nothing, as y-websocket clients send it.
EMPTY_UPDATE = b"\x00\x00"

# Close codes (RFC 6455) a client is closed with.
CLOSE_UNSUPPORTED = 1003  # a message of a type the protocol does not have
CLOSE_INVALID = 1007  # a message or an update that does not decode
CLOSE_POLICY = 1008  # no sync step 1 within COLLAB_SYNC_TIMEOUT
CLOSE_TOO_BIG = 1009  # an update that would take the document past COLLAB_MAX_DOCUMENT_BYTES
CLOSE_TRY_LATER = 1013  # fell too far behind: it syncs again when it reconnects

#: A failed store write or follow is retried after this many seconds, doubling up to the most.
RETRY_FIRST = 0.1
RETRY_MOST = 5.0


def valid_document_id(document_id: str) -> bool:
    return DOCUMENT_ID.fullmatch(document_id) is not None


class Client(Channel):
    """A connected client as a room sees it: pycrdt's ``Channel`` (binary messages in and
    out; ``send`` never raises, a closed client drops what it is sent) that can be closed
    with a code. Transports subclass it."""

    async def close(self, code: int, reason: str) -> None:
        raise NotImplementedError


class RoomFull(Exception):
    """The document has its most connections (``COLLAB_MAX_CONNECTIONS_PER_DOCUMENT``)."""


class Refused(Exception):
    """A client sent what closes it: the close code and a reason it is told."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RoomLimits:
    """What one document and its clients may cost (the ``COLLAB_*`` settings)."""

    max_document_bytes: int = 16 * 1024 * 1024
    max_connections: int = 200
    idle_timeout: float = 60.0
    sync_timeout: float = 10.0
    #: Seconds between two awareness updates of one document to the other processes.
    awareness_flush: float = 0.05

    @classmethod
    def from_settings(cls, settings: Settings) -> RoomLimits:
        return cls(
            max_document_bytes=settings.collab_max_document_bytes,
            max_connections=settings.collab_max_connections_per_document,
            idle_timeout=settings.collab_room_idle_timeout,
            sync_timeout=settings.collab_sync_timeout,
            awareness_flush=settings.collab_awareness_flush_ms / 1000,
        )


class _Peer(Channel):
    """One connected client in a room's broadcast: what it is sent waits in one queue, in
    order, for one task that sends it. It was sent the document once ``synced``; the
    awareness client ids it announced are removed for the others when it leaves."""

    def __init__(self, client: Client, max_backlog: int) -> None:
        self.client = client
        self.synced = False
        self.awareness_ids: set[int] = set()
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._queued_bytes = 0
        self._max_backlog = max_backlog
        self._closing: asyncio.Task[None] | None = None

    @property
    def path(self) -> str:
        return self.client.path

    async def recv(self) -> bytes:
        return await self.client.recv()

    async def send(self, message: bytes) -> None:
        """``YRoom`` sends the broadcast through this: queued like the rest."""
        self.put(message)

    def put(self, message: bytes) -> None:
        if self._closing is not None:
            return
        self._queued_bytes += len(message)
        if self._queued_bytes > self._max_backlog and self.synced:
            # It would catch up faster from its state vector, when it reconnects.
            while not self._queue.empty():
                self._queue.get_nowait()
            self._closing = asyncio.get_running_loop().create_task(
                self.client.close(CLOSE_TRY_LATER, "Too far behind the document")
            )
            return
        self._queue.put_nowait(message)

    async def run_sender(self) -> None:
        while True:
            message = await self._queue.get()
            self._queued_bytes -= len(message)
            await self.client.send(message)


class DocumentRoom(YRoom):
    """One document: its pycrdt ``doc``, the ``fragment`` Tiptap binds, the ``awareness``
    of its clients, and the clients connected to it.

    The server writes with ``with room.doc.transaction(origin=...): ...``: every
    transaction is sent to the clients and stored. Keep the room with
    :meth:`DocumentRooms.hold` while writing (or set a :meth:`set_peer_state`): a room
    nobody holds may leave memory, and what is written into it after that is lost.
    """

    def __init__(self, document_id: str, store: DocumentStore, limits: RoomLimits) -> None:
        super().__init__(ready=False, exception_handler=_log_exception, log=log)
        self.document_id = document_id
        self.store = store
        self.limits = limits
        self.fragment = self.ydoc.get(FRAGMENT, type=XmlFragment)
        self.awareness.observe(self._track_awareness)
        # YRoom broadcasts to ``clients``: the peers that were sent the document.
        self._peers: set[_Peer] = set()
        self.clients = cast(set[Channel], self._peers)
        self._stored_bytes = 0
        #: Transactions that changed the document since the room observes it.
        self.changes = 0
        #: Updates not stored yet, each with whether it waits for that to reach the clients.
        self._unsaved: list[tuple[bytes, bool]] = []
        self._held_origin = hash(AI_ORIGIN)
        self._unsaved_bytes = 0
        self._wake = asyncio.Event()
        self._saved = asyncio.Event()
        self._saved.set()
        self._applying_remote = False
        self._runner: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        #: Clients being closed for want of a sync step 1.
        self._closing: set[asyncio.Task[None]] = set()
        self._store_subscription: Subscription | None = None
        #: Where this process's awareness changes go (Redis mode), once the room follows it.
        self._replicated: ReplicatedAwareness | None = None
        #: Clients whose awareness changed since the last update sent to the other processes.
        self._awareness_out: set[int] = set()
        self._awareness_flush: asyncio.TimerHandle | None = None
        self._awareness_sent = float("-inf")

    @property
    def doc(self) -> Doc[Any]:
        """The document."""
        return self.ydoc

    @property
    def size(self) -> int:
        """Bytes the store keeps for the document, with the updates not stored yet."""
        return self._stored_bytes + self._unsaved_bytes

    @property
    def saved(self) -> bool:
        """Every update so far is stored."""
        return self._saved.is_set()

    @property
    def peer_state(self) -> dict[str, Any] | None:
        """The server's own awareness state (``None``: the server is not in the awareness)."""
        return self.awareness.get_local_state()

    def set_peer_state(self, state: dict[str, Any] | None) -> None:
        """Show the server to the clients as a peer with this awareness state, e.g. the AI's
        ``{"user": {"name", "color", "aiInstanceId"}}``; ``None`` takes it away. A room
        whose server shows as a peer stays in memory."""
        self.awareness.set_local_state(state)

    def announce(self, update: bytes) -> None:
        """Apply an awareness update (y-protocols' encoding) of one of the server's own
        clients, e.g. an AI session's pen, and send it to every client."""
        self.awareness.apply_awareness_update(update, _SERVER)
        message = create_awareness_message(update)
        for peer in self._peers:
            peer.put(message)

    async def open(self) -> None:
        """Start the room, load the document, observe it: only then may it be used."""
        self._runner = asyncio.get_running_loop().create_task(self.start())
        try:
            await self.started.wait()
            self.set_peer_state(None)
            try:
                update = await self.store.read(self.document_id)
                self._stored_bytes = await self.store.size(self.document_id)
                if update is not None:
                    # Before the room observes the document: neither sent nor stored again.
                    self.ydoc.apply_update(update)
            except Exception as exc:
                log.warning("document %s: could not be loaded", self.document_id, exc_info=True)
                raise StoreUnavailable("The document store is unavailable") from exc
            self.ready = True
            await self.ydoc_observed.wait()
        except BaseException:
            await self.close()
            raise
        self._store_subscription = self.ydoc.observe(self._keep)
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._write_updates()))
        if isinstance(self.store, ReplicatedAwareness):
            self._replicated = self.store
        if isinstance(self.store, ReplicatedStore):
            self._tasks.append(loop.create_task(self._follow(self.store)))

    async def flush(self) -> None:
        """Return once every update so far is stored."""
        await self._saved.wait()

    async def close(self) -> None:
        """Stop the room: its tasks, its observers, pycrdt-websocket's own. An awareness
        change not sent to the other processes yet goes now."""
        if self._awareness_flush is not None:
            self._awareness_flush.cancel()
            self._publish_awareness()
        self._replicated = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._store_subscription is not None:
            self.ydoc.unobserve(self._store_subscription)
            self._store_subscription = None
        with contextlib.suppress(RuntimeError):  # not (fully) started
            await self.stop()
        if self._runner is not None:
            # YRoom says it started before its awareness did, and cannot stop until then.
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)

    def apply_remote(self, update: bytes) -> None:
        """Apply an update another process stored: sent to the clients, not stored again."""
        self._applying_remote = True
        try:
            with self.ydoc.transaction(origin=ORIGIN_REMOTE):
                self.ydoc.apply_update(update)
        except ValueError:
            log.warning("document %s: an update from the store does not decode; skipped", self.document_id)
            return
        finally:
            self._applying_remote = False
        self._stored_bytes += len(update)

    def apply_remote_awareness(self, update: bytes) -> None:
        """Apply an awareness update another process published and send it to the clients
        (not published again)."""
        if not _awareness_decodes(update):
            log.warning("document %s: another process's awareness update does not decode", self.document_id)
            return
        self.awareness.apply_awareness_update(update, ORIGIN_REMOTE)
        message = create_awareness_message(update)
        for peer in self._peers:
            peer.put(message)

    async def serve_client(self, client: Client) -> None:
        """Serve one client until it leaves or is closed: the sync handshake, its updates and
        awareness, and every update the document gets meanwhile."""
        # Room for the document itself (sync step 2) and as much again of updates.
        peer = _Peer(client, 2 * self.limits.max_document_bytes)
        loop = asyncio.get_running_loop()
        sender = loop.create_task(peer.run_sender())
        deadline = loop.call_later(self.limits.sync_timeout, self._sync_timed_out, peer)
        peer.put(create_sync_message(self.ydoc))
        try:
            async for message in client:
                try:
                    self._receive(peer, message)
                except Refused as refusal:
                    log.info(
                        "document %s: client closed (%d): %s", self.document_id, refusal.code, refusal.reason
                    )
                    await client.close(refusal.code, refusal.reason)
                    break
        finally:
            deadline.cancel()
            sender.cancel()
            self._peers.discard(peer)
            self._forget_awareness(peer)

    def _receive(self, peer: _Peer, message: bytes) -> None:
        if not message:
            raise Refused(CLOSE_INVALID, "Empty message")
        kind = message[0]
        if kind == YMessageType.SYNC:
            self._receive_sync(peer, message)
        elif kind == YMessageType.AWARENESS:
            self._receive_awareness(peer, message)
        elif kind == QUERY_AWARENESS:
            self._send_awareness_states(peer)
        else:
            raise Refused(CLOSE_UNSUPPORTED, f"Unknown message type {kind}")

    def _receive_sync(self, peer: _Peer, message: bytes) -> None:
        step = message[1] if len(message) > 1 else None
        if step not in _SYNC_STEPS:
            raise Refused(CLOSE_UNSUPPORTED, f"Unknown sync message type {step}")
        payload = _payload(message, 2)
        if step == YSyncMessageType.SYNC_STEP1:
            if any(held for _, held in self._unsaved):
                # The document holds AI text not stored yet: the reply would hand it out
                # before the store has it. It goes once stored (a few milliseconds).
                task = asyncio.get_running_loop().create_task(self._answer_when_stored(peer, message))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
                return
            self._answer_sync_step1(peer, message)
        elif payload != EMPTY_UPDATE:
            limit = self.limits.max_document_bytes
            if self.size + len(payload) > limit:
                raise Refused(CLOSE_TOO_BIG, f"The document would pass its size limit ({limit} bytes)")
            try:
                self.ydoc.apply_update(payload)
            except ValueError:
                raise Refused(CLOSE_INVALID, "Update does not decode") from None

    def _answer_sync_step1(self, peer: _Peer, message: bytes) -> None:
        try:
            reply = handle_sync_message(message[1:], self.ydoc)
        except ValueError:
            raise Refused(CLOSE_INVALID, "Sync step 1 whose state vector does not decode") from None
        assert reply is not None
        first = not peer.synced
        if first:
            # From here on the broadcast reaches it, queued after the reply.
            peer.synced = True
            self._peers.add(peer)
        peer.put(reply)
        if first:
            self._send_awareness_states(peer)

    async def _answer_when_stored(self, peer: _Peer, message: bytes) -> None:
        while any(held for _, held in self._unsaved):
            await self._saved.wait()
        try:
            self._answer_sync_step1(peer, message)
        except Refused as refusal:
            await peer.client.close(refusal.code, refusal.reason)

    def _receive_awareness(self, peer: _Peer, message: bytes) -> None:
        payload = _payload(message, 1)
        # pycrdt's decoder reads past a short string as an empty one, where y-protocols
        # throws: what is relayed must decode in every client.
        if not _awareness_decodes(payload):
            raise Refused(CLOSE_INVALID, "Awareness update does not decode")
        self.awareness.apply_awareness_update(payload, peer)
        # To every client, the sender too (it keeps its connection alive), as YRoom does.
        for other in self._peers:
            other.put(message)

    def _send_awareness_states(self, peer: _Peer) -> None:
        ids = list(self.awareness.states)
        if ids:
            peer.put(create_awareness_message(self.awareness.encode_awareness_update(ids)))

    def _track_awareness(self, topic: str, changes: tuple[dict[str, Any], Any]) -> None:
        if topic != "update":
            return
        change, origin = changes
        if isinstance(origin, _Peer):
            origin.awareness_ids.update(change["added"], change["updated"])
            origin.awareness_ids.difference_update(change["removed"])
        elif origin not in (_SERVER, _LOCAL):
            # Another process's (not sent back) or a state timed out (as everywhere).
            return
        if self._replicated is not None:
            self._awareness_out.update(change["added"], change["updated"], change["removed"])
            if self._awareness_flush is None:
                loop = asyncio.get_running_loop()
                # At once when the last update went long enough ago, else that long after it.
                delay = max(0.0, self._awareness_sent + self.limits.awareness_flush - loop.time())
                self._awareness_flush = loop.call_later(delay, self._publish_awareness)

    def _publish_awareness(self) -> None:
        """Send the latest awareness state of each client that changed (``None`` for one that
        left, with its clock) to the other processes."""
        self._awareness_flush = None
        if self._replicated is None or not self._awareness_out:
            return
        client_ids, self._awareness_out = list(self._awareness_out), set()
        self._awareness_sent = asyncio.get_running_loop().time()
        update = self.awareness.encode_awareness_update(client_ids)
        self._replicated.publish_awareness(self.document_id, update)

    def _forget_awareness(self, peer: _Peer) -> None:
        ids = [client_id for client_id in peer.awareness_ids if client_id in self.awareness.states]
        if not ids:
            return
        self.awareness.remove_awareness_states(ids, peer)
        message = create_awareness_message(self.awareness.encode_awareness_update(ids))
        for other in self._peers:
            other.put(message)

    def _sync_timed_out(self, peer: _Peer) -> None:
        if not peer.synced:
            closing = asyncio.get_running_loop().create_task(
                peer.client.close(CLOSE_POLICY, "No sync step 1 in time")
            )
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    async def _broadcast_updates(self) -> None:
        """YRoom's broadcast of every update, replaced by :meth:`_keep`'s (the AI's updates
        wait until stored): its stream is only drained."""
        async with self._update_receive_stream:
            async for _ in self._update_receive_stream:
                pass

    def _broadcast(self, update: bytes) -> None:
        message = create_update_message(update)
        for peer in self._peers:
            peer.put(message)

    def _keep(self, event: TransactionEvent) -> None:
        """Every update of the document: to the clients, and to store (not those other
        processes stored, which are only sent on)."""
        update = event.update
        self.changes += 1
        if self._applying_remote:
            self._broadcast(update)
            return
        # The event's transaction (pycrdt >= 0.13; not in its type stubs) gives its origin's hash.
        held = cast(Any, event).transaction.origin() == self._held_origin
        if not held:
            self._broadcast(update)
        self._unsaved.append((update, held))
        self._unsaved_bytes += len(update)
        self._saved.clear()
        self._wake.set()

    async def _write_updates(self) -> None:
        delay = RETRY_FIRST
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._unsaved:
                batch, self._unsaved = self._unsaved, []
                updates = [update for update, _ in batch]
                batch_bytes = sum(len(update) for update in updates)
                update = updates[0] if len(updates) == 1 else merge_updates(*updates)
                try:
                    await self.store.write(self.document_id, update)
                except Exception:
                    log.warning(
                        "document %s: storing an update failed; retrying in %.1f s",
                        self.document_id,
                        delay,
                        exc_info=True,
                    )
                    self._unsaved[:0] = batch
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MOST)
                    continue
                delay = RETRY_FIRST
                self._unsaved_bytes -= batch_bytes
                self._stored_bytes += len(update)
                for held_update, held in batch:
                    if held:
                        self._broadcast(held_update)
            self._saved.set()

    async def _follow(self, store: ReplicatedStore) -> None:
        delay = RETRY_FIRST
        while True:
            updates = (
                store.follow(self.document_id, awareness=self.apply_remote_awareness)
                if isinstance(store, ReplicatedAwareness)
                else store.follow(self.document_id)
            )
            try:
                async for update in updates:
                    delay = RETRY_FIRST
                    self.apply_remote(update)
                return
            except Exception:
                log.warning(
                    "document %s: following other processes' updates failed; again in %.1f s",
                    self.document_id,
                    delay,
                    exc_info=True,
                )
            finally:
                close = getattr(updates, "aclose", None)
                if close is not None:
                    await close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MOST)


def _payload(message: bytes, start: int) -> bytes:
    """The length-prefixed payload of a y-protocols message from ``start`` on."""
    decoder = Decoder(message[start:])
    try:
        length = decoder.read_var_uint()
    except (RuntimeError, IndexError):
        raise Refused(CLOSE_INVALID, "Message does not decode") from None
    if decoder.length < length:
        raise Refused(CLOSE_INVALID, "Message shorter than its length")
    return message[start + decoder.i0 : start + decoder.i0 + length]


#: The largest integer lib0 reads (JavaScript's ``Number.MAX_SAFE_INTEGER``).
_MAX_SAFE_INTEGER = 2**53 - 1


def _awareness_decodes(payload: bytes) -> bool:
    """Whether y-protocols' ``applyAwarenessUpdate`` reads ``payload`` without an error:
    a count, then that many client ids, clocks and JSON states, and nothing after."""
    decoder = Decoder(payload)
    try:
        for _ in range(decoder.read_var_uint()):
            if max(decoder.read_var_uint(), decoder.read_var_uint()) > _MAX_SAFE_INTEGER:
                return False
            state = decoder.read_message()
            if state is None or decoder.length < 0:
                return False
            json.loads(state, parse_constant=_not_json)
    except (RuntimeError, IndexError, ValueError):
        return False
    return decoder.length == 0


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


def _log_exception(exception: Exception, logger: logging.Logger) -> bool:
    logger.error("a document room failed", exc_info=exception)
    return True


class DocumentRooms:
    """The documents this process has open, one room each: loaded on first use, shared by
    every caller, and dropped from memory once idle and stored."""

    def __init__(self, store: DocumentStore, limits: RoomLimits) -> None:
        self.store = store
        self.limits = limits
        self._rooms: dict[str, asyncio.Task[DocumentRoom]] = {}
        self._users: dict[str, int] = {}
        self._connections: dict[str, int] = {}
        self._idle: dict[str, asyncio.Task[None]] = {}
        self._closed = False

    def loaded(self, document_id: str) -> DocumentRoom | None:
        """The document's room if it is in memory and ready."""
        opening = self._rooms.get(document_id)
        if opening is None or not opening.done() or opening.cancelled() or opening.exception():
            return None
        return opening.result()

    def connections(self, document_id: str) -> int:
        return self._connections.get(document_id, 0)

    async def room(self, document_id: str) -> DocumentRoom:
        """The document's room, loaded from the store and observed; the same room for every
        caller while it is in memory. Raises :class:`StoreUnavailable` when the store cannot
        be read. Use :meth:`hold` to keep it in memory meanwhile."""
        if self._closed:
            raise StoreUnavailable("The server is shutting down")
        opening = self._rooms.get(document_id)
        if opening is None:
            opening = asyncio.get_running_loop().create_task(self._open(document_id))
            self._rooms[document_id] = opening
        try:
            room = await asyncio.shield(opening)
        except Exception:
            if self._rooms.get(document_id) is opening:
                del self._rooms[document_id]
            raise
        if not self._users.get(document_id) and document_id not in self._idle:
            self._watch_idle(document_id, room)
        return room

    @contextlib.asynccontextmanager
    async def hold(self, document_id: str) -> AsyncIterator[DocumentRoom]:
        """The document's room, kept in memory until the block ends (the AI peer holds it
        while it writes)."""
        self._users[document_id] = self._users.get(document_id, 0) + 1
        idle = self._idle.pop(document_id, None)
        if idle is not None:
            idle.cancel()
        try:
            yield await self.room(document_id)
        finally:
            self._release(document_id)

    def connect(self, document_id: str) -> contextlib.AbstractAsyncContextManager[DocumentRoom]:
        """:meth:`hold` for a client connection, counted against ``max_connections``:
        :class:`RoomFull` (raised here, before anything is opened) at the limit. Enter what
        it returns at once: the connection counts from this call until that block ends."""
        count = self._connections.get(document_id, 0)
        if count >= self.limits.max_connections:
            raise RoomFull(
                "Too many connections to this document "
                f"(COLLAB_MAX_CONNECTIONS_PER_DOCUMENT {self.limits.max_connections})"
            )
        self._connections[document_id] = count + 1
        return self._connected(document_id)

    @contextlib.asynccontextmanager
    async def _connected(self, document_id: str) -> AsyncIterator[DocumentRoom]:
        try:
            async with self.hold(document_id) as room:
                yield room
        finally:
            left = self._connections[document_id] - 1
            if left:
                self._connections[document_id] = left
            else:
                del self._connections[document_id]

    async def close(self, grace: float) -> None:
        """Store what is not stored yet (for at most ``grace`` seconds), stop every room and
        close the store."""
        self._closed = True
        for idle in self._idle.values():
            idle.cancel()
        self._idle.clear()
        rooms = [room for document_id in list(self._rooms) if (room := self.loaded(document_id))]
        for opening in self._rooms.values():
            opening.cancel()
        self._rooms.clear()
        try:
            async with asyncio.timeout(grace):
                await asyncio.gather(*(room.flush() for room in rooms))
        except TimeoutError:
            unsaved = [room for room in rooms if not room.saved]
            log.warning("shutdown: %d documents had updates the store did not take in time", len(unsaved))
        await asyncio.gather(*(room.close() for room in rooms))
        await self.store.close()

    async def _open(self, document_id: str) -> DocumentRoom:
        room = DocumentRoom(document_id, self.store, self.limits)
        await room.open()
        return room

    def _release(self, document_id: str) -> None:
        left = self._users[document_id] - 1
        if left:
            self._users[document_id] = left
            return
        del self._users[document_id]
        room = self.loaded(document_id)
        if room is not None and not self._closed:
            self._watch_idle(document_id, room)

    def _watch_idle(self, document_id: str, room: DocumentRoom) -> None:
        self._idle[document_id] = asyncio.get_running_loop().create_task(
            self._drop_when_idle(document_id, room)
        )

    async def _drop_when_idle(self, document_id: str, room: DocumentRoom) -> None:
        """Drop the room from memory once it had no user for ``idle_timeout`` and everything
        is stored (a cancelled wait: someone came back)."""
        while True:
            await asyncio.sleep(self.limits.idle_timeout)
            await room.flush()
            if room.saved and room.peer_state is None and not self._users.get(document_id):
                break
        del self._idle[document_id]
        del self._rooms[document_id]
        await room.close()
        log.debug("document %s: idle, dropped from memory", document_id)
