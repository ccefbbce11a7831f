"""The OpenAI provider: Chat Completions, or the Responses API in background mode, streamed
through the official SDK.

It also serves any OpenAI-compatible server (Ollama, vLLM, llama.cpp, LM Studio) through
``OPENAI_BASE_URL``, with or without an API key. Every SDK failure leaves this module as a
:class:`~providers.base.ProviderError`.

In background mode (``OPENAI_BACKGROUND``) OpenAI generates and stores the answer whether or
not anyone is connected, so the stream is resumable (:class:`~providers.base.ResumableProvider`):
every chunk carries the checkpoint ``{"responseId": ..., "after": <sequence_number>}`` of the
event it comes from, and ``responses.retrieve(id, stream=True, starting_after=after)``
re-delivers the events that follow it, to this process or another.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import httpx2
import openai
from openai import AsyncOpenAI, AsyncStream, omit
from openai.types.chat import ChatCompletionMessageParam
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseErrorEvent,
    ResponseFailedEvent,
    ResponseIncompleteEvent,
    ResponseInputParam,
    ResponseStreamEvent,
    ResponseTextDeltaEvent,
)

from providers.base import AIChunk, ErrorCode, ProviderError, ProviderSettings, StreamConfig, Usage
from providers.errors import TRANSPORT_ERRORS, ErrorTranslator

log = logging.getLogger(__name__)

#: Sent when a local server needs no key: the SDK refuses to run without one.
NO_KEY = "not-needed"


OPENAI_HOST = "api.openai.com"

#: Why a Responses API answer stopped early (``incomplete_details.reason``), in the
#: finish-reason words of Chat Completions.
INCOMPLETE_REASONS = {"max_output_tokens": "length", "content_filter": "content_filter"}

#: The code of a failed response's ``error.code`` (or an ``error`` event's ``code``); any
#: other code is ``upstream``.
_CODE_FOR_RESPONSE_ERROR: dict[str, ErrorCode] = {
    "rate_limit_exceeded": "rate_limited",
    "invalid_prompt": "bad_request",
}

#: Opens the SDK stream of a background response (``create`` or ``retrieve``).
_OpenEvents = Callable[[], Awaitable[AsyncStream[ResponseStreamEvent]]]


class OpenAIStreamingProvider:
    """Streams ``chat.completions.create(stream=True)``: one chunk per content delta, then usage.

    With ``openai_background`` it streams ``responses.create(background=True, stream=True)``
    instead: one chunk per event (empty but for text deltas), each with its checkpoint, then
    usage; such a stream can be resumed with :meth:`resume_stream` and stopped for good with
    :meth:`cancel`.
    """

    name = "openai"

    def __init__(self, settings: ProviderSettings) -> None:
        self.default_model = settings.openai_model
        self._api_key = settings.openai_api_key
        self._timeout = settings.request_timeout
        self._background = settings.openai_background
        self._client = AsyncOpenAI(
            api_key=settings.openai_api_key or NO_KEY,
            base_url=settings.openai_base_url,
            timeout=settings.request_timeout,
            max_retries=settings.max_retries,
        )

    async def aclose(self) -> None:
        """Close the SDK client's connection pool (streams close their own connection)."""
        await self._client.close()

    def create_stream(self, prompt: str, config: StreamConfig) -> AsyncGenerator[AIChunk]:
        if not self._background:
            return self._chat_stream(prompt, config)
        model = config.model or self.default_model

        async def open_events() -> AsyncStream[ResponseStreamEvent]:
            return await self._client.responses.create(
                model=model,
                input=_response_input(prompt, config),
                instructions=config.system_prompt or omit,
                background=True,
                stream=True,
                store=True,
                temperature=omit if config.temperature is None else config.temperature,
                max_output_tokens=omit if config.max_tokens is None else config.max_tokens,
            )

        return self._response_stream(open_events, self._errors(model, prompt), model, None, skip=0)

    # -- resuming (background mode) ---------------------------------------------------

    def resumable(self, config: StreamConfig) -> bool:
        """Only a background response outlives the connection that asked for it."""
        return self._background

    def start_checkpoint(self, prompt: str, config: StreamConfig) -> dict[str, Any] | None:
        """Nothing to resume until ``response.created`` has named the response."""
        return None

    def resume_stream(
        self, config: StreamConfig, checkpoint: dict[str, Any], skip: int
    ) -> AsyncGenerator[AIChunk]:
        model = config.model or self.default_model
        response_id, after = str(checkpoint["responseId"]), int(checkpoint["after"])
        position = {"responseId": response_id, "after": after}

        async def open_events() -> AsyncStream[ResponseStreamEvent]:
            return await self._client.responses.retrieve(response_id, stream=True, starting_after=after)

        # The checkpoint does not hold the prompt: messages still lose the key and key-like text.
        return self._response_stream(open_events, self._errors(model, ""), model, position, skip=skip)

    async def cancel(self, checkpoint: dict[str, Any]) -> None:
        """Cancel the background response upstream; a failure is only logged (at debug level)."""
        response_id = checkpoint.get("responseId")
        try:
            await self._client.responses.cancel(str(response_id))
        except Exception as exc:
            # Only the type and status: an SDK error's text may echo the key.
            status = getattr(exc, "status_code", None)
            log.debug(
                "could not cancel OpenAI response %s: %s%s",
                response_id,
                type(exc).__name__,
                f" (HTTP {status})" if status is not None else "",
            )

    # -- the two APIs -------------------------------------------------------------------

    def _errors(self, model: str, prompt: str) -> ErrorTranslator:
        return ErrorTranslator(
            label="OpenAI",
            base_url=str(self._client.base_url),
            model=model,
            api_key=self._api_key,
            prompt=prompt,
            timeout=self._timeout,
        )

    async def _chat_stream(self, prompt: str, config: StreamConfig) -> AsyncGenerator[AIChunk]:
        model = config.model or self.default_model
        errors = self._errors(model, prompt)
        messages: list[ChatCompletionMessageParam] = []
        if config.system_prompt:
            messages.append({"role": "system", "content": config.system_prompt})
        for turn in config.history:
            if turn.role == "assistant":
                messages.append({"role": "assistant", "content": turn.content})
            else:
                messages.append({"role": "user", "content": turn.content})
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

    async def _response_stream(
        self,
        open_events: _OpenEvents,
        errors: ErrorTranslator,
        model: str,
        resume_from: dict[str, Any] | None,
        *,
        skip: int,
    ) -> AsyncGenerator[AIChunk]:
        """A background response's events as chunks, less the first ``skip`` characters of text.

        ``resume_from`` is the checkpoint a resumed stream goes on from; a new one learns its
        response's id from ``response.created``. While text is being skipped nothing is
        yielded: a checkpoint stands for all the text up to its event, which must have been
        yielded (or logged before) by the time it is.
        """
        metadata: dict[str, Any] = {"provider": self.name, "model": model}
        response_id = None if resume_from is None else str(resume_from["responseId"])
        checkpoint = resume_from
        ended: Response | None = None
        failure: ProviderError | None = None
        started = received = False
        skip = max(skip, 0)
        # As in the chat path, leaving ``async with`` closes the HTTP response however this
        # generator ends; it does not cancel the response upstream (that is :meth:`cancel`).
        try:
            events = await open_events()
            async with events:
                started = True
                async for event in events:
                    received = True
                    response = getattr(event, "response", None)
                    if isinstance(response, Response):
                        response_id = response.id
                        if response.model and response.model != metadata["model"]:
                            metadata = {**metadata, "model": response.model}
                    failure = _failure(errors, event)
                    if failure is not None:
                        break
                    checkpoint = _checkpoint(response_id, event)
                    if isinstance(event, ResponseCompletedEvent | ResponseIncompleteEvent):
                        ended = event.response
                        break
                    text = event.delta if isinstance(event, ResponseTextDeltaEvent) else ""
                    if skip:
                        cut = min(skip, len(text))
                        text, skip = text[cut:], skip - cut
                        if skip:
                            continue
                    yield AIChunk(text, metadata, checkpoint=checkpoint)
            if response_id is not None and not received and failure is None:
                # Resumed after the last event (the last chunk's checkpoint): nothing more
                # comes, the response itself tells how it ended.
                ended = await self._client.responses.retrieve(response_id)
                failure = _response_failure(errors, ended)
        except Exception as exc:
            raise _translate_responses(
                errors, exc, streaming=started, resuming=resume_from is not None
            ) from None
        if failure is not None:
            raise failure
        if ended is None or ended.status not in (None, "completed", "incomplete"):
            raise errors.incomplete()
        usage = None
        if ended.usage is not None:
            usage = Usage(ended.usage.input_tokens, ended.usage.output_tokens)
            metadata = {**metadata, "tokens": usage.total_tokens}
        finish_reason = "stop"
        if ended.status == "incomplete" or ended.incomplete_details is not None:
            reason = ended.incomplete_details.reason if ended.incomplete_details is not None else None
            finish_reason = INCOMPLETE_REASONS.get(reason or "", reason or "length")
        yield AIChunk("", metadata, usage=usage, finish_reason=finish_reason, checkpoint=checkpoint)


