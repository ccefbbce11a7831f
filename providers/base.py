"""The provider contract: what every AI backend yields and how it fails.

Everything above this module (sessions, sockets, HTTP) sees only these types; each
provider module translates its SDK's exceptions into :class:`ProviderError` once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

ErrorCode = Literal[
    "auth",
    "rate_limited",
    "upstream",
    "timeout",
    "bad_request",
    "shutdown",
    "internal",
]


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts as reported by the provider."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_wire(self) -> dict[str, int]:
        return {
            "promptTokens": self.prompt_tokens,
            "completionTokens": self.completion_tokens,
            "totalTokens": self.total_tokens,
        }


@dataclass(frozen=True, slots=True)
class AIChunk:
    """One piece of a streamed answer (the seed's ``AIChunk``).

    ``content`` may be empty on the last items, which then only carry ``usage``
    and/or ``finish_reason``; the session never emits an empty chunk.
    """

    content: str
    metadata: dict[str, Any]
    usage: Usage | None = None
    finish_reason: str | None = None


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """A session's generation settings, snake_case (the wire uses camelCase)."""

    provider: str
    model: str
    system_prompt: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    tokens_per_second: float | None = None
    animation_type: str | None = None
    speed: float | None = None


class ProviderError(Exception):
    """A provider failure with a stable ``code`` and a message safe to show a user.

    The message never contains an API key or the prompt.
    """

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message


class AIProvider(Protocol):
    """The seed's ``AIProvider``: turns a prompt into an async stream of chunks.

    Closing the returned iterator (``aclose``) must close the upstream request.
    """

    name: str
    default_model: str

    def create_stream(self, prompt: str, config: StreamConfig) -> AsyncIterator[AIChunk]: ...


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    """What the provider factories need from the server's settings."""

    openai_api_key: str | None = None
    openai_base_url: str | None = None
    openai_model: str = "gpt-5.4-mini"
    anthropic_api_key: str | None = None
    anthropic_base_url: str | None = None
    anthropic_model: str = "claude-sonnet-4-6"
    anthropic_max_tokens: int = 4000
    request_timeout: float = 60.0
    max_retries: int = 2
    demo_tokens_per_second: float = 40.0
