"""The provider contract: what every AI backend yields and how it fails.

Everything above this module (sessions, sockets, HTTP) sees only these types; each
provider module translates its SDK's exceptions into :class:`ProviderError` once.
"""

from __future__ import annotations

import asyncio
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
    #: A resumable provider's position just after this item (see :class:`ResumableProvider`):
    #: JSON-able, small, and enough for :meth:`ResumableProvider.resume_stream` to go on from.
    checkpoint: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Turn:
    """One earlier message of a conversation (a follow-up's history)."""

    role: Literal["user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class Task:
    """What the writer asked for, as the editor sent it (PROTOCOL.md "Document context").

    Real models get it through the messages the server built from a template; a provider
    that answers without a model (the demo) reads it here."""

    action: str = "custom"
    instruction: str = ""
    selection: str | None = None
    before: str | None = None
    after: str | None = None
    options: tuple[tuple[str, str], ...] = ()

    def option(self, name: str) -> str | None:
        return dict(self.options).get(name)


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """A session's generation settings, snake_case (the wire uses camelCase).

    ``system_prompt`` is the system message (the action's template and the client's own,
    joined); ``history`` the conversation before the prompt (a follow-up: the earlier
    request and answer, as alternating user and assistant turns); ``task`` the action and
    context the prompt was built from."""

    provider: str
    model: str
    system_prompt: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    tokens_per_second: float | None = None
    animation_type: str | None = None
    speed: float | None = None
    history: tuple[Turn, ...] = ()
    task: Task | None = None


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


class ResumableProvider(AIProvider, Protocol):
    """A provider whose stream another process can continue after the first one died
    (Redis mode failover; PROTOCOL.md, "Several processes").

    The server keeps, with the session's log, the latest checkpoint whose text is all
    logged, and how many characters of content the stream had produced at that point.
    A successor calls :meth:`resume_stream` with that checkpoint and ``skip``, the
    characters logged since it: the provider yields exactly the text that follows, so the
    resumed stream has no gap and no duplicate.
    """

    def resumable(self, config: StreamConfig) -> bool:
        """Whether a stream with ``config`` can be resumed (OpenAI: background mode only)."""
        ...

    def start_checkpoint(self, prompt: str, config: StreamConfig) -> dict[str, Any] | None:
        """Where to resume from before the stream's first item, or ``None`` when the
        stream can only be resumed once it has yielded a checkpoint."""
        ...

    def resume_stream(
        self, config: StreamConfig, checkpoint: dict[str, Any], skip: int
    ) -> AsyncIterator[AIChunk]:
        """The stream from ``checkpoint`` on, without the first ``skip`` characters of
        content; it keeps yielding checkpoints, and ends as :meth:`create_stream` would."""
        ...

    async def cancel(self, checkpoint: dict[str, Any]) -> None:
        """Stop the upstream work for good (a stream that ends early and will not be
        resumed: cancelled, failed, or stopped with no hand-over). Never raises."""
        ...


def is_resumable(provider: AIProvider, config: StreamConfig) -> bool:
    """``provider`` can continue a stream of ``config`` in another process."""
    check = getattr(provider, "resumable", None)
    return callable(check) and bool(check(config))


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    """What the provider factories need from the server's settings."""

    openai_api_key: str | None = None
    openai_base_url: str | None = None
    openai_model: str = "gpt-5.4-mini"
    #: Stream through the Responses API in background mode, so that a stream survives
    #: the process that started it (``OPENAI_BACKGROUND``).
    openai_background: bool = False
    anthropic_api_key: str | None = None
    anthropic_base_url: str | None = None
    anthropic_model: str = "claude-sonnet-4-6"
    anthropic_max_tokens: int = 4000
    request_timeout: float = 60.0
    max_retries: int = 2
    demo_tokens_per_second: float = 40.0


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def sleep_until(loop: asyncio.AbstractEventLoop, when: float) -> None:
    """Sleep until ``loop.time()`` reaches ``when``: ``asyncio.sleep`` on a loop already at
    hand. ``asyncio.sleep`` looks the running loop up, a ``getpid()`` system call in CPython
    3.11, and a paced stream sleeps once per token (the demo) or per chunk (the pump)."""
    future = loop.create_future()
    handle = loop.call_at(when, _wake, future)
    try:
        await future
    finally:
        handle.cancel()