def _response_input(prompt: str, config: StreamConfig) -> str | ResponseInputParam:
    """The Responses API's ``input``: the prompt alone, as before, or the conversation so far
    (a follow-up) as messages ending with it."""
    if not config.history:
        return prompt
    items: ResponseInputParam = [{"role": turn.role, "content": turn.content} for turn in config.history]
    items.append({"role": "user", "content": prompt})
    return items


def _checkpoint(response_id: str | None, event: ResponseStreamEvent) -> dict[str, Any] | None:
    """Where a resumed stream goes on from: just after ``event``."""
    after = getattr(event, "sequence_number", None)
    if not isinstance(after, int):
        raise ValueError("a Responses API event without a sequence_number")  # read as malformed
    return None if response_id is None else {"responseId": response_id, "after": after}


def _failure(errors: ErrorTranslator, event: ResponseStreamEvent) -> ProviderError | None:
    """The error a background response's event reports, if it ends the stream with one."""
    if isinstance(event, ResponseErrorEvent):
        return errors.stream_error(_CODE_FOR_RESPONSE_ERROR.get(event.code or "", "upstream"), event.message)
    if getattr(event, "type", None) == "response.cancelled":
        return _cancelled(errors)
    if isinstance(event, ResponseFailedEvent):
        return _response_failure(errors, event.response, failed=True)
    response = getattr(event, "response", None)
    return _response_failure(errors, response) if isinstance(response, Response) else None


def _response_failure(
    errors: ErrorTranslator, response: Response, *, failed: bool = False
) -> ProviderError | None:
    """The error of a response that failed or was cancelled."""
    if failed or response.status == "failed":
        error = response.error
        if error is None:
            return errors.stream_error("upstream", None)
        return errors.stream_error(_CODE_FOR_RESPONSE_ERROR.get(error.code, "upstream"), error.message)
    if response.status == "cancelled":
        # The SDK has no event for a cancelled response; whatever tells of one ends the stream.
        return _cancelled(errors)
    return None


def _cancelled(errors: ErrorTranslator) -> ProviderError:
    return errors.stream_error("upstream", "the response was cancelled")


def _translate_responses(
    errors: ErrorTranslator, exc: Exception, *, streaming: bool, resuming: bool
) -> ProviderError:
    if resuming and isinstance(exc, openai.NotFoundError):
        # Not the model's fault, as a 404 from ``create`` would be: the response is gone.
        detail = errors.detail(_upstream_message(exc.body))
        return ProviderError("upstream", f"OpenAI no longer has the response to resume: {detail}")
    return _translate(errors, exc, streaming=streaming)


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
