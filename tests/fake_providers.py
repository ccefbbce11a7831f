"""Providers for tests: the demo provider with a pull counter, and a scripted one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

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
