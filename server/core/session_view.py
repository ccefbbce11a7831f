"""What every view of a session shares, wherever its provider runs: its states, its
errors and the read side (:class:`SessionView`).

A :class:`SessionView` has the session's identity, its state, its chunk log and its
viewers: a viewer that joins is replayed the log from its ``lastSeq`` (or gets a
``stream-reset`` or a ``snapshot``), then follows live. The producer that writes the log
(:class:`~server.core.sessions.StreamingSession`) and a process's mirror of a session
that runs elsewhere (the cluster's relay) both build on it. Like the rest of the core,
it knows nothing of aiohttp, Socket.IO or Redis.
"""

from __future__ import annotations

import secrets
import time
from enum import StrEnum

from providers.base import StreamConfig, Usage
from server.core.chunklog import ChunkLog, LogBudget
from server.core.emitter import Payload, Viewer, ViewerSet
from server.core.prompting import Conversation
from server.guards.metrics import JOIN_KINDS, JOINS

__all__ = [
    "TERMINAL_STATES",
    "SessionConflict",
    "SessionState",
    "SessionView",
    "short_id",
]


#: ``JOINS``'s child of each kind, looked up once (``labels()`` costs more than the count).
_JOINS_BY_KIND = {kind: JOINS.labels(kind=kind) for kind in JOIN_KINDS}


class SessionState(StrEnum):
    CREATED = "created"
    STREAMING = "streaming"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATES = frozenset({SessionState.COMPLETED, SessionState.FAILED, SessionState.CANCELLED})


class SessionConflict(Exception):
    """The action does not fit the session's state (HTTP 409, ack ``ok: false``)."""


def short_id(session_id: str) -> str:
    """The id as it may appear in logs: a prefix, never the whole capability."""
    return session_id[:8]


class SessionView:
    """What every view of a session has, wherever its provider runs: identity, state,
    the chunk log and the viewers (replay on join, then live)."""

    def __init__(
        self,
        session_id: str,
        user_id: str,
        config: StreamConfig,
        viewer_set: ViewerSet,
        *,
        epoch: str | None = None,
        created_at: float | None = None,
        log_budget: LogBudget | None = None,
    ) -> None:
        self.id = session_id
        self.user_id = user_id
        self.config = config
        self.viewer_set = viewer_set
        self.state = SessionState.CREATED
        #: The identity of this chunk log's history (PROTOCOL.md, "Epoch").
        self.epoch = epoch or secrets.token_hex(4)
        self.created_at = time.time() if created_at is None else created_at
        #: The chunks so far, kept compactly (their payloads are built when read).
        self.chunks = ChunkLog(session_id, log_budget)
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.error: Payload | None = None
        self.touched = time.monotonic()
        #: What the provider was asked (action, messages), once the session started.
        self.conversation: Conversation | None = None
        #: Times the AI peer lost the block it wrote into (a collaborator deleted it) and went
        #: on in a new one (``target.relocated`` of the status; known where the stream runs).
        self.target_relocated = 0
        self._terminal_event: tuple[str, Payload] | None = None

    # -- queries -------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        return len(self.chunks) - 1

    @property
    def text(self) -> str:
        return self.chunks.text

    @property
    def is_live(self) -> bool:
        return self.state not in TERMINAL_STATES

    @property
    def viewers(self) -> dict[str, Viewer]:
        return self.viewer_set.viewers

    def status(self) -> Payload:
        """The ``GET /api/streaming/{id}`` body."""
        return {
            "sessionId": self.id,
            "userId": self.user_id,
            "state": self.state.value,
            "epoch": self.epoch,
            "chunks": len(self.chunks),
            "text": self.text,
            "provider": self.config.provider,
            "model": self.config.model,
            "createdAt": int(self.created_at * 1000),
            "usage": self.usage.to_wire() if self.usage else None,
            "finishReason": self.finish_reason,
            "error": self.error,
            "action": self.conversation.action if self.conversation else None,
            "followUp": self.conversation.follow_up if self.conversation else None,
            "target": self._target_payload(),
        }

    def _target_payload(self) -> Payload | None:
        target = self.conversation.target if self.conversation else None
        if target is None:
            return None
        return {"documentId": target.document_id, "relocated": self.target_relocated}

    # -- viewers -------------------------------------------------------------

    def add_viewer(
        self, viewer: Viewer, last_seq: int | None = None, *, epoch: str | None = None, snapshot: bool = False
    ) -> Payload:
        """Replay what the viewer missed (``seq > last_seq``), then keep it live.

        A viewer that knew another history (``epoch``), or claims chunks the log does
        not have, first gets ``stream-reset`` and then the whole log. With ``snapshot``
        it gets one ``snapshot`` event with the text so far instead of the replay.
        Replay and registration happen with no await in between, so no chunk can
        fall between them or arrive twice.
        """
        self.viewer_set.check_room(viewer.key)
        self.touched = time.monotonic()
        if snapshot:
            viewer.send("snapshot", self._snapshot_payload())
            start = len(self.chunks)
            kind = "snapshot"
        elif (epoch is not None and epoch != self.epoch) or (
            last_seq is not None and last_seq > self.last_seq
        ):
            viewer.send("stream-reset", {"sessionId": self.id, "epoch": self.epoch, "lastSeq": self.last_seq})
            start = 0
            kind = "reset"
        elif last_seq is None:
            start = 0
            kind = "new"
        else:
            start = last_seq + 1
            kind = "resume"
        _JOINS_BY_KIND[kind].inc()
        for chunk in self.chunks.iter_from(start):
            viewer.send("chunk", chunk)
        if self._terminal_event is not None:
            viewer.send(*self._terminal_event)
        self.viewer_set.add(viewer)
        return {"state": self.state.value, "lastSeq": self.last_seq, "epoch": self.epoch}

    def remove_viewer(self, key: str) -> None:
        self.viewer_set.remove(key)

    @property
    def head_seq(self) -> int:
        """The last ``seq`` made, sent or not yet (an owner's log may be ahead of its viewers)."""
        return self.last_seq

    def _state_payload(self) -> Payload:
        return {
            "sessionId": self.id,
            "state": self.state.value,
            "lastSeq": self.head_seq,
            "epoch": self.epoch,
        }

    def _snapshot_payload(self) -> Payload:
        return {
            "sessionId": self.id,
            "epoch": self.epoch,
            "text": self.text,
            "lastSeq": self.last_seq,
            "state": self.state.value,
        }
