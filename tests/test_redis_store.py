"""The batched append (one script call per flush, every session's entries in it) against a
real redis-server: order, fencing per session, a refused duplicate that refuses only its
own entry, meta fields written once, and a Redis that lost its scripts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.exceptions import ResponseError

from server.cluster import redis_journal
from server.cluster.redis_store import Append, Fenced, RedisStore, chunk_id, log_key, meta_key
from tests.redis_server import RedisServer

TTL = 60_000


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    redis_server.flush()
    store = RedisStore(redis_server.url, timeout=3.0)
    yield store
    await store.close()


def chunk(session: str, seq: int, text: str, fence: str = "1", after: str = "") -> Append:
    return Append(session, fence, chunk_id(seq), ("c", text), ("lastSeq", str(seq)), after)


async def test_one_call_writes_every_session_in_order(store):
    for session in ("a", "b"):
        await store.put_session(session, {"userId": "u"}, "p1", TTL)
    batch = [
        chunk("a", 0, "x"),
        chunk("b", 0, "y"),
        chunk("a", 1, "z"),
        Append("b", "1", "", (), ("state", "paused")),
    ]
    results = await store.append(batch, TTL)
    assert results == [chunk_id(0), chunk_id(0), chunk_id(1), ""]
    entries = await store.redis.xrange(log_key("a"))
    assert [fields["c"] for _, fields in entries] == ["x", "z"]
    assert await store.redis.hget(meta_key("a"), "lastSeq") == "1"
    assert await store.redis.hget(meta_key("b"), "state") == "paused"
    assert 0 < await store.redis.pttl(log_key("a")) <= TTL


async def test_a_fenced_session_is_refused_alone(store):
    for session in ("a", "b"):
        await store.put_session(session, {"userId": "u"}, "p1", TTL)
    results = await store.append([chunk("a", 0, "x", fence="7"), chunk("b", 0, "y")], TTL)
    assert isinstance(results[0], Fenced) and results[1] == chunk_id(0)
    assert await store.redis.xlen(log_key("a")) == 0
    assert await store.redis.hget(meta_key("a"), "lastSeq") is None


async def test_a_duplicate_refuses_only_its_entry(store):
    await store.put_session("a", {"userId": "u"}, "p1", TTL)
    await store.append([chunk("a", 0, "x")], TTL)
    results = await store.append([chunk("a", 0, "again"), chunk("a", 1, "y")], TTL)
    assert isinstance(results[0], ResponseError) and "DUPLICATE" in str(results[0])
    assert results[1] == chunk_id(1)
    assert [f["c"] for _, f in await store.redis.xrange(log_key("a"))] == ["x", "y"]


async def test_scripts_lost_by_redis_are_loaded_again(store):
    await store.put_session("a", {"userId": "u"}, "p1", TTL)
    await store.append([chunk("a", 0, "x")], TTL)
    await store.redis.script_flush()
    assert await store.append([chunk("a", 1, "y")], TTL) == [chunk_id(1)]


async def test_a_session_whose_keys_are_broken_is_refused_alone(store):
    for session in ("a", "b"):
        await store.put_session(session, {"userId": "u"}, "p1", TTL)
    await store.redis.set(log_key("a"), "not a stream")
    results = await store.append([chunk("a", 0, "x"), chunk("b", 0, "y"), chunk("a", 1, "z")], TTL)
    assert isinstance(results[0], ResponseError) and isinstance(results[2], ResponseError)
    assert results[1] == chunk_id(0)
    assert [f["c"] for _, f in await store.redis.xrange(log_key("b"))] == ["y"]


async def test_any_text_is_written_as_it_was(store):
    """The sessions' parts go to the script as one JSON argument: every character survives."""
    await store.put_session("a", {"userId": "u"}, "p1", TTL)
    texts = ['q"\\/\n\t', "\x00\x01\x1f", "é中\u2028\U0001f600", "", "[1, {}]", " " * 3]
    batch = [chunk("a", seq, text) for seq, text in enumerate(texts)]
    batch.append(Append("a", "1", "", (), ("state", "\x00é\n")))
    assert await store.append(batch, TTL) == [*(chunk_id(seq) for seq in range(len(texts))), ""]
    assert [f["c"] for _, f in await store.redis.xrange(log_key("a"))] == texts
    assert await store.redis.hget(meta_key("a"), "state") == "\x00é\n"
    assert await store.redis.hget(meta_key("a"), "lastSeq") == str(len(texts) - 1)


