"""A viewer over an aiohttp response: a queue of encoded events drained by one task.

The plain WebSocket and Server-Sent Events write with an ``await``; the queue between the
session (which never waits) and that write is the viewer's backlog.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections import deque

from aiohttp import web

from server.core.sessions import Payload


class QueuedViewer(ABC):
    """Subclasses say how an event is encoded (:meth:`encode`) and written (:meth:`write`)."""

    __slots__ = ("_queue", "_request", "_task", "done", "key")

    def __init__(self, key: str, request: web.Request) -> None:
        self.key = key
        self._request = request
        self._queue: deque[bytes | str] = deque()
        self._task: asyncio.Task[None] | None = None
        #: Set once the connection is lost or dropped (and, for SSE, once it should end).
        self.done = asyncio.Event()

    @abstractmethod
    def encode(self, event: str, payload: Payload) -> bytes | str:
        """One event as the connection carries it."""

    @abstractmethod
    async def write(self, data: bytes | str) -> bool:
        """Write one queued item; ``False`` ends the drain (the response is over)."""

    def send(self, event: str, payload: Payload) -> None:
        self._enqueue(self.encode(event, payload))

    def _enqueue(self, data: bytes | str) -> None:
        self._queue.append(data)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._queue:
                if not await self.write(self._queue.popleft()):
                    break
        except (ConnectionError, RuntimeError):
            self._queue.clear()
            self.lost()
        finally:
            self._task = None

    def lost(self) -> None:
        """The connection failed while writing, or is being dropped."""
        self.done.set()

    def backlog(self) -> int:
        return len(self._queue)

    def close(self, reason: str) -> None:
        """Drop the connection at once: a stalled peer would never read a goodbye."""
        self._queue.clear()
        self.lost()
        transport = self._request.transport
        if transport is not None:
            transport.abort()
