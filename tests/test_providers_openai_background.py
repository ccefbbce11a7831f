"""The OpenAI provider in background mode (Responses API), resumable from a checkpoint.

Through the real SDK against the fake OpenAI API on 127.0.0.1, whose background responses
go on generating whether or not a client is connected (``tests.fake_upstream.FakeResponse``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from openai import AsyncOpenAI

from providers.base import (
    AIChunk,
    ProviderError,
    ProviderSettings,
    ResumableProvider,
    StreamConfig,
    Usage,
    is_resumable,
)
from providers.openai import OpenAIStreamingProvider
from tests.fake_upstream import FakeUpstream, Script, collect, failure, providers_of

KEY = "sk-test-openai-0123456789abcdef"
PROMPT = "Write a haiku about streaming text"
TOKENS = ["Once", " upon", " a", " time", ",", " a", " stream", " broke", "."]
FULL = "".join(TOKENS)
#: Chunks before the first text delta: response.created, .in_progress, .output_item.added,
#: .content_part.added; and after the last: .output_text.done, .content_part.done,
#: .output_item.done, then the last chunk (response.completed).
HEAD, TAIL = 4, 4

MakeProvider = Callable[..., OpenAIStreamingProvider]


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream(api_key=KEY) as upstream:
        upstream.script = Script(tokens=TOKENS)
        yield upstream


@pytest.fixture
async def make_provider(fake: FakeUpstream) -> AsyncIterator[MakeProvider]:
    """Background-mode providers aimed at the fake: no SDK retries and a short timeout unless asked."""
    async with providers_of(
        OpenAIStreamingProvider,
        openai_api_key=KEY,
        openai_base_url=fake.openai_base_url,
        openai_background=True,
    ) as make:
        yield make


def config(**overrides: Any) -> StreamConfig:
    values: dict[str, Any] = {"provider": "openai", "model": "gpt-4"}
    values.update(overrides)
    return StreamConfig(**values)


def text(chunks: list[AIChunk]) -> str:
    return "".join(c.content for c in chunks)


def afters(chunks: list[AIChunk]) -> list[int]:
    return [c.checkpoint["after"] for c in chunks if c.checkpoint is not None]


# -- the request and the stream ------------------------------------------------------


async def test_request_is_a_background_streaming_responses_call(
    fake: FakeUpstream, make_provider: MakeProvider
) -> None:
    settings = config(system_prompt="Answer in Markdown.", temperature=0.3, max_tokens=50)
    await collect(make_provider().create_stream(PROMPT, settings))

    (request,) = fake.requests
    assert (request.method, request.path) == ("POST", "/v1/responses")
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.body == {
        "model": "gpt-4",
        "input": PROMPT,
        "instructions": "Answer in Markdown.",
        "background": True,
        "stream": True,
        "store": True,
        "temperature": 0.3,
        "max_output_tokens": 50,
    }


async def test_unset_options_are_left_out_of_the_request(
    fake: FakeUpstream, make_provider: MakeProvider
) -> None:
    await collect(make_provider().create_stream(PROMPT, config(model="gpt-4.1-mini", system_prompt="")))

    assert fake.requests[0].body == {
        "model": "gpt-4.1-mini",
        "input": PROMPT,
        "background": True,
        "stream": True,
        "store": True,
    }


async def test_every_event_is_a_chunk_with_a_checkpoint_then_usage(
    fake: FakeUpstream, make_provider: MakeProvider
) -> None:
    chunks = await collect(make_provider().create_stream(PROMPT, config()))

    response = await fake.wait_for_response()
    assert len(chunks) == HEAD + len(TOKENS) + TAIL == len(response.events)
    assert [c.content for c in chunks] == [""] * HEAD + TOKENS + [""] * TAIL
    assert [c.checkpoint for c in chunks] == [
        {"responseId": response.id, "after": n} for n in range(len(chunks))
    ]
    *items, last = chunks
    assert all(c.metadata == {"provider": "openai", "model": "gpt-4"} for c in items)
    assert all(c.usage is None and c.finish_reason is None for c in items)
    assert last.usage == Usage(prompt_tokens=11, completion_tokens=len(TOKENS))
    assert last.finish_reason == "stop"
    assert last.metadata == {"provider": "openai", "model": "gpt-4", "tokens": 11 + len(TOKENS)}
    await fake.requests[0].wait_finished()
    assert response.status == "completed"
    assert response.cancel_calls == 0


async def test_metadata_names_the_model_the_upstream_reports(
    fake: FakeUpstream, make_provider: MakeProvider
) -> None:
    fake.script = Script(tokens=TOKENS, model="gpt-4-0613")
    chunks = await collect(make_provider().create_stream(PROMPT, config()))

    assert {c.metadata["model"] for c in chunks} == {"gpt-4-0613"}


async def test_max_tokens_is_finish_reason_length(fake: FakeUpstream, make_provider: MakeProvider) -> None:
    chunks = await collect(make_provider().create_stream(PROMPT, config(max_tokens=3)))

    assert text(chunks) == "Once upon a"
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].usage == Usage(prompt_tokens=11, completion_tokens=3)
    assert fake.requests[0].body["max_output_tokens"] == 3
    assert (await fake.wait_for_response()).status == "incomplete"


@pytest.mark.parametrize(
    "script",
    [
        Script(tokens=TOKENS),
        Script(tokens=TOKENS, finish_reason="length"),
        Script(tokens=TOKENS, error_after=2),
        Script(tokens=TOKENS, error_after=2, response_error="error"),
    ],
    ids=["completed", "incomplete", "failed", "error-event"],
)
async def test_the_fakes_events_pass_the_sdks_strict_validation(fake: FakeUpstream, script: Script) -> None:
    """The SDK falls back to unvalidated models on a mismatch; a strict client does not."""
    fake.script = script
    client = AsyncOpenAI(
        api_key=KEY, base_url=fake.openai_base_url, max_retries=0, _strict_response_validation=True
    )
    try:
        stream = await client.responses.create(model="gpt-4", input=PROMPT, background=True, stream=True)
        async with stream:
            events = [event async for event in stream]
        response = await fake.wait_for_response()
        replay = await client.responses.retrieve(response.id, stream=True, starting_after=3)
        async with replay:
            replayed = [event async for event in replay]
        retrieved = await client.responses.retrieve(response.id)
    finally:
        await client.close()

    assert [e.model_dump(mode="json", exclude_unset=True) for e in events] == response.events
    assert [e.sequence_number for e in replayed] == list(range(4, len(events)))
    assert retrieved.id == response.id
    assert retrieved.status == response.status


# -- resuming --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("consumed", "resume_at", "unlogged"),
    [
        (HEAD + 3, HEAD + 2, 0),  # from the last chunk read
        (HEAD + 5, HEAD, 0),  # from an earlier chunk: skip the text read since
        (HEAD + 7, HEAD + 1, 3),  # the logged text ends inside a delta (" str|eam")
        (HEAD + 7, HEAD - 1, 3),  # ... several deltas after the checkpoint
        (HEAD + 2, 0, 0),  # from response.created, before any text
        (HEAD + len(TOKENS) + 2, HEAD + len(TOKENS) - 1, 0),  # from the last delta: no text left
    ],
)
async def test_resuming_from_an_earlier_checkpoint_gives_exactly_the_rest(
    fake: FakeUpstream, make_provider: MakeProvider, consumed: int, resume_at: int, unlogged: int
) -> None:
    provider = make_provider()
    stream = provider.create_stream(PROMPT, config())
    chunks = [await anext(stream) for _ in range(consumed)]
    await stream.aclose()
    # What "the server" logged: the text read, but maybe the last few characters.
    logged = text(chunks)[: len(text(chunks)) - unlogged]
    checkpoint = chunks[resume_at].checkpoint
    assert checkpoint is not None
    skip = len(logged) - len(text(chunks[: resume_at + 1]))

    # Another process resumes: a provider of its own.
    successor = make_provider()
    resumed = await collect(successor.resume_stream(config(), checkpoint, skip))

    assert logged + text(resumed) == FULL
    # No checkpoint while skipping: each one stands for exactly the text up to it.
    for index, chunk in enumerate(resumed):
        assert chunk.checkpoint is not None
        rest = await collect(successor.resume_stream(config(), chunk.checkpoint, 0))
        assert logged + text(resumed[: index + 1]) + text(rest) == FULL
    assert all(c.checkpoint and c.checkpoint["responseId"] == checkpoint["responseId"] for c in resumed)
    assert afters(resumed) == sorted(set(afters(resumed)))
    assert afters(resumed)[0] > checkpoint["after"]
    assert resumed[-1].finish_reason == "stop"
    assert resumed[-1].usage == Usage(prompt_tokens=11, completion_tokens=len(TOKENS))
    retrieve = fake.requests[1]
    assert (retrieve.method, retrieve.path) == ("GET", f"/v1/responses/{checkpoint['responseId']}")
    assert retrieve.query == {"stream": "true", "starting_after": str(checkpoint["after"])}
    # Closing the first stream left the response alone: it was generated to the end.
    response = fake.responses[checkpoint["responseId"]]
    await response.wait_done()
    assert response.status == "completed"
    assert response.cancel_calls == 0


async def test_every_checkpoint_resumes_right_after_its_chunk(
    fake: FakeUpstream, make_provider: MakeProvider
) -> None:
    """Resumed streams yield checkpoints too, and resuming from those works the same."""
    provider = make_provider()
    chunks = await collect(provider.create_stream(PROMPT, config()))

    for index, chunk in enumerate(chunks):
        assert chunk.checkpoint is not None
        resumed = await collect(provider.resume_stream(config(), chunk.checkpoint, 0))
        # After the last chunk nothing follows: its resumption is the last chunk again (a
        # process may die after handing it over, before it finished the session).
        assert resumed == (chunks[index + 1 :] or chunks[-1:])


async def test_resuming_a_response_that_is_still_generating(
    fake: FakeUpstream, make_provider: MakeProvider
) -> None:
    fake.script = Script(tokens=TOKENS, pause_after=3)
    provider = make_provider()
    stream = provider.create_stream(PROMPT, config())
    chunks = [await anext(stream) for _ in range(HEAD + 3)]
    await stream.aclose()
    await fake.requests[0].wait_disconnected()
    response = await fake.wait_for_response()
    assert not response.done.is_set()
    checkpoint = chunks[-1].checkpoint
    assert checkpoint is not None

    reading = asyncio.create_task(collect(provider.resume_stream(config(), checkpoint, 0)))
    retrieve = await fake.wait_for_request_to("GET", f"/v1/responses/{response.id}")
    assert retrieve.query["starting_after"] == str(checkpoint["after"])
    assert response.deltas == 3
    assert not fake.gate.is_set()
    fake.gate.set()

    rest = await asyncio.wait_for(reading, timeout=10)
    assert text(chunks) + text(rest) == FULL
    assert rest[-1].finish_reason == "stop"


async def test_a_dropped_connection_fails_but_the_response_goes_on_and_resumes(
    fake: FakeUpstream, make_provider: MakeProvider
) -> None:
    fake.enqueue(Script(tokens=TOKENS, drop_after=4, token_delay=0.01))
    provider = make_provider()
    stream = provider.create_stream(PROMPT, config())
    chunks: list[AIChunk] = []
    with pytest.raises(ProviderError) as caught:
        async for chunk in stream:
            chunks.append(chunk)

    assert caught.value.code == "upstream"
    assert caught.value.message == "The connection to OpenAI was lost mid-stream"
    assert text(chunks) == "".join(TOKENS[:4])
    checkpoint = chunks[-1].checkpoint
    assert checkpoint is not None
    rest = await collect(provider.resume_stream(config(), checkpoint, 0))
    assert text(chunks) + text(rest) == FULL


async def test_resuming_an_unknown_response_is_upstream(make_provider: MakeProvider) -> None:
    checkpoint = {"responseId": "resp_gone", "after": 7}
    error = await failure(make_provider().resume_stream(config(), checkpoint, 0))

    assert error.code == "upstream"
    assert error.message == (
        "OpenAI no longer has the response to resume: Response with id 'resp_gone' not found."
    )


# -- closing and cancelling ---------------------------------------------------------------


async def test_aclose_closes_the_connection_but_does_not_cancel(
    fake: FakeUpstream, make_provider: MakeProvider
) -> None:
    fake.script = Script(tokens=TOKENS, pause_after=2)
    stream = make_provider().create_stream(PROMPT, config())
    assert text([await anext(stream) for _ in range(HEAD + 2)]) == "Once upon"

    await stream.aclose()

    request = fake.requests[0]
    await request.wait_disconnected()
    assert not request.finished.is_set()
    assert not fake.gate.is_set()
    fake.gate.set()
    response = await fake.wait_for_response()
    await response.wait_done()
    assert response.status == "completed"
    assert response.text == FULL
    assert response.cancel_calls == 0
    assert [r.path for r in fake.requests] == ["/v1/responses"]


async def test_cancelling_the_task_before_the_first_token_closes_the_connection(
    fake: FakeUpstream, make_provider: MakeProvider
) -> None:
    fake.script = Script(tokens=TOKENS, hang="before_first_token")
    stream = make_provider().create_stream(PROMPT, config())
    first = asyncio.create_task(anext(stream))
    request = await fake.wait_for_request()
    await request.wait_sent(tokens=0)

    first.cancel()

    await request.wait_disconnected()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert (await fake.wait_for_response()).cancel_calls == 0


async def test_cancel_stops_the_response_upstream(fake: FakeUpstream, make_provider: MakeProvider) -> None:
    fake.script = Script(tokens=TOKENS, pause_after=2)
    provider = make_provider()
    stream = provider.create_stream(PROMPT, config())
    chunks = [await anext(stream) for _ in range(HEAD + 2)]
    await stream.aclose()
    checkpoint = chunks[-1].checkpoint
    assert checkpoint is not None

    await provider.cancel(checkpoint)

    response = await fake.wait_cancelled(checkpoint["responseId"])
    assert response.cancel_calls == 1
    assert response.status == "cancelled"
    assert response.done.is_set()
    assert response.deltas == 2
    cancel = fake.requests[-1]
    assert (cancel.method, cancel.path) == ("POST", f"/v1/responses/{response.id}/cancel")
    assert cancel.headers["Authorization"] == f"Bearer {KEY}"


async def test_a_stream_cancelled_elsewhere_ends_incomplete(
    fake: FakeUpstream, make_provider: MakeProvider
) -> None:
    """A cancelled response gets no terminal event: its open streams just end."""
    fake.script = Script(tokens=TOKENS, pause_after=2)
    provider = make_provider()
    stream = provider.create_stream(PROMPT, config())
    chunks = [await anext(stream) for _ in range(HEAD + 2)]
    checkpoint = chunks[-1].checkpoint
    assert checkpoint is not None

    await make_provider().cancel(checkpoint)

    error = await failure(stream)
    assert error.code == "upstream"
    assert error.message == "The answer from OpenAI ended before it was complete"
    # Resumed after its last event, the response itself says it was cancelled.
    error = await failure(provider.resume_stream(config(), checkpoint, 0))
    assert error.code == "upstream"
    assert error.message == "OpenAI reported an error mid-stream: the response was cancelled"


async def test_cancel_never_raises_nor_logs_secrets(
    fake: FakeUpstream, make_provider: MakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="providers.openai")
    wrong = "sk-wrong-key-9876543210fedcba"
    chunks = await collect(make_provider().create_stream(PROMPT, config()))
    checkpoint = chunks[-1].checkpoint
    assert checkpoint is not None

    await make_provider().cancel(checkpoint)  # already completed: the API refuses (400)
    await make_provider().cancel({"responseId": "resp_unknown", "after": 0})  # 404
    await make_provider(openai_api_key=wrong).cancel(checkpoint)  # 401
    await make_provider().cancel({})  # no id at all
    async with FakeUpstream() as gone:
        base_url = gone.openai_base_url
    await make_provider(openai_base_url=base_url).cancel(checkpoint)  # unreachable

    assert "HTTP 400" in caplog.text
    assert "HTTP 404" in caplog.text
    assert "HTTP 401" in caplog.text
    assert KEY not in caplog.text
    assert wrong not in caplog.text
    assert PROMPT not in caplog.text


# -- failures --------------------------------------------------------------------------------


async def test_bad_key_is_auth_and_the_key_stays_out_of_the_message(make_provider: MakeProvider) -> None:
    wrong = "sk-wrong-key-9876543210fedcba"
    error = await failure(make_provider(openai_api_key=wrong).create_stream(PROMPT, config()))

    assert error.code == "auth"
    assert error.message.startswith("OpenAI rejected the API key (HTTP 401): Incorrect API key provided")
    assert wrong not in error.message
    assert PROMPT not in error.message


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (429, "rate_limited", "OpenAI is rate limiting requests (HTTP 429): Rate limit reached"),
        (500, "upstream", "OpenAI failed (HTTP 500): The server had an error"),
        (400, "bad_request", "OpenAI rejected the request (HTTP 400): Invalid request."),
    ],
)
async def test_error_statuses_map_to_codes_as_in_the_chat_path(
    fake: FakeUpstream, make_provider: MakeProvider, status: int, code: str, message: str
) -> None:
    fake.script = Script(status=status)
    error = await failure(make_provider().create_stream(PROMPT, config()))

    assert error.code == code
    assert error.message.startswith(message)
    assert not fake.responses


async def test_a_rate_limit_that_clears_is_invisible(fake: FakeUpstream, make_provider: MakeProvider) -> None:
    fake.enqueue(Script(status=429))
    chunks = await collect(make_provider(max_retries=2).create_stream(PROMPT, config()))

    assert text(chunks) == FULL
    assert len(fake.requests) == 2
    assert len(fake.responses) == 1


@pytest.mark.parametrize("kind", ["failed", "error"])
@pytest.mark.parametrize(
    ("error_type", "code"),
    [(None, "upstream"), ("rate_limit_exceeded", "rate_limited")],
    ids=["server_error", "rate_limit"],
)
async def test_a_failed_response_is_a_mid_stream_error(
    fake: FakeUpstream, make_provider: MakeProvider, kind: Any, error_type: str | None, code: str
) -> None:
    fake.script = Script(
        tokens=TOKENS,
        error_after=2,
        error_type=error_type,
        error_message=f"Something broke for {KEY} on '{PROMPT}'",
        response_error=kind,
    )
    stream = make_provider().create_stream(PROMPT, config())
    chunks = [await anext(stream) for _ in range(HEAD + 2)]
    error = await failure(stream)

    assert text(chunks) == "Once upon"
    assert error.code == code
    assert (
        error.message == "OpenAI reported an error mid-stream: Something broke for [redacted] on '[redacted]'"
    )
    assert (await fake.wait_for_response()).status == "failed"


async def test_sdk_timeout_is_timeout(fake: FakeUpstream, make_provider: MakeProvider) -> None:
    fake.script = Script(tokens=TOKENS, hang="before_first_token")
    error = await failure(make_provider(request_timeout=0.3).create_stream(PROMPT, config()))

    assert error.code == "timeout"
    assert error.message == "OpenAI timed out: nothing received for 0.3 seconds"


@pytest.mark.parametrize(
    "broken",
    ['{"type": "response.created", "sequence_', '{"type": "response.output_text.delta", "delta": "Hi"}'],
    ids=["bad-json", "no-sequence-number"],
)
async def test_a_malformed_event_is_upstream(broken: str) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(f"event: response.created\ndata: {broken}\n\n".encode())
        return response

    app = web.Application()
    app.router.add_post("/v1/responses", answer)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    settings = ProviderSettings(
        openai_api_key=KEY,
        openai_base_url=str(server.make_url("/v1")),
        openai_background=True,
        max_retries=0,
    )
    provider = OpenAIStreamingProvider(settings)
    try:
        error = await failure(provider.create_stream(PROMPT, config()))
    finally:
        await provider.aclose()
        await server.close()

    assert error.code == "upstream"
    assert error.message == "OpenAI sent a response that could not be read"


async def test_unreachable_server_is_upstream() -> None:
    async with FakeUpstream() as gone:
        base_url = gone.openai_base_url
    provider = OpenAIStreamingProvider(
        ProviderSettings(openai_base_url=base_url, openai_background=True, max_retries=0)
    )
    try:
        error = await failure(provider.create_stream(PROMPT, config()))
        resume_error = await failure(
            provider.resume_stream(config(), {"responseId": "resp_1", "after": 3}, 0)
        )
    finally:
        await provider.aclose()

    assert error.code == resume_error.code == "upstream"
    assert (
        error.message
        == resume_error.message
        == f"Could not connect to OpenAI at {base_url.removesuffix('/v1')}"
    )


# -- background mode off ------------------------------------------------------------------------


async def test_without_background_mode_the_chat_path_is_used_and_nothing_resumes(
    fake: FakeUpstream, make_provider: MakeProvider
) -> None:
    provider = make_provider(openai_background=False)
    assert provider.resumable(config()) is False
    assert is_resumable(provider, config()) is False
    assert provider.start_checkpoint(PROMPT, config()) is None

    chunks = await collect(provider.create_stream(PROMPT, config()))

    assert text(chunks) == FULL
    assert all(c.checkpoint is None for c in chunks)
    assert chunks[-1].usage == Usage(prompt_tokens=11, completion_tokens=len(TOKENS))
    assert [r.path for r in fake.requests] == ["/v1/chat/completions"]
    assert not fake.responses


async def test_background_mode_is_resumable_once_the_response_is_named(make_provider: MakeProvider) -> None:
    provider: ResumableProvider = make_provider()  # mypy checks the protocol

    assert provider.resumable(config()) is True
    assert is_resumable(provider, config()) is True
    assert provider.start_checkpoint(PROMPT, config()) is None
