"""Pause, resume and cancel: one path from every transport to the session, one ack shape.

Socket.IO (both paths), the plain WebSocket and ``POST .../cancel`` all call
:func:`session_command`; each transport only names the action and frames the ack.
"""

from __future__ import annotations

from enum import StrEnum

from server.sessions import SessionConflict, StreamingSession
from server.wire.socketio import Ack, error_ack


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


async def session_command(session: StreamingSession, action: Action) -> Ack:
    """Apply ``action`` and answer as PROTOCOL.md says.

    ``{ok: true, state, lastSeq}`` for pause (no chunk past ``lastSeq`` is emitted before
    a resume), ``{ok: true, state}`` for resume and cancel (cancel returns once the
    provider's request is closed), ``{ok: false, error}`` when the state does not allow it.
    """
    try:
        if action is Action.PAUSE:
            last_seq = session.pause()
            return {"ok": True, "state": session.state.value, "lastSeq": last_seq}
        if action is Action.RESUME:
            session.resume()
        else:
            await session.cancel()
    except SessionConflict as exc:
        return error_ack(str(exc))
    return {"ok": True, "state": session.state.value}
