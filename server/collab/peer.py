"""The AI as a peer of a collaborative document: a session whose start named a ``target``
writes its answer into that document as it streams, from the server, whether or not the
client that asked is still connected (PROTOCOL.md "Collaborative documents (Yjs)").

The peer is one more viewer of the session, so it gets exactly what every viewer gets,
in order, once it is logged (Redis mode: once written). It batches the text and writes
it every ``COLLAB_FLUSH_MS`` in one transaction (collaborators' editors re-render on
every update). What it wrote is kept in the document itself (``server.collab.writer``),
so the process that takes a stream over goes on where the last one stopped.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from server.collab.rooms import DocumentRoom, DocumentRooms
from server.collab.writer import AnswerWriter
from server.core.session_view import short_id
from server.core.sessions import StreamingSession

log = logging.getLogger(__name__)

#: Session states after which nothing more is written.
_ENDED = frozenset({"completed", "cancelled", "failed"})


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


class DocumentPeers:
    """The AI peers of this process: one per session that writes into a document."""

    def __init__(
        self, rooms: DocumentRooms, *, flush_interval: float, identity: PeerIdentity | None = None
    ) -> None:
        self.rooms = rooms
        self.flush_interval = flush_interval
        self.identity = identity or PeerIdentity()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        #: Per document, the sessions writing into it now (the room has one awareness
        #: state for the server: it names the latest of them).
        self._writing: dict[str, list[str]] = {}

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
        writer = AnswerWriter.open(room.doc, session.id, anchor)
        # Characters of the answer received, and given to the writer (the document may
        # hold some already: a takeover goes on where the last writer stopped).
        seen, fed = 0, writer.written
        viewer = _PeerViewer(key=f"collab-peer:{session.id}")
        session.add_viewer(viewer)
        writing = self._writing.setdefault(room.document_id, [])
        writing.append(session.id)
        self._show(room, writing)
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
                writer.flush(final=viewer.ended)
                session.target_relocated = writer.relocated
                if viewer.ended:
                    log.info("session %s: answer written into its document", label)
                    return
        except asyncio.CancelledError:
            _feed(writer, viewer.take(), seen, fed)
            writer.flush()
            raise
        finally:
            session.remove_viewer(viewer.key)
            writing.remove(session.id)
            if not writing:
                del self._writing[room.document_id]
            self._show(room, writing)

    def _show(self, room: DocumentRoom, writing: list[str]) -> None:
        """The server's awareness state: the AI, as the latest session writing, or none."""
        if not writing:
            room.set_peer_state(None)
            return
        user = {"name": self.identity.name, "color": self.identity.color, "aiInstanceId": writing[-1]}
        room.set_peer_state({"user": user})


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