async def test_ended_sessions_are_released_in_one_call(store):
    for session in ("a", "b", "c"):
        await store.put_session(session, {"userId": "u"}, "p1", TTL)
        await store.reserve("u", session, 10, TTL)
    await store.release_all([("u", "a"), ("u", "c")], "p1")
    assert await store.redis.smembers("user:{u}:live") == {"b"}
    assert await store.redis.smembers("proc:{p1}:sessions") == {"b"}


class _Session:
    """What the journal uses of a session: it records what it was given to deliver."""

    def __init__(self, session_id: str) -> None:
        self.id = session_id
        self.journal: object = None
        self.conversation = None
        self.head_seq = -1
        self.delivered: list[tuple[str, object]] = []

    def take_resume(self) -> None:
        return None

    def deliver(self, event: str, payload: dict[str, object]) -> None:
        self.delivered.append((event, payload.get("seq", payload.get("state"))))

    def wake(self) -> None:
        return None


async def owned_journal(store: RedisStore) -> tuple[redis_journal.RedisJournal, list[_Session], list[str]]:
    """A journal owning five sessions (``a`` to ``e``) in ``store``, and the ids of the
    sessions it ended (released), as it ends them."""
    ended: list[str] = []

    async def finished(sessions):
        ended.extend(session.id for session in sessions)

    journal = redis_journal.RedisJournal(store, TTL, lambda session: None, finished)
    sessions = [_Session(name) for name in "abcde"]
    for session in sessions:
        await store.put_session(session.id, {"userId": "u"}, "p1", TTL)
        journal.own(session, "1")
    return journal, sessions, ended


def journal_chunk(journal: redis_journal.RedisJournal, session: _Session, seq: int) -> None:
    session.head_seq = seq
    payload = {"content": f"{session.id}{seq}", "timestamp": 1, "metadata": {}, "seq": seq}
    assert journal.chunk(session, payload)


async def assert_logged_and_delivered(store: RedisStore, sessions: list[_Session], chunks: int) -> None:
    """Each session's ``chunks`` chunks and ``complete`` are in its log once, in order, and
    were delivered in that order."""
    for session in sessions:
        assert session.delivered == [*(("chunk", seq) for seq in range(chunks)), ("complete", None)]
        entries = await store.redis.xrange(log_key(session.id))
        assert [entry_id for entry_id, _ in entries] == [
            *(chunk_id(seq) for seq in range(chunks)),
            f"{chunks}-1",
        ]
        assert [f.get("c") for _, f in entries][:chunks] == [f"{session.id}{seq}" for seq in range(chunks)]


async def test_batches_in_flight_keep_each_session_in_order(store, monkeypatch):
    """Several batches in flight at once, answered out of order: each session's entries are
    written and delivered in order, an entry only once its batch is answered, none twice."""
    monkeypatch.setattr(redis_journal, "IN_FLIGHT", 3)
    monkeypatch.setattr(redis_journal, "BATCH", 2)
    answered: list[int] = []
    append = store.append
    calls = 0

    async def slow_append(batch, ttl_ms):
        nonlocal calls
        calls += 1
        call = calls
        results = await append(batch, ttl_ms)
        await asyncio.sleep(0.01 * (4 - call % 4))  # later batches answer first
        answered.append(call)
        return results

    monkeypatch.setattr(store, "append", slow_append)
    # Through the client only (tests/test_redis_append_wire.py: the append's own connection).
    monkeypatch.setattr(store, "send_append", lambda batch, ttl_ms, answered: False)
    journal, sessions, ended = await owned_journal(store)
    writer = asyncio.create_task(journal.run())
    try:
        for seq in range(4):
            for session in sessions:
                journal_chunk(journal, session, seq)
            await asyncio.sleep(0)
        for session in sessions:
            assert journal.event(session, "complete", {"finishReason": "stop", "usage": None})
        async with asyncio.timeout(10):
            await journal.flushed()
    finally:
        writer.cancel()
    assert answered != sorted(answered), "the batches were answered out of order"
    await assert_logged_and_delivered(store, sessions, 4)
    assert sorted(ended) == list("abcde")


async def test_an_entry_may_leave_the_ttl_alone(store):
    """A writer renews a streaming session's TTL now and then, not with every chunk."""
    await store.put_session("a", {"userId": "u"}, "p1", TTL)
    await store.append([chunk("a", 0, "x")], TTL)
    await store.redis.pexpire(log_key("a"), 5_000)
    quiet = Append("a", "1", chunk_id(1), ("c", "y"), ("lastSeq", "1"), chunk_id(0), renew=False)
    assert await store.append([quiet], TTL) == [chunk_id(1)]
    assert 0 < await store.redis.pttl(log_key("a")) <= 5_000
    assert await store.append([chunk("a", 2, "z")], TTL) == [chunk_id(2)]
    assert 5_000 < await store.redis.pttl(log_key("a")) <= TTL
