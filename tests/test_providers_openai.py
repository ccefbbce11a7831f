"""The OpenAI provider against a fake OpenAI API on 127.0.0.1, through the real SDK."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from providers.base import ProviderSettings, StreamConfig, Usage
from providers.openai import NO_KEY, OpenAIStreamingProvider
from tests.fake_upstream import FakeUpstream, Script, collect, failure, providers_of

KEY = "sk-test-openai-0123456789abcdef"
PROMPT = "Write a haiku about streaming text"

MakeProvider = Callable[..., OpenAIStreamingProvider]


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream(api_key=KEY) as upstream:
        yield upstream


@pytest.fixture
async def make_provider(fake: FakeUpstream) -> AsyncIterator[MakeProvider]:
    """Providers aimed at the fake: no SDK retries and a short timeout unless asked."""
    async with providers_of(
        OpenAIStreamingProvider, openai_api_key=KEY, openai_base_url=fake.openai_base_url
    ) as make:
        yield make


def config(**overrides: Any) -> StreamConfig:
    values: dict[str, Any] = {"provider": "openai", "model": "gpt-4"}
    values.update(overrides)
    return StreamConfig(**values)


# -- happy path -------------------------------------------------------------------


async def test_streams_each_delta_then_usage_and_finish_reason(
    fake: FakeUpstream, make_provider: MakeProvider
) -> None:
    chunks = await collect(make_provider().create_stream(PROMPT, config()))

    *content, last = chunks
    assert [c.content for c in content] == ["Hello", ",", " world", "!"]
    assert all(c.metadata == {"provider": "openai", "model": "gpt-4"} for c in content)
    assert all(c.usage is None and c.finish_reason is None for c in content)
    assert last.content == ""
    assert last.usage == Usage(prompt_tokens=11, completion_tokens=4)
    assert last.finish_reason == "stop"
    assert last.metadata == {"provider": "openai", "model": "gpt-4", "tokens": 15}
    await fake.requests[0].wait_finished()
    assert not fake.requests[0].disconnected.is_set()


async def test_request_carries_model_system_prompt_temperature_and_max_tokens(
    fake: FakeUpstream, make_provider: MakeProvider
) -> None:
    settings = config(system_prompt="Answer in Markdown.", temperature=0.3, max_tokens=50)
    await collect(make_provider().create_stream(PROMPT, settings))

    request = fake.requests[0]
    assert request.path == "/v1/chat/completions"
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.body["model"] == "gpt-4"
    assert request.body["messages"] == [
        {"role": "system", "content": "Answer in Markdown."},
        {"role": "user", "content": PROMPT},
    ]
    assert request.body["temperature"] == 0.3
    assert request.body["max_tokens"] == 50
    assert request.body["stream"] is True
    assert request.body["stream_options"] == {"include_usage": True}


async def test_unset_options_are_left_out_of_the_request(
    fake: FakeUpstream, make_provider: MakeProvider
) -> None:
    await collect(make_provider().create_stream(PROMPT, config(model="gpt-4.1-mini")))

    body = fake.requests[0].body
    assert body["model"] == "gpt-4.1-mini"
    assert body["messages"] == [{"role": "user", "content": PROMPT}]
    assert "temperature" not in body
    assert "max_tokens" not in body


async def test_metadata_names_the_model_the_upstream_reports(
    fake: FakeUpstream, make_provider: MakeProvider
) -> None:
    fake.script = Script(model="gpt-4-0613", finish_reason="length")
    chunks = await collect(make_provider().create_stream(PROMPT, config()))

    assert {c.metadata["model"] for c in chunks} == {"gpt-4-0613"}
    assert chunks[-1].finish_reason == "length"


async def test_openai_compatible_server_without_a_key() -> None:
    async with FakeUpstream() as local:
        provider = OpenAIStreamingProvider(
            ProviderSettings(openai_base_url=local.openai_base_url, openai_model="llama3.2", max_retries=0)
        )
        try:
            chunks = await collect(provider.create_stream(PROMPT, config(model=provider.default_model)))
        finally:
            await provider.aclose()

    assert "".join(c.content for c in chunks) == "Hello, world!"
    assert chunks[-1].metadata["model"] == "llama3.2"
    assert local.requests[0].headers["Authorization"] == f"Bearer {NO_KEY}"


async def test_chunks_arrive_while_the_upstream_is_still_answering(
    fake: FakeUpstream, make_provider: MakeProvider
) -> None:
    fake.script = Script(pause_after=2)
    stream = make_provider().create_stream(PROMPT, config())

    assert [(await anext(stream)).content for _ in range(2)] == ["Hello", ","]
    request = fake.requests[0]
    await request.wait_sent(tokens=2)
    assert request.tokens_sent == 2
    assert not request.finished.is_set()

    fake.gate.set()
    rest = await collect(stream)
    assert "".join(c.content for c in rest) == " world!"
    await request.wait_finished()


# -- failures ---------------------------------------------------------------------


async def test_bad_key_is_auth_and_the_key_stays_out_of_the_message(make_provider: MakeProvider) -> None:
    wrong = "sk-wrong-key-9876543210fedcba"
    error = await failure(make_provider(openai_api_key=wrong).create_stream(PROMPT, config()))

    assert error.code == "auth"
    assert error.message.startswith("OpenAI rejected the API key (HTTP 401): Incorrect API key provided")
    assert wrong not in error.message
    assert PROMPT not in error.message


@pytest.mark.parametrize(
    ("script", "code", "message"),
    [
        (
            Script(status=404),
            "bad_request",
            "The model 'gpt-4' was rejected by OpenAI: The model `gpt-4` does",
        ),
        (Script(status=400), "bad_request", "OpenAI rejected the request (HTTP 400): Invalid request."),
        (Script(status=403), "auth", "OpenAI refused access (HTTP 403): Country not supported."),
        (Script(status=500), "upstream", "OpenAI failed (HTTP 500): The server had an error"),
        (
            Script(status=429),
            "rate_limited",
            "OpenAI is rate limiting requests (HTTP 429): Rate limit reached",
        ),
    ],
    ids=["404-model", "400", "403", "500", "429"],
)
async def test_error_statuses_map_to_codes(
    fake: FakeUpstream, make_provider: MakeProvider, script: Script, code: str, message: str
) -> None:
    fake.script = script
    error = await failure(make_provider().create_stream(PROMPT, config()))

    assert error.code == code
    assert error.message.startswith(message)


async def test_rate_limit_is_retried_by_the_sdk_then_reported(
    fake: FakeUpstream, make_provider: MakeProvider
) -> None:
    fake.script = Script(status=429)
    error = await failure(make_provider(max_retries=2).create_stream(PROMPT, config()))

    assert error.code == "rate_limited"
    assert len(fake.requests) == 3


async def test_a_rate_limit_that_clears_is_invisible(fake: FakeUpstream, make_provider: MakeProvider) -> None:
    fake.enqueue(Script(status=429))
    chunks = await collect(make_provider(max_retries=2).create_stream(PROMPT, config()))

    assert "".join(c.content for c in chunks) == "Hello, world!"
    assert len(fake.requests) == 2


async def test_upstream_messages_are_redacted(fake: FakeUpstream, make_provider: MakeProvider) -> None:
    fake.script = Script(
        status=400, error_message=f"Key {KEY} may not ask '{PROMPT}'; nor sk-proj-abcdef123456"
    )
    error = await failure(make_provider().create_stream(PROMPT, config()))

    assert KEY not in error.message
    assert PROMPT not in error.message
    assert "sk-proj" not in error.message
    assert "[redacted]" in error.message


async def test_connection_dropped_mid_stream_is_upstream(
    fake: FakeUpstream, make_provider: MakeProvider
) -> None:
    fake.script = Script(drop_after=2)
    stream = make_provider().create_stream(PROMPT, config())

    assert [(await anext(stream)).content for _ in range(2)] == ["Hello", ","]
    error = await failure(stream)
    assert error.code == "upstream"
    assert error.message == "The connection to OpenAI was lost mid-stream"


async def test_error_object_inside_the_stream_is_upstream(
    fake: FakeUpstream, make_provider: MakeProvider
) -> None:
    fake.script = Script(
        error_after=1, error_message="The server had an error while processing your request."
    )
    error = await failure(make_provider().create_stream(PROMPT, config()))

    assert error.code == "upstream"
    assert error.message.startswith("OpenAI reported an error mid-stream: The server had an error")


@pytest.mark.parametrize("hang", ["before_headers", "before_first_token"])
async def test_sdk_timeout_is_timeout(fake: FakeUpstream, make_provider: MakeProvider, hang: Any) -> None:
    fake.script = Script(hang=hang)
    error = await failure(make_provider(request_timeout=0.3).create_stream(PROMPT, config()))

    assert error.code == "timeout"
    assert error.message == "OpenAI timed out: nothing received for 0.3 seconds"


async def test_unreachable_server_is_upstream() -> None:
    async with FakeUpstream() as gone:
        base_url = gone.openai_base_url
    provider = OpenAIStreamingProvider(ProviderSettings(openai_base_url=base_url, max_retries=0))
    try:
        error = await failure(provider.create_stream(PROMPT, config()))
    finally:
        await provider.aclose()

    assert error.code == "upstream"
    assert error.message == f"Could not connect to OpenAI at {base_url.removesuffix('/v1')}"


# -- closing ----------------------------------------------------------------------


async def test_aclose_closes_the_upstream_connection(fake: FakeUpstream, make_provider: MakeProvider) -> None:
    fake.script = Script(pause_after=1)
    stream = make_provider().create_stream(PROMPT, config())
    assert (await anext(stream)).content == "Hello"

    await stream.aclose()

    request = fake.requests[0]
    await request.wait_disconnected()
    assert request.tokens_sent == 1
    assert not request.finished.is_set()


async def test_cancelling_before_the_first_token_closes_the_upstream_connection(
    fake: FakeUpstream, make_provider: MakeProvider
) -> None:
    fake.script = Script(hang="before_first_token")
    stream = make_provider().create_stream(PROMPT, config())
    first = asyncio.create_task(anext(stream))
    request = await fake.wait_for_request()

    first.cancel()

    await request.wait_disconnected()
    with pytest.raises(asyncio.CancelledError):
        await first
