"""The Anthropic provider against a fake Anthropic API on 127.0.0.1, through the real SDK."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from providers.anthropic import AnthropicStreamingProvider
from providers.base import ProviderSettings, StreamConfig, Usage
from tests.fake_upstream import FakeUpstream, Script, collect, failure, providers_of

KEY = "sk-ant-test-0123456789abcdef"
PROMPT = "Write a haiku about streaming text"
SEED_MODEL = "claude-3-sonnet-20240229"

MakeProvider = Callable[..., AnthropicStreamingProvider]


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream(api_key=KEY) as upstream:
        yield upstream


@pytest.fixture
async def make_provider(fake: FakeUpstream) -> AsyncIterator[MakeProvider]:
    """Providers aimed at the fake: no SDK retries and a short timeout unless asked."""
    async with providers_of(
        AnthropicStreamingProvider, anthropic_api_key=KEY, anthropic_base_url=fake.anthropic_base_url
    ) as make:
        yield make


def config(**overrides: Any) -> StreamConfig:
    values: dict[str, Any] = {"provider": "anthropic", "model": SEED_MODEL}
    values.update(overrides)
    return StreamConfig(**values)


# -- happy path -------------------------------------------------------------------


async def test_streams_each_text_delta_then_usage_and_stop_reason(
    fake: FakeUpstream, make_provider: MakeProvider
) -> None:
    chunks = await collect(make_provider().create_stream(PROMPT, config()))

    *content, last = chunks
    assert [c.content for c in content] == ["Hello", ",", " world", "!"]
    assert all(c.metadata == {"provider": "anthropic", "model": SEED_MODEL} for c in content)
    assert all(c.usage is None and c.finish_reason is None for c in content)
    assert last.content == ""
    assert last.usage == Usage(prompt_tokens=11, completion_tokens=4)
    assert last.finish_reason == "stop"
    assert last.metadata == {"provider": "anthropic", "model": SEED_MODEL, "tokens": 15}
    await fake.requests[0].wait_finished()
    assert not fake.requests[0].disconnected.is_set()


async def test_request_carries_model_system_prompt_and_max_tokens_but_no_temperature(
    fake: FakeUpstream, make_provider: MakeProvider
) -> None:
    settings = config(system_prompt="Answer in Markdown.", temperature=0.3, max_tokens=50)
    await collect(make_provider().create_stream(PROMPT, settings))

    request = fake.requests[0]
    assert request.path == "/v1/messages"
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert "anthropic-version" in request.headers
    assert request.body["model"] == SEED_MODEL
    assert request.body["system"] == "Answer in Markdown."
    assert request.body["messages"] == [{"role": "user", "content": PROMPT}]
    assert request.body["max_tokens"] == 50
    assert request.body["stream"] is True
    # The API version SDK 2.x sends answers 400 to any sampling parameter.
    assert "temperature" not in request.body


async def test_max_tokens_defaults_to_the_setting(fake: FakeUpstream, make_provider: MakeProvider) -> None:
    await collect(make_provider(anthropic_max_tokens=1234).create_stream(PROMPT, config()))

    body = fake.requests[0].body
    assert body["max_tokens"] == 1234
    assert "system" not in body


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [("max_tokens", "length"), ("stop_sequence", "stop"), ("pause_turn", "pause_turn")],
)
async def test_stop_reason_becomes_finish_reason(
    fake: FakeUpstream, make_provider: MakeProvider, stop_reason: str, finish_reason: str
) -> None:
    fake.script = Script(finish_reason=stop_reason, model="claude-sonnet-4-6")
    chunks = await collect(make_provider().create_stream(PROMPT, config()))

    assert chunks[-1].finish_reason == finish_reason
    assert {c.metadata["model"] for c in chunks} == {"claude-sonnet-4-6"}


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
    wrong = "sk-ant-wrong-9876543210fedcba"
    error = await failure(make_provider(anthropic_api_key=wrong).create_stream(PROMPT, config()))

    assert error.code == "auth"
    assert error.message == "Anthropic rejected the API key (HTTP 401): invalid x-api-key"


@pytest.mark.parametrize(
    ("script", "code", "message"),
    [
        (
            Script(status=404),
            "bad_request",
            f"The model '{SEED_MODEL}' was rejected by Anthropic: model: {SEED_MODEL}",
        ),
        (Script(status=400), "bad_request", "Anthropic rejected the request (HTTP 400): Invalid request."),
        (
            Script(status=403),
            "auth",
            "Anthropic refused access (HTTP 403): Your API key does not have permission",
        ),
        (Script(status=500), "upstream", "Anthropic failed (HTTP 500): Internal server error"),
        (Script(status=529), "upstream", "Anthropic failed (HTTP 529): Overloaded"),
        (
            Script(status=429),
            "rate_limited",
            "Anthropic is rate limiting requests (HTTP 429): Number of request tokens",
        ),
    ],
    ids=["404-model", "400", "403", "500", "529", "429"],
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


async def test_upstream_messages_are_redacted(fake: FakeUpstream, make_provider: MakeProvider) -> None:
    fake.script = Script(status=400, error_message=f"Key {KEY} may not ask '{PROMPT}'")
    error = await failure(make_provider().create_stream(PROMPT, config()))

    assert KEY not in error.message
    assert PROMPT not in error.message
    assert (
        error.message == "Anthropic rejected the request (HTTP 400): Key [redacted] may not ask '[redacted]'"
    )


async def test_connection_dropped_mid_stream_is_upstream(
    fake: FakeUpstream, make_provider: MakeProvider
) -> None:
    fake.script = Script(drop_after=2)
    stream = make_provider().create_stream(PROMPT, config())

    assert [(await anext(stream)).content for _ in range(2)] == ["Hello", ","]
    error = await failure(stream)
    assert error.code == "upstream"
    assert error.message == "The connection to Anthropic was lost mid-stream"


@pytest.mark.parametrize(
    ("error_type", "code"),
    [("overloaded_error", "upstream"), ("api_error", "upstream"), ("rate_limit_error", "rate_limited")],
)
async def test_error_event_inside_the_stream_maps_by_type(
    fake: FakeUpstream, make_provider: MakeProvider, error_type: str, code: str
) -> None:
    fake.script = Script(error_after=1, error_type=error_type, error_message="Overloaded")
    stream = make_provider().create_stream(PROMPT, config())

    assert (await anext(stream)).content == "Hello"
    error = await failure(stream)
    assert error.code == code
    assert error.message == "Anthropic reported an error mid-stream: Overloaded"


@pytest.mark.parametrize("hang", ["before_headers", "before_first_token"])
async def test_sdk_timeout_is_timeout(fake: FakeUpstream, make_provider: MakeProvider, hang: Any) -> None:
    fake.script = Script(hang=hang)
    error = await failure(make_provider(request_timeout=0.3).create_stream(PROMPT, config()))

    assert error.code == "timeout"
    assert error.message == "Anthropic timed out: nothing received for 0.3 seconds"


async def test_unreachable_server_is_upstream() -> None:
    async with FakeUpstream() as gone:
        base_url = gone.anthropic_base_url
    provider = AnthropicStreamingProvider(
        ProviderSettings(anthropic_api_key=KEY, anthropic_base_url=base_url, max_retries=0)
    )
    try:
        error = await failure(provider.create_stream(PROMPT, config()))
    finally:
        await provider.aclose()

    assert error.code == "upstream"
    assert error.message == f"Could not connect to Anthropic at {base_url}"


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
