"""The Anthropic provider: the Messages API streamed through the official SDK.

Every SDK failure leaves this module as a :class:`~providers.base.ProviderError`. The
temperature is not sent: the API version that SDK 2.x speaks (``2026-10-21``) refuses every
sampling parameter, so the SDK no longer has one.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import anthropic
import httpx2
from anthropic import AsyncAnthropic, omit
from anthropic.types import Message, MessageParam

from providers.base import AIChunk, ErrorCode, ProviderError, ProviderSettings, StreamConfig, Usage
from providers.errors import TRANSPORT_ERRORS, ErrorTranslator

#: Anthropic's stop reasons in the finish-reason words the other providers use.
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

#: The code of an ``event: error`` inside a stream (its HTTP status is the stream's 200).
_CODE_FOR_ERROR_TYPE: dict[str, ErrorCode] = {
    "authentication_error": "auth",
    "permission_error": "auth",
    "rate_limit_error": "rate_limited",
    "timeout_error": "timeout",
    "invalid_request_error": "bad_request",
    "not_found_error": "bad_request",
    "billing_error": "bad_request",
}


class AnthropicStreamingProvider:
    """Streams ``messages.stream(...)``: one chunk per text delta, then usage and stop reason."""

    name = "anthropic"

    def __init__(self, settings: ProviderSettings) -> None:
        self.default_model = settings.anthropic_model
        self._api_key = settings.anthropic_api_key
        self._max_tokens = settings.anthropic_max_tokens
        self._timeout = settings.request_timeout
        self._client = AsyncAnthropic(
            api_key=settings.anthropic_api_key,
            base_url=settings.anthropic_base_url,
            timeout=settings.request_timeout,
            max_retries=settings.max_retries,
        )

    async def aclose(self) -> None:
        """Close the SDK client's connection pool (streams close their own connection)."""
        await self._client.close()

    async def create_stream(self, prompt: str, config: StreamConfig) -> AsyncGenerator[AIChunk]:
        model = config.model or self.default_model
        errors = ErrorTranslator(
            label="Anthropic",
            base_url=str(self._client.base_url),
            model=model,
            api_key=self._api_key,
            prompt=prompt,
            timeout=self._timeout,
        )
        request = self._client.messages.stream(
            model=model,
            max_tokens=config.max_tokens or self._max_tokens,
            system=config.system_prompt or omit,
            messages=_messages(prompt, config),
        )
        metadata: dict[str, Any] = {"provider": self.name, "model": model}
        final: Message | None = None
        started = False
        # Leaving ``async with`` closes the response, and so the upstream connection, however
        # this generator ends: exhausted, failed, closed by ``aclose()`` or cancelled.
        try:
            async with request as stream:
                started = True
                async for event in stream:
                    if event.type == "message_start" and event.message.model:
                        metadata = {**metadata, "model": event.message.model}
                    elif event.type == "text" and event.text:
                        yield AIChunk(event.text, metadata)
                    elif event.type == "message_stop":
                        final = event.message
        except Exception as exc:
            # ``from None``: an SDK error's text may echo the key (our own bugs are logged).
            raise _translate(errors, exc, streaming=started) from None
        if final is None:
            raise errors.incomplete()
        usage = Usage(final.usage.input_tokens, final.usage.output_tokens)
        reason = final.stop_reason or "end_turn"
        yield AIChunk(
            "",
            {**metadata, "tokens": usage.total_tokens},
            usage=usage,
            finish_reason=FINISH_REASONS.get(reason, reason),
        )


def _translate(errors: ErrorTranslator, exc: Exception, *, streaming: bool) -> ProviderError:
    # Past the response headers the SDK lets httpx2's own exceptions through.
    if isinstance(exc, anthropic.APITimeoutError | httpx2.TimeoutException):
        return errors.timed_out()
    if isinstance(exc, (anthropic.APIConnectionError, *TRANSPORT_ERRORS)):
        return errors.connection(streaming=streaming)
    if isinstance(exc, anthropic.APIStatusError):
        message = exc.api_message or (exc.body if isinstance(exc.body, str) else None)
        if exc.status_code >= 400:
            return errors.status(exc.status_code, message)
        return errors.stream_error(_CODE_FOR_ERROR_TYPE.get(exc.type or "", "upstream"), message)
    if isinstance(exc, anthropic.APIError):
        return errors.stream_error("upstream", exc.message)
    if isinstance(exc, ValueError):
        # Broken JSON or an event that does not fit the schema.
        return errors.malformed()
    return errors.unexpected(exc)


def _messages(prompt: str, config: StreamConfig) -> list[MessageParam]:
    """The conversation so far (a follow-up's earlier turns), then the prompt."""
    turns: list[MessageParam] = []
    for turn in config.history:
        if turn.role == "assistant":
            turns.append({"role": "assistant", "content": turn.content})
        else:
            turns.append({"role": "user", "content": turn.content})
    turns.append({"role": "user", "content": prompt})
    return turns
