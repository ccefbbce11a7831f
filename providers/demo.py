"""The offline demo provider: deterministic Markdown derived from the prompt.

It is not a language model. It exists so that the product runs, demos and is tested
with no API key and no network; every chunk's metadata says ``demo: True``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import random
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

from providers.base import AIChunk, StreamConfig, Task, Usage, sleep_until
from providers.demo_actions import answer

DEFAULT_TOKENS_PER_SECOND = 40.0

_TOKEN = re.compile(r"\s*\S+")
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'-]*")

_OPENINGS = [
    "Here is a short overview of {topic}, written by the offline demo provider.",
    "This answer about {topic} comes from the offline demo provider, not a language model.",
    "The offline demo provider put together these notes on {topic}.",
]
_SENTENCES = [
    "Start with the **core idea** of {topic} and keep every step small enough to check.",
    "A good first draft of {topic} names the goal, the audience and the _one_ thing that matters most.",
    "When {topic} grows, split it into parts that can change without touching each other.",
    "Measure before you optimise: a number beats a hunch about {topic} every time.",
    "Write down the assumptions behind {topic}, because they are the first thing to break.",
    "Examples make {topic} concrete; a `worked example` is worth a page of theory.",
    "Feedback loops matter: the faster you see the result, the better {topic} gets.",
    "Keep the vocabulary of {topic} consistent so readers never wonder whether two words mean one thing.",
    "Edge cases in {topic} deserve a test of their own, not a comment.",
    "Read the [Tiptap documentation](https://tiptap.dev) for how rich text is structured.",
    "Small, reversible steps make {topic} safe to change on a busy day.",
    "Explain _why_ a choice about {topic} was made, not only _what_ it is.",
]
_POINTS = [
    "**Clarity**: say what {topic} is for in one sentence.",
    "**Scope**: decide what {topic} will _not_ do.",
    "**Evidence**: collect a few facts before deciding.",
    "**Structure**: headings, lists and short paragraphs.",
    "**Tools**: prefer the well-kept ones, like `pytest` and `ruff`.",
    "**Review**: ask someone else to read it once.",
    "**Iteration**: ship a small version, then improve it.",
]
_SECTIONS = ["Background", "How it works", "In practice", "Common pitfalls", "Next steps"]


_FILLER = {"a", "about", "an", "describe", "explain", "give", "me", "please", "some", "tell", "the", "write"}


def _topic(prompt: str) -> str:
    words = _WORD.findall(prompt)
    while words and words[0].lower() in _FILLER:
        words.pop(0)
    return " ".join(words[:8]).lower() if words else "your request"


def _sections(prompt: str) -> Iterator[str]:
    """Yield Markdown blocks forever: a natural answer first, then more sections."""
    rng = random.Random(hashlib.sha256(prompt.encode()).digest())
    topic = _topic(prompt)
    title = topic[:1].upper() + topic[1:]

    def paragraph(n: int) -> str:
        return " ".join(s.format(topic=topic) for s in rng.sample(_SENTENCES, n))

    def bullets(n: int) -> str:
        return "\n".join("- " + p.format(topic=topic) for p in rng.sample(_POINTS, n))

    # Blocks start with their separator so that no token ends in white space.
    yield f"# {title}"
    yield "\n\n" + rng.choice(_OPENINGS).format(topic=topic) + " " + paragraph(2)
    yield "\n\n## Key points\n\n" + bullets(4)
    yield f"\n\n## {rng.choice(_SECTIONS)}\n\n" + paragraph(3)
    yield "\n\n## Summary\n\n" + paragraph(2)
    yield _END
    part = 1
    while True:
        part += 1
        yield f"\n\n## {rng.choice(_SECTIONS)} ({part})\n\n" + paragraph(3) + "\n\n" + bullets(3)


_END = "\x00end"


def demo_tokens(prompt: str, max_tokens: int | None, task: Task | None = None) -> Iterator[str]:
    """The demo answer as tokens: the natural answer, or exactly ``max_tokens`` tokens; for
    an editor action (``task``), that action done to the selection or the text before the
    cursor (:mod:`providers.demo_actions`), at most ``max_tokens`` tokens of it."""
    done = answer(task) if task is not None else None
    if done is not None:
        tokens = _TOKEN.findall(done)
        yield from tokens if max_tokens is None else tokens[:max_tokens]
        return
    count = 0
    for block in _sections(prompt):
        if block == _END:
            if max_tokens is None:
                return
            continue
        for token in _TOKEN.findall(block):
            if max_tokens is not None and count >= max_tokens:
                return
            count += 1
            yield token


class DemoProvider:
    """Streams :func:`demo_tokens` paced at ``tokensPerSecond`` (0 = as fast as possible)."""

    name = "demo"
    default_model = "demo"
    #: A paced pull returns every token already due, so the session may pull less often
    #: (:meth:`batches_for` says for which streams).
    batches_backlog = True

    def __init__(self, tokens_per_second: float = DEFAULT_TOKENS_PER_SECOND) -> None:
        self._tokens_per_second = tokens_per_second

    def batches_for(self, config: StreamConfig) -> bool:
        """Paced streams hand over every due token in one pull; an unpaced one (0 tokens/s)
        yields one token per pull, and pulling it less often would only shrink its chunks."""
        tps = config.tokens_per_second if config.tokens_per_second is not None else self._tokens_per_second
        return tps > 0

    def resumable(self, config: StreamConfig) -> bool:
        """Always: the answer is a function of the prompt, so a successor regenerates it."""
        return True

    def start_checkpoint(self, prompt: str, config: StreamConfig) -> dict[str, Any]:
        checkpoint: dict[str, Any] = {"prompt": prompt}
        if config.task is not None:
            # What ``dataclasses.asdict`` gives (the fields hold no mutable value) at a
            # twentieth of its cost: once per start.
            checkpoint["task"] = {name: getattr(config.task, name) for name in _TASK_FIELDS}
        return checkpoint

    def create_stream(self, prompt: str, config: StreamConfig) -> AsyncIterator[AIChunk]:
        return self._stream(prompt, config, 0)

    def resume_stream(
        self, config: StreamConfig, checkpoint: dict[str, Any], skip: int
    ) -> AsyncIterator[AIChunk]:
        task = checkpoint.get("task")
        if isinstance(task, dict):
            options = tuple((str(k), str(v)) for k, v in task.get("options", ()))
            config = dataclasses.replace(config, task=Task(**{**task, "options": options}))
        return self._stream(str(checkpoint["prompt"]), config, skip)

    async def cancel(self, checkpoint: dict[str, Any]) -> None:
        """Nothing runs upstream."""

    async def _stream(self, prompt: str, config: StreamConfig, skip: int) -> AsyncIterator[AIChunk]:
        """The answer without its first ``skip`` characters (a resumed stream), the rest paced
        from now on; token counts and usage are those of the whole answer."""
        tps = config.tokens_per_second
        if tps is None:
            tps = self._tokens_per_second
        tokens = demo_tokens(prompt, config.max_tokens, config.task)
        count = 0
        head: list[str] = []
        while skip > 0:
            token = next(tokens, None)
            if token is None:
                break
            count += 1
            if len(token) > skip:
                head.append(token[skip:])
            skip -= len(token)
        if head:
            yield AIChunk(head[0], {**_METADATA, "tokens": count})
        if tps > 0:
            # ``tokens`` at ``tps``, token ``i`` due ``i / tps`` seconds after now. Tokens that
            # are already due when the loop gets round to them (it ran late) come together in
            # one item, as when an SDK finds several events in one network read. (Written out
            # here rather than in a generator of its own: one generator fewer per item.)
            loop = asyncio.get_running_loop()
            started = now = loop.time()
            batch: list[str] = []
            for index, token in enumerate(tokens):
                due = started + index / tps
                if due > now:
                    if batch:
                        count += len(batch)
                        yield AIChunk("".join(batch), {**_METADATA, "tokens": count})
                        batch = []
                        now = loop.time()
                    if due > now:
                        await sleep_until(loop, due)
                        now = loop.time()
                batch.append(token)
            if batch:
                count += len(batch)
                yield AIChunk("".join(batch), {**_METADATA, "tokens": count})
        else:
            for token in tokens:
                await asyncio.sleep(0)
                count += 1
                yield AIChunk(token, {**_METADATA, "tokens": count})
        finish = "length" if config.max_tokens is not None and count >= config.max_tokens else "stop"
        usage = Usage(prompt_tokens=len(_TOKEN.findall(prompt)), completion_tokens=count)
        yield AIChunk("", dict(_METADATA), usage, finish)


_METADATA = {"provider": "demo", "model": "demo", "demo": True}
_TASK_FIELDS = tuple(field.name for field in dataclasses.fields(Task))
