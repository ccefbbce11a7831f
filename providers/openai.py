"""The OpenAI provider: Chat Completions streamed through the official SDK.

It also serves any OpenAI-compatible server (Ollama, vLLM, llama.cpp, LM Studio) through
``OPENAI_BASE_URL``, with or without an API key. Every SDK failure leaves this module as a
:class:`~providers.base.ProviderError`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import httpx2
import openai
from openai import AsyncOpenAI, omit
from openai.types.chat import ChatCompletionMessageParam

from providers.base import AIChunk, ProviderError, ProviderSettings, StreamConfig, Usage
from providers.errors import TRANSPORT_ERRORS, ErrorTranslator

#: Sent when a local server needs no key: the SDK refuses to run without one.
NO_KEY = "not-needed"


OPENAI_HOST = "api.openai.com"


class OpenAIStreamingProvider:
    """Streams ``chat.completions.create(stream=True)``: one chunk per content delta, then usage."""

    name = "openai"

    def __init__(self, settings: ProviderSettings) -> None:
        self.default_model = settings.openai_model
        self._api_key = settings.openai_api_key
        self._timeout = settings.request_timeout
        self._client = AsyncOpenAI(
            api_key=settings.openai_api_key or NO_KEY,
            base_url=settings.openai_base_url,
            timeout=settings.request_timeout,
            max_retries=settings.max_retries,
        )

    async def aclose(self) -> None:
        """Close the SDK client's connection pool (streams close their own connection)."""
        await self._client.close()

    async def create_stream(self, prompt: str, config: StreamConfig) -> AsyncGenerator[AIChunk]:
        model = config.model or self.default_model
        errors = ErrorTranslator(
            label="OpenAI",
            base_url=str(self._client.base_url),
            model=model,
            api_key=self._api_key,
            prompt=prompt,
            timeout=self._timeout,
        )
        messages: list[ChatCompletionMessageParam] = []
        if config.system_prompt:
            messages.append({"role": "system", "content": config.system_prompt})
        messages.append({"role": "user", "content": prompt})

        metadata: dict[str, Any] = {"provider": self.name, "model": model}
        usage: Usage | None = None
        finish_reason: str | None = None
        started = False
        # Leaving ``async with`` closes the response, and so the upstream connection, however
        # this generator ends: exhausted, failed, closed by ``aclose()`` or cancelled.
        # OpenAI's current models take ``max_completion_tokens`` and refuse ``max_tokens``;
        # OpenAI-compatible servers (Ollama, vLLM, llama.cpp) know ``max_tokens``.
        official = self._client.base_url.host == OPENAI_HOST
        try:
            stream = await self._client.chat.completions.create(
                model=model,
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
                temperature=omit if config.temperature is None else config.temperature,
                max_tokens=omit if official or config.max_tokens is None else config.max_tokens,
                max_completion_tokens=(
                    config.max_tokens if official and config.max_tokens is not None else omit
                ),
            )
            async with stream:
                started = True
                async for chunk in stream:
                    if chunk.model and chunk.model != metadata["model"]:
                        metadata = {**metadata, "model": chunk.model}
                    if chunk.usage is not None:
                        usage = Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                    if not chunk.choices:
                        continue
                    choice = chunk.choices[0]
                    if choice.finish_reason is not None:
                        finish_reason = choice.finish_reason
                    if choice.delta.content:
                        yield AIChunk(choice.delta.content, metadata)
        except Exception as exc:
            # ``from None``: an SDK error's text may echo the key (our own bugs are logged).
            raise _translate(errors, exc, streaming=started) from None
        if finish_reason is None:
            raise errors.incomplete()
        if usage is not None:
            metadata = {**metadata, "tokens": usage.total_tokens}
        yield AIChunk("", metadata, usage=usage, finish_reason=finish_reason)


def _translate(errors: ErrorTranslator, exc: Exception, *, streaming: bool) -> ProviderError:
    if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException):
        return errors.timed_out()
    if isinstance(exc, (openai.APIConnectionError, *TRANSPORT_ERRORS)):
        return errors.connection(streaming=streaming)
    if isinstance(exc, openai.APIStatusError):
        blames_model = exc.code == "model_not_found" or exc.param == "model"
        return errors.status(exc.status_code, _upstream_message(exc.body), model_error=blames_model)
    if isinstance(exc, openai.APIError):
        # An ``{"error": ...}`` object sent inside a stream that had started fine.
        return errors.stream_error("upstream", _upstream_message(exc.body) or exc.message)
    if isinstance(exc, ValueError):
        # Broken JSON or a chunk that does not fit the schema.
        return errors.malformed()
    return errors.unexpected(exc)


def _upstream_message(body: object) -> str | None:
    """The human part of an OpenAI error body (the SDK hands over its ``error`` object)."""
    if isinstance(body, dict):
        message = body.get("message")
        return message if isinstance(message, str) else None
    if isinstance(body, str):
        return body
    return None
