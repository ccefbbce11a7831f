"""Where sessions live. In memory here; the interface is what a shared store implements."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from server.core.sessions import StreamingSession


class SessionRegistry(Protocol):
    """Lookup and bookkeeping of sessions by id and by user."""

    def add(self, session: StreamingSession) -> None: ...

    def get(self, session_id: str) -> StreamingSession | None: ...

    def remove(self, session_id: str) -> None: ...

    def live_count(self, user_id: str) -> int: ...

    def __iter__(self) -> Iterator[StreamingSession]: ...

    def __len__(self) -> int: ...


class InMemorySessionRegistry:
    """Sessions of this process in a dict, with a per-user count of live ones for the quota.

    The count follows each session's end (``on_finish``), so the quota check costs the
    same with 10 sessions as with 10,000.
    """

    def __init__(self) -> None:
        self._sessions: dict[str, StreamingSession] = {}
        self._live: dict[str, set[str]] = {}

    def add(self, session: StreamingSession) -> None:
        self._sessions[session.id] = session
        if session.is_live:
            self._live.setdefault(session.user_id, set()).add(session.id)
            session.on_finish = self._finished

    def _finished(self, session: StreamingSession) -> None:
        live = self._live.get(session.user_id)
        if live is not None:
            live.discard(session.id)
            if not live:
                del self._live[session.user_id]

    def get(self, session_id: str) -> StreamingSession | None:
        return self._sessions.get(session_id)

    def remove(self, session_id: str) -> None:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return
        self._finished(session)
        session.on_finish = None
        session.chunks.release()

    def live_count(self, user_id: str) -> int:
        return len(self._live.get(user_id, ()))

    def __iter__(self) -> Iterator[StreamingSession]:
        return iter(tuple(self._sessions.values()))

    def __len__(self) -> int:
        return len(self._sessions)
