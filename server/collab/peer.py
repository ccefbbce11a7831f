"""The AI as a peer of a collaborative document: a session whose start named a ``target``
writes its answer into that document as it streams, from the server, whether or not the
client that asked is still connected (PROTOCOL.md "Collaborative documents (Yjs)").

The peer is one more viewer of the session, so it gets exactly what every viewer gets,
in order, once it is logged (Redis mode: once written). It batches the text and writes
it every ``COLLAB_FLUSH_MS`` in one transaction (collaborators' editors re-render on
every update). What it wrote is kept in the document itself (``server.collab.writer``),
so the process that takes a stream over goes on where the last one stopped.

Each session writes through a :class:`Pen`: a Yjs client of its own in the room, with its
own client id and its own awareness state ``{user: {name, color, aiInstanceId}}``, so
that collaborators' editors tell one session's text from another's (by the transaction's
only author and the session its awareness names), for the fade-in and for reject.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pycrdt import Awareness, Doc, TransactionEvent, merge_updates

from server.collab.rooms import DocumentRoom, DocumentRooms
from server.collab.writer import AI_ORIGIN, AnswerWriter, state_vector
from server.core.session_view import short_id
from server.core.sessions import StreamingSession

log = logging.getLogger(__name__)

#: Session states after which nothing more is written.
_ENDED = frozenset({"completed", "cancelled", "failed"})
#: Seconds after which a pen announces its awareness state again: y-protocols drops a
#: state not renewed within 30 s (its ``outdatedTimeout``) and renews its own every 15.
RENEW_AWARENESS = 15.0


@dataclass(slots=True)
class _PeerViewer:
    """The session's events as the peer gets them: text to write, and whether it ended."""

    key: str
    text: list[str] = field(default_factory=list)
    ended: bool = False
    reset: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def send(self, event: str, payload: dict[str, Any]) -> None:
        if event == "chunk":
            self.text.append(payload["content"])
        elif event in ("complete", "stream-error") or (
            event == "stream-state" and payload.get("state") in _ENDED
        ):
            self.ended = True
        elif event == "stream-reset":
            # The log this viewer knew was replaced (PROTOCOL.md "Epoch"): the whole log
            # follows, and the writer's own count of what it wrote says what to skip.
            self.text.clear()
            self.reset = True
        else:
            return
        self.wake.set()

    def backlog(self) -> int:
        return 0

    def close(self, reason: str) -> None:
        self.ended = True
        self.wake.set()

    def take(self) -> str:
        text = "".join(self.text)
        self.text.clear()
        return text


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """How the AI shows in collaborators' editors (awareness ``user``)."""

    name: str = "AI"
    color: str = "#7c3aed"


class Pen:
    """One session's own Yjs client in a room: a copy of the document under a client id
    of its own, and an awareness state of its own.

    The writer writes into ``doc``. :meth:`writing` brings it up to date with the room
    first, and applies what was written to the room after, in one transaction of origin
    ``AI_ORIGIN`` (held until stored, as every AI update: ``server.collab.rooms``). In the
    room that update has the pen's client as its only author. A pen made for a takeover
    gets a new client id: editors map each client to the session its awareness names.
    """

    def __init__(self, room: DocumentRoom) -> None:
        self.room = room
        # Never a client that wrote into the document or is in its awareness already.
        taken = {room.doc.client_id, *state_vector(room.doc), *room.awareness.states}
        doc: Doc[Any] = Doc()
        while doc.client_id in taken:
            doc = Doc()
        self.doc = doc
        doc.apply_update(room.doc.get_update())
        #: The room's ``changes`` when the pen last had all of them.
        self._seen = room.changes
        self._written: list[bytes] = []
        self._capturing = False
        self._subscription = doc.observe(self._keep)
        self._awareness = Awareness(doc)
        self._shown = False
        self._renewal: asyncio.TimerHandle | None = None

    @property
    def client_id(self) -> int:
        return self.doc.client_id

    @contextlib.contextmanager
    def writing(self) -> Iterator[Doc[Any]]:
        """The pen's document, up to date with the room's, for one batch of writing; what
        was written reaches the room when the block ends (an exception too: the room
        must hold everything the pen does)."""
        room = self.room
        if room.changes != self._seen:
            self.doc.apply_update(room.doc.get_update(self.doc.get_state()))
        self._capturing = True
        try:
            yield self.doc
        finally:
            self._capturing = False
            written, self._written = self._written, []
            if written:
                update = written[0] if len(written) == 1 else merge_updates(*written)
                with room.doc.transaction(origin=AI_ORIGIN):
                    room.doc.apply_update(update)
            self._seen = room.changes

    def show(self, state: dict[str, Any] | None) -> None:
        """Announce the pen's awareness state to the room's clients, again every
        ``RENEW_AWARENESS`` seconds; ``None`` removes it (as y-protocols announces a client
        that leaves)."""
        if self._renewal is not None:
            self._renewal.cancel()
            self._renewal = None
        if state is None and not self._shown:
            return
        self._awareness.set_local_state(state)
        self.room.announce(self._awareness.encode_awareness_update([self.client_id]))
        self._shown = state is not None
        if state is not None:
            self._renewal = asyncio.get_running_loop().call_later(RENEW_AWARENESS, self.show, state)

    def close(self) -> None:
        """Leave the room's awareness and stop following the pen's document."""
        self.show(None)
        self.doc.unobserve(self._subscription)

    def _keep(self, event: TransactionEvent) -> None:
        if self._capturing:
            self._written.append(event.update)


