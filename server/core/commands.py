"""Pause, resume and cancel: one path from every transport to the session, one ack shape.

Socket.IO (both paths), the plain WebSocket and ``POST .../cancel`` all call
:func:`session_command`; each transport only names the action and frames the ack.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Protocol

from server.core.errors import StoreUnavailable
from server.core.prompting import Conversation
from server.core.session_view import SessionConflict, SessionView
from server.core.sessions import StreamingSession

#: What a command answers, in PROTOCOL.md's ack shape (``{ok, state?, lastSeq?, error?}``);
#: each transport frames it as its own ack (Socket.IO ack, WebSocket message, HTTP body).
Ack = dict[str, Any]


def error_ack(message: str) -> Ack:
    """The answer of a command that changed nothing: ``{ok: false, error}``."""
    return {"ok": False, "error": message}


class Action(StrEnum):
    PAUSE = "pause"
    RESUME = "resume"
    CANCEL = "cancel"


#: The Socket.IO events that carry a command.
EVENT_ACTIONS = {
    "pause-stream": Action.PAUSE,
    "resume-stream": Action.RESUME,
    "cancel-stream": Action.CANCEL,
}


#: How long an ack waits for the command's effect to be in the shared store (Redis mode).
PERSIST_WAIT = 3.0


class RemoteSession(Protocol):
    """A session whose provider runs in another process (``server.cluster.relay.RelayedSession``)."""

    async def forward(self, action: str, **extra: Any) -> Ack: ...


async def start_command(session: SessionView, prompt: str, conversation: Conversation | None = None) -> Ack:
    """Start the stream where the session lives, asking ``conversation`` (or ``prompt``
    alone); ``{ok: false, error, conflict: true}`` when it was started already (HTTP 409)."""
    if isinstance(session, StreamingSession):
        try:
            session.start(prompt, conversation)
        except SessionConflict as exc:
            return {**error_ack(str(exc)), "conflict": True}
        return {"ok": True}
    remote: RemoteSession = session  # type: ignore[assignment]
    if conversation is None:
        return await remote.forward("start", prompt=prompt)
    return await remote.forward("start", prompt=prompt, conversation=conversation.to_json())


async def session_command(session: SessionView, action: Action) -> Ack:
    """Apply ``action`` and answer as PROTOCOL.md says.

    ``{ok: true, state, lastSeq}`` for pause (no chunk past ``lastSeq`` is emitted before
    a resume), ``{ok: true, state}`` for resume and cancel (cancel returns once the
    provider's request is closed), ``{ok: false, error}`` when the state does not allow it.
    A session owned by another process gets the command there; the ack is the owner's.
    """
    if not isinstance(session, StreamingSession):
        remote: RemoteSession = session  # type: ignore[assignment]
        try:
            return await remote.forward(action.value)
        except StoreUnavailable as exc:
            return error_ack(str(exc))
    try:
        if action is Action.PAUSE:
            last_seq = session.pause()
            ack: Ack = {"ok": True, "state": session.state.value, "lastSeq": last_seq}
        else:
            if action is Action.RESUME:
                session.resume()
            else:
                await session.cancel()
            ack = {"ok": True, "state": session.state.value}
    except SessionConflict as exc:
        return error_ack(str(exc))
    await session.persisted(PERSIST_WAIT)
    return ack
