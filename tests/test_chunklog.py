"""The compact chunk log and the budget of all logs (``MAX_LOG_BYTES``)."""

from __future__ import annotations

import sys
import time
from typing import Any

import aiohttp
import pytest

from server.core.chunklog import PER_CHUNK_BYTES, ChunkLog, LogBudget
from tests.helpers import (
    WAIT,
    LiveServer,
    ServerFactory,
    create_session,
    get_session,
    start_stream,
    wait_until,
)


def chunk(seq: int, content: str, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "content": content,
        "timestamp": 1_700_000_000_000 + seq,
        "metadata": {} if metadata is None else metadata,
        "seq": seq,
        "sessionId": "s-1",
    }


def test_payloads_are_built_as_they_were_logged() -> None:
    shared = {"provider": "demo", "model": "m"}
    sent = [
        chunk(0, "Hello", shared),
        chunk(1, ", wörld ", shared),
        chunk(2, "🙂", {"provider": "demo", "model": "m2"}),
        chunk(3, "", {"provider": "demo", "model": "m2"}),
        chunk(4, "end", shared),
    ]
    log = ChunkLog("s-1")
    for payload in sent:
        log.append(payload)
    assert len(log) == 5
    assert list(log) == sent
    assert log[2] == sent[2] and log[-1] == sent[4]
    assert log[1:4] == sent[1:4]
    assert log[3:] == sent[3:] and log[9:] == []
    assert list(log.iter_from(2, 4)) == sent[2:4]
    assert log.text == "Hello, wörld 🙂end"
    assert log.chars == len(log.text)
    with pytest.raises(IndexError):
        log[5]


def test_a_run_of_equal_metadata_is_kept_once() -> None:
    log = ChunkLog("s-1")
    for seq in range(1000):
        # Equal dicts, not the same object: the relay decodes each chunk's metadata anew.
        log.append(chunk(seq, "token ", {"provider": "openai", "model": "gpt"}))
    assert len(log._metas) == 1
    assert log[999]["metadata"] == {"provider": "openai", "model": "gpt"}


def test_a_running_token_count_costs_no_dict_per_chunk() -> None:
    """The demo provider counts ``tokens`` in every chunk's metadata: kept in an array."""
    log = ChunkLog("s-1")
    sent = [
        chunk(seq, "word ", {"provider": "demo", "model": "demo", "tokens": seq + 1}) for seq in range(100)
    ]
    odd = chunk(100, "end", {"provider": "demo", "model": "demo", "tokens": "many"})
    for payload in [*sent, odd]:
        log.append(payload)
    assert len(log._metas) == 2
    assert list(log) == [*sent, odd]


def test_chunks_across_text_blocks() -> None:
    """The text is kept in blocks: chunks that straddle them (multi-byte characters cut
    between two) read back whole."""
    log = ChunkLog("s-1")
    sent = [chunk(seq, ("é" * (seq % 7) + "🙂 ") * (seq % 900 + 1)) for seq in range(300)]
    for payload in sent:
        log.append(payload)
    assert len(log._blocks) > 10
    assert list(log) == sent
    assert log.text == "".join(c["content"] for c in sent)
    assert log.nbytes == len(log.text.encode()) + PER_CHUNK_BYTES * 300


def test_a_sealed_log_reads_the_same_and_may_still_grow() -> None:
    log = ChunkLog("s-1")
    sent = [chunk(seq, f"part {seq} ") for seq in range(10)]
    for payload in sent[:6]:
        log.append(payload)
    log.seal()
    log.seal()
    assert list(log) == sent[:6]
    for payload in sent[6:]:
        log.append(payload)
    assert list(log) == sent


def test_a_log_costs_about_its_text() -> None:
    """What a kept session costs is its text plus 12 bytes a chunk, not a dict a chunk."""
    log = ChunkLog("s-1")
    words = "Streaming text into an editor, one chunk at a time. "
    for seq in range(5000):
        log.append(chunk(seq, words, {"provider": "demo"}))
    text_bytes = len(words) * 5000
    log.seal()
    parts = (
        *log._blocks,
        log._blocks,
        log._tail,
        log._ends,
        log._stamps,
        log._tokens,
        log._meta_starts,
        log._metas,
    )
    held = sum(sys.getsizeof(part) for part in parts)
    assert held <= 1.5 * text_bytes, (held, text_bytes)
    assert log.nbytes == text_bytes + PER_CHUNK_BYTES * 5000


def test_the_budget_follows_every_log() -> None:
    budget = LogBudget(limit=200)
    first, second = ChunkLog("a", budget), ChunkLog("b", budget)
    first.append(chunk(0, "x" * 100))
    second.append(chunk(0, "y" * 50))
    assert budget.used == 150 + 2 * PER_CHUNK_BYTES and not budget.full
    second.append(chunk(1, "y" * 50))
    assert budget.full
    first.release()
    first.release()  # once only
    assert budget.used == 100 + 2 * PER_CHUNK_BYTES and not budget.full
    # A log taken over by a session of the same process is not counted twice.
    taken = ChunkLog("c", budget)
    second.adopt(budget)
    assert budget.used == second.nbytes
    taken.release()


async def test_new_sessions_get_503_while_the_logs_are_full(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server: LiveServer = await start_server(max_log_bytes=4096)
    manager = server.manager
    first = await create_session(http, server, maxTokens=2000)
    await start_stream(http, server, first)
    await wait_until(lambda: manager.log_budget.full)
    async with http.post(f"{server.url}/api/streaming/session", json={"userId": "u-2"}) as resp:
        assert resp.status == 503
        assert "MAX_LOG_BYTES" in (await resp.json())["error"]
    async with http.get(f"{server.url}/readyz") as resp:
        assert resp.status == 503
        assert "MAX_LOG_BYTES" in (await resp.json())["error"]
    # The session that filled it finishes all the same, and its text is whole.
    session = manager.get_session(first)
    assert session is not None
    await wait_until(lambda: not session.is_live, WAIT)
    body = await get_session(http, server, first)
    assert body["state"] == "completed" and body["chunks"] == len(session.chunks)
    # Once it expires, its bytes are free again.
    await manager.sweep(time.monotonic() + manager.settings.session_ttl + 1)
    assert manager.log_budget.used == 0
    second = await create_session(http, server, "u-2")
    assert second
    if manager.cluster is not None:
        await manager.cluster.listening.wait()
    async with http.get(f"{server.url}/readyz") as resp:
        assert resp.status == 200
