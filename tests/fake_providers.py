"""Providers for tests: the demo provider with a pull counter, a scripted one, a steady
healthy one and broken ones (fault tests)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import cast

from providers.base import AIChunk, ProviderError, StreamConfig, Usage
from providers.demo import DemoProvider


class CountingProvider:
    """The demo provider, counting how often its iterator is pulled and when it closes."""

    name = "demo"
    default_model = "demo"

    def __init__(self, tokens_per_second: float = 0) -> None:
        self._demo = DemoProvider(tokens_per_second)
        self.pulled = 0
        self.closed = asyncio.Event()

    async def create_stream(self, prompt: str, config: StreamConfig) -> AsyncIterator[AIChunk]:
        try:
            async for item in self._demo.create_stream(prompt, config):
                self.pulled += 1
                yield item
        finally:
            self.closed.set()


class ScriptedProvider:
    """Yields ``tokens``, then fails with ``error`` or hangs forever when asked to."""

    name = "demo"
    default_model = "demo"

    def __init__(
        self,
        tokens: Sequence[str] = (),
        error: ProviderError | Exception | None = None,
        hang_after: int | None = None,
    ) -> None:
        self.tokens = list(tokens)
        self.error = error
        self.hang_after = hang_after
        self.closed = asyncio.Event()

    async def create_stream(self, prompt: str, config: StreamConfig) -> AsyncIterator[AIChunk]:
        try:
            for index, token in enumerate(self.tokens):
                if self.hang_after is not None and index == self.hang_after:
                    await asyncio.Event().wait()
                await asyncio.sleep(0)
                yield AIChunk(token, {"provider": "demo", "model": "scripted"})
            if self.hang_after is not None and self.hang_after >= len(self.tokens):
                await asyncio.Event().wait()
            if self.error is not None:
                raise self.error
            yield AIChunk("", {}, Usage(1, len(self.tokens)), "stop")
        finally:
            self.closed.set()


class SteadyProvider:
    """A healthy provider for fault tests: numbered tokens at a steady pace until
    :meth:`release`, then a normal end. It remembers the text each stream sent, keyed by
    prompt, so a test can tell that nothing was lost on the way to the viewers."""

    name = "demo"
    default_model = "steady"

    def __init__(self, interval: float = 0.005, min_tokens: int = 5) -> None:
        self.interval = interval
        self.min_tokens = min_tokens
        self.released = asyncio.Event()
        self._sent: dict[str, list[str]] = {}

    def release(self) -> None:
        """Let every stream, running or not yet started, finish after its next token."""
        self.released.set()

    def sent(self, prompt: str) -> str:
        """Everything the stream for ``prompt`` yielded."""
        return "".join(self._sent.get(prompt, []))

    async def create_stream(self, prompt: str, config: StreamConfig) -> AsyncIterator[AIChunk]:
        sent = self._sent.setdefault(prompt, [])
        index = 0
        while index < self.min_tokens or not self.released.is_set():
            token = f"[{prompt} {index}] "
            sent.append(token)
            yield AIChunk(token, {"provider": "demo", "model": "steady"})
            index += 1
            await asyncio.sleep(self.interval)
        yield AIChunk("", {}, Usage(1, index), "stop")


class RawProvider:
    """Yields ``items`` exactly as given, AIChunks or not, then raises ``error`` (any
    exception, even ``CancelledError``): a provider that returns garbage."""

    name = "demo"
    default_model = "raw"

    def __init__(self, items: Sequence[object] = (), error: BaseException | None = None) -> None:
        self.items = list(items)
        self.error = error
        self.closed = asyncio.Event()

    async def create_stream(self, prompt: str, config: StreamConfig) -> AsyncIterator[AIChunk]:
        try:
            for item in self.items:
                await asyncio.sleep(0)
                yield cast(AIChunk, item)
            if self.error is not None:
                raise self.error
        finally:
            self.closed.set()


class BrokenFactoryProvider:
    """``create_stream`` itself misbehaves: it raises ``error`` before returning anything,
    or returns ``returns``, which is not an async iterator."""

    name = "demo"
    default_model = "broken"

    def __init__(self, error: BaseException | None = None, returns: object = None) -> None:
        self.error = error
        self.returns = returns

    def create_stream(self, prompt: str, config: StreamConfig) -> AsyncIterator[AIChunk]:
        if self.error is not None:
            raise self.error
        return cast(AsyncIterator[AIChunk], self.returns)
