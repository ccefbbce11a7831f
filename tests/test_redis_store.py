"""The batched append (one script call per flush, every session's entries in it) against a
real redis-server: order, fencing per session, a refused duplicate that refuses only its
own entry, meta fields written once, and a Redis that lost its scripts."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.exceptions import ResponseError

from server.cluster.redis_store import Append, Fenced, RedisStore, chunk_id, log_key, meta_key
from tests.redis_server import RedisServer

TTL = 60_000


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    redis_server.flush()
    store = RedisStore(redis_server.url, timeout=3.0)
    yield store
    await store.close()


def chunk(session: str, seq: int, text: str, fence: str = "1") -> Append:
    return Append(session, fence, chunk_id(seq), ("c", text), ("lastSeq", str(seq)))


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
