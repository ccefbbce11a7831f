"""Resume points of a resumable provider's stream: where another process may go on with it.

A resumable provider reports checkpoints, its position after the text it has yielded so
far. A checkpoint becomes the session's resume point once all that text is in chunks
made (and so in the log), so that a successor that continues from it (Redis mode, after
this process died or handed the session over) neither loses nor repeats text. Here is
only that bookkeeping, counted in characters of content; the session
(:class:`~server.core.sessions.StreamingSession`) feeds it and writes the resume point to
its journal.
"""

from __future__ import annotations

from collections import deque
from typing import Any

__all__ = ["ResumePoints"]


class ResumePoints:
    """Characters made into chunks, the checkpoints not yet covered by a chunk made, the
    latest that is, and the latest seen.

    What the provider sent so far is not counted here per token: the session knows it
    when a checkpoint comes (the characters made into chunks and those still pending).
    """

    def __init__(self) -> None:
        #: Characters of content in chunks made.
        self.made = 0
        self._waiting: deque[tuple[int, dict[str, Any]]] = deque()
        #: The latest checkpoint whose text is all in chunks made (``(chars, checkpoint)``).
        self.point: tuple[int, dict[str, Any]] | None = None
        self._dirty = False
        #: The latest checkpoint seen (the provider's work upstream, while not completed).
        self.last: dict[str, Any] | None = None

    def add(self, checkpoint: dict[str, Any], received: int) -> bool:
        """The provider's position after the ``received`` characters of content it sent so
        far; ``True`` when it is the resume point right away (nothing of it waits to be
        emitted)."""
        self.last = checkpoint
        self._waiting.append((received, checkpoint))
        if received <= self.made:
            self._advance()
            return True
        return False

    def made_chunk(self, chars: int) -> None:
        """A chunk of ``chars`` characters was made."""
        self.made += chars
        if self._waiting:
            self._advance()

    def _advance(self) -> None:
        """The latest checkpoint whose text is all in chunks made so far."""
        waiting = self._waiting
        while waiting and waiting[0][0] <= self.made:
            self.point = waiting.popleft()
            self._dirty = True

    def take(self) -> tuple[int, dict[str, Any]] | None:
        """The resume point, when it changed since it was last taken."""
        if not self._dirty:
            return None
        self._dirty = False
        return self.point

    def restore(self, chars: int) -> None:
        """A log of ``chars`` characters taken over from another process."""
        self.made = chars

    def restart(self, chars: int, checkpoint: dict[str, Any]) -> int:
        """Go on from a logged resume point (``chars`` characters at ``checkpoint``); returns
        how many characters the provider is to skip (those the log holds beyond it)."""
        skip = self.made - chars
        self.point = (self.made, checkpoint)
        self.last = checkpoint
        return skip
