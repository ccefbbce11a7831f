"""The offline demo provider: deterministic Markdown, maxTokens, pacing, honest metadata."""

from __future__ import annotations

from providers.base import StreamConfig
from providers.demo import DemoProvider, demo_tokens


async def collect(prompt: str, **config: object):
    provider = DemoProvider(tokens_per_second=0)
    return [
        c async for c in provider.create_stream(prompt, StreamConfig(provider="demo", model="demo", **config))
    ]


def test_answer_is_deterministic_markdown_from_the_prompt():
    text = "".join(demo_tokens("Explain photosynthesis to a child", None))
    assert text == "".join(demo_tokens("Explain photosynthesis to a child", None))
    assert text.startswith("# Photosynthesis to a child\n\n")
    assert "\n## Key points\n\n- **" in text
    assert "\n## Summary\n\n" in text
    assert text != "".join(demo_tokens("Explain volcanoes", None))


async def test_max_tokens_is_exact_and_usage_is_reported():
    items = await collect("Tell me about tides", max_tokens=1234, tokens_per_second=0)
    content = [c for c in items if c.content]
    assert len(content) == 1234
    last = items[-1]
    assert last.content == "" and last.finish_reason == "length"
    assert last.usage is not None and last.usage.completion_tokens == 1234


async def test_natural_end_and_metadata_say_demo():
    items = await collect("Tell me about tides")
    assert items[-1].finish_reason == "stop"
    assert all(c.metadata["provider"] == "demo" and c.metadata["demo"] is True for c in items)
    assert items[0].metadata["tokens"] == 1


async def test_pacing_follows_tokens_per_second():
    import time

    start = time.monotonic()
    await collect("pace", max_tokens=20, tokens_per_second=200)
    # uvloop's timers have millisecond resolution: allow a little slack per token.
    assert time.monotonic() - start >= 19 / 200 - 0.01


async def test_a_resumed_stream_gives_exactly_the_text_after_the_skipped_part():
    provider = DemoProvider(tokens_per_second=0)
    config = StreamConfig(provider="demo", model="demo", max_tokens=300)
    prompt = "Tell me about tides"
    whole = "".join(demo_tokens(prompt, 300))
    assert provider.resumable(config)
    checkpoint = provider.start_checkpoint(prompt, config)
    for skip in (0, 1, 7, len(whole) // 2, len(whole) - 1, len(whole)):
        items = [c async for c in provider.resume_stream(config, checkpoint, skip)]
        assert whole[:skip] + "".join(c.content for c in items) == whole, skip
        last = items[-1]
        assert last.finish_reason == "length"
        assert last.usage is not None and last.usage.completion_tokens == 300
