"""Fixtures for server tests against the fake OpenAI/Anthropic upstream (loaded by
``conftest.py`` as a plugin): ``upstream`` records what the real SDKs send, and
``upstream_server`` starts the server with both providers pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tests.fake_upstream import FakeUpstream
from tests.helpers import LiveServer, ServerFactory

OPENAI_KEY = "sk-test-openai-e2e-0123456789"
ANTHROPIC_KEY = "sk-ant-test-e2e-0123456789"


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def upstream_server(
    start_server: ServerFactory, upstream: FakeUpstream
) -> Callable[..., Awaitable[LiveServer]]:
    async def start_with(**overrides: Any) -> LiveServer:
        settings: dict[str, Any] = {
            "openai_api_key": OPENAI_KEY,
            "openai_base_url": upstream.openai_base_url,
            "anthropic_api_key": ANTHROPIC_KEY,
            "anthropic_base_url": upstream.anthropic_base_url,
            "provider_max_retries": 0,
            "provider_timeout": 5.0,
        }
        return await start_server(**{**settings, **overrides})

    return start_with