class DocumentPeers:
    """The AI peers of this process: one per session that writes into a document."""

    def __init__(
        self, rooms: DocumentRooms, *, flush_interval: float, identity: PeerIdentity | None = None
    ) -> None:
        self.rooms = rooms
        self.flush_interval = flush_interval
        self.identity = identity or PeerIdentity()
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def attach(self, session: StreamingSession) -> None:
        """Start writing ``session``'s answer into its target (the manager's ``on_target``)."""
        if session.id in self._tasks:
            return
        task = asyncio.get_running_loop().create_task(self._write(session))
        self._tasks[session.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(session.id, None))

    @property
    def writing(self) -> int:
        """Answers being written now."""
        return len(self._tasks)

    async def close(self) -> None:
        """Stop every peer; each writes what it holds first (a successor goes on from there)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _write(self, session: StreamingSession) -> None:
        conversation = session.conversation
        assert conversation is not None and conversation.target is not None
        target = conversation.target
        async with self.rooms.hold(target.document_id) as room:
            await self._write_into(session, room, _anchor(target.anchor))

    async def _write_into(self, session: StreamingSession, room: DocumentRoom, anchor: bytes | None) -> None:
        label = short_id(session.id)
        pen = Pen(room)
        writer = AnswerWriter.open(pen.doc, session.id, anchor)
        # Characters of the answer received, and given to the writer (the document may
        # hold some already: a takeover goes on where the last writer stopped).
        seen, fed = 0, writer.written
        viewer = _PeerViewer(key=f"collab-peer:{session.id}")
        session.add_viewer(viewer)
        identity = self.identity
        pen.show({"user": {"name": identity.name, "color": identity.color, "aiInstanceId": session.id}})
        try:
            while True:
                await viewer.wake.wait()
                viewer.wake.clear()
                if not viewer.ended:
                    # Let a batch gather: collaborators' editors re-render per update.
                    await asyncio.sleep(self.flush_interval)
                if viewer.reset:
                    viewer.reset = False
                    seen = 0
                seen, fed = _feed(writer, viewer.take(), seen, fed)
                with pen.writing():
                    writer.flush(final=viewer.ended)
                session.target_relocated = writer.relocated
                if viewer.ended:
                    log.info("session %s: answer written into its document", label)
                    return
        except asyncio.CancelledError:
            _feed(writer, viewer.take(), seen, fed)
            with pen.writing():
                writer.flush()
            raise
        finally:
            session.remove_viewer(viewer.key)
            pen.close()


def _feed(writer: AnswerWriter, text: str, seen: int, fed: int) -> tuple[int, int]:
    """Give the writer the part of ``text`` (the answer's characters from ``seen`` on) it
    has not had; returns the new ``seen`` and ``fed``."""
    end = seen + len(text)
    if end > fed:
        writer.feed(text[max(0, fed - seen) :])
        fed = end
    return end, fed


def _anchor(raw: str | None) -> bytes | None:
    """The client's base64 relative position (``TargetIn`` checked it is base64)."""
    if raw is None:
        return None
    return base64.b64decode(raw)
