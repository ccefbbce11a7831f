"""Where sessions live. In memory here; the interface is what a shared store implements."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from server.sessions import StreamingSession


class SessionRegistry(Protocol):
    """Lookup and bookkeeping of sessions by id and by user."""

    def add(self, session: StreamingSession) -> None: ...

    def get(self, session_id: str) -> StreamingSession | None: ...

    def remove(self, session_id: str) -> None: ...

    def live_count(self, user_id: str) -> int: ...

    def __iter__(self) -> Iterator[StreamingSession]: ...

    def __len__(self) -> int: ...


class InMemorySessionRegistry:
    """Sessions of this process in a dict, with a per-user index for the quota."""

    def __init__(self) -> None:
        self._sessions: dict[str, StreamingSession] = {}
        self._by_user: dict[str, set[str]] = {}

    def add(self, session: StreamingSession) -> None:
        self._sessions[session.id] = session
        self._by_user.setdefault(session.user_id, set()).add(session.id)

    def get(self, session_id: str) -> StreamingSession | None:
        return self._sessions.get(session_id)

    def remove(self, session_id: str) -> None:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return
        ids = self._by_user.get(session.user_id)
        if ids is not None:
            ids.discard(session_id)
            if not ids:
                del self._by_user[session.user_id]

    def live_count(self, user_id: str) -> int:
        ids = self._by_user.get(user_id, ())
        return sum(1 for sid in ids if self._sessions[sid].is_live)

    def __iter__(self) -> Iterator[StreamingSession]:
        return iter(tuple(self._sessions.values()))

    def __len__(self) -> int:
        return len(self._sessions)
