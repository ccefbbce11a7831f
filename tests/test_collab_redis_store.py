"""Collaborative documents in Redis (``RedisDocumentStore``) against a real redis-server:
two processes (two stores, each with its own pycrdt ``Doc``) converge through write and
follow, a late reader and a restarted store read the same state, compaction racing
writers and readers loses nothing, a follower left behind by a trim catches up, and
Redis going away is an error with a deadline, not a hang. Awareness updates reach the
other processes (on one Redis and on a Redis Cluster), a late follower gets the recent
ones, and they are neither part of the document nor kept past their window."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from pycrdt import Doc, Text, TransactionEvent, merge_updates

from server.cluster import collab_store
from server.cluster.collab_store import (
    DocumentFollower,
    RedisDocumentStore,
    awareness_key,
    compacted,
    document_keys,
    parse_stream_id,
)
from server.cluster.redis_store import RedisLink, RedisTarget
from server.core.errors import StoreUnavailable
from tests.redis_sentinel import MASTER, sentinel_group_fixture  # noqa: F401 (a fixture)
from tests.redis_server import RedisServer

DOC = "notes:1"
#: Seconds any wait in this module may take.
WAIT = 15.0

StoreFactory = Callable[..., RedisDocumentStore]


@pytest.fixture
async def stores(redis_server: RedisServer) -> AsyncIterator[StoreFactory]:
    """Stores on a flushed Redis, each a "process" with its own id; closed at the end."""
    redis_server.flush()
    made: list[RedisDocumentStore] = []

    def make(process_id: str, **options: Any) -> RedisDocumentStore:
        store = RedisDocumentStore(redis_server.url, process_id=process_id, timeout=3.0, **options)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


class Replica:
    """What a process holds for one open document: a pycrdt ``Doc`` whose own changes go to
    the store and which applies what the other processes write (as a room would)."""

    def __init__(self, store: RedisDocumentStore, document_id: str = DOC) -> None:
        self.store = store
        self.document_id = document_id
        self.doc: Doc[Any] = Doc()
        self.text = self.doc.get("text", type=Text)
        self.changed = asyncio.Event()
        self.followed = 0
        self.followed_changes = 0
        self._applying = False
        self._following = False
        self._writes: list[asyncio.Task[None]] = []
        self._follower: DocumentFollower | None = None
        self._task: asyncio.Task[None] | None = None
        self.doc.observe(self._on_change)

    def _on_change(self, event: TransactionEvent) -> None:
        self.changed.set()
        if self._applying:
            self.followed_changes += self._following
        else:
            # Fire and forget, as pycrdt-websocket's room does: the store keeps the order.
            self._writes.append(asyncio.create_task(self.store.write(self.document_id, event.update)))

    def apply(self, update: bytes) -> None:
        """Apply what the store handed over (not written back)."""
        self._applying = True
        try:
            self.doc.apply_update(update)
        finally:
            self._applying = False

    async def open(self) -> Replica:
        update = await self.store.read(self.document_id)
        if update is not None:
            self.apply(update)
        self._follower = self.store.follow(self.document_id)
        self._task = asyncio.create_task(self._follow(self._follower))
        return self

    async def _follow(self, follower: DocumentFollower) -> None:
        async for update in follower:
            self.followed += 1
            self._following = True
            self.apply(update)
            self._following = False
            self.changed.set()

    def type(self, text: str) -> None:
        with self.doc.transaction():
            self.text += text

    async def written(self) -> None:
        await asyncio.gather(*self._writes)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

    async def close(self) -> None:
        if self._follower is not None:
            await self._follower.aclose()
        if self._task is not None:
            await self._task


def text_of(update: bytes | None) -> str:
    doc: Doc[Any] = Doc()
    if update is not None:
        doc.apply_update(update)
    return str(doc.get("text", type=Text))


def words(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{index};" for index in range(count)]


async def typed(replica: Replica, tokens: list[str]) -> None:
    """Type ``tokens`` one transaction each, letting the other tasks (the writes, the
    followers) run between two."""
    for token in tokens:
        replica.type(token)
        await asyncio.sleep(0)


async def test_two_processes_converge_through_write_and_follow(stores):
    a = await Replica(stores("a")).open()
    b = await Replica(stores("b")).open()
    tokens_a, tokens_b = words("a", 100), words("b", 100)
    await asyncio.gather(typed(a, tokens_a), typed(b, tokens_b))
    await asyncio.gather(a.written(), b.written())
    length = len("".join(tokens_a + tokens_b))
    await a.wait_for(lambda: len(a.text) == length)
    await b.wait_for(lambda: len(b.text) == length)
    assert str(a.text) == str(b.text)
    for token in tokens_a + tokens_b:
        assert token in str(a.text)
    # Each process followed only what the other wrote: its own 100 updates never came back.
    assert a.followed == b.followed == 100
    assert a.followed_changes == b.followed_changes == 100


async def test_a_late_reader_and_a_restarted_store_read_the_same_state(stores):
    a = await Replica(stores("a")).open()
    await typed(a, words("x", 100))  # more than are merged on the event loop
    await a.written()
    late = await Replica(stores("late")).open()
    assert str(late.text) == str(a.text)
    await a.close()
    await a.store.close()
    again = await Replica(stores("a")).open()
    assert str(again.text) == str(a.text)
    assert (await again.store.read("never-written")) is None


async def test_read_then_follow_neither_loses_nor_repeats_an_update(stores):
    writer = await Replica(stores("w")).open()
    tokens = words("w", 200)

    async def keep_typing() -> None:
        for token in tokens:
            writer.type(token)
            await writer.written()

    typing = asyncio.create_task(keep_typing())
    # Open mid-stream: what the read returned and what follow hands over meet exactly.
    await writer.wait_for(lambda: len(writer.text) > 100)
    reader = await Replica(stores("r")).open()
    read_length = len(reader.text)
    await typing
    await reader.wait_for(lambda: str(reader.text) == str(writer.text))
    assert 0 < read_length < len(writer.text) and reader.followed > 0
    assert reader.followed == reader.followed_changes  # no followed update was already in the read


async def test_duplicated_delivery_changes_nothing(stores):
    store = stores("a")
    other = await Replica(stores("b")).open()
    source: Doc[Any] = Doc()
    updates: list[bytes] = []
    source.observe(lambda event: updates.append(event.update))
    source.get("text", type=Text).insert(0, "once")
    await store.write(DOC, updates[0])
    await store.write(DOC, updates[0])
    await other.wait_for(lambda: other.followed == 2)
    assert str(other.text) == "once"
    assert other.followed_changes == 1  # the second copy fired no change
    assert text_of(await store.read(DOC)) == "once"


@pytest.mark.parametrize("retain_ms", [0, 60_000])
async def test_compaction_while_writers_write_loses_nothing(stores, retain_ms):
    options = {"compact_entries": 10, "retain_ms": retain_ms}
    a = await Replica(stores("a", **options)).open()
    b = await Replica(stores("b", **options)).open()
    reader = stores("reader")
    tokens_a, tokens_b = words("a", 150), words("b", 150)
    acked: set[str] = set()

    async def write_acked(replica: Replica, tokens: list[str]) -> None:
        for token in tokens:
            replica.type(token)
            await replica._writes[-1]
            acked.add(token)

    async def read_while_writing() -> int:
        reads = 0
        while len(acked) < len(tokens_a) + len(tokens_b):
            before = set(acked)
            state = text_of(await reader.read(DOC))
            missing = [token for token in before if token not in state]
            assert not missing, f"a read racing compaction lost {missing[:3]}"
            reads += 1
        return reads

    writers = asyncio.gather(write_acked(a, tokens_a), write_acked(b, tokens_b))
    reads, _ = await asyncio.gather(read_while_writing(), writers)
    assert reads > 0
    final = text_of(await reader.read(DOC))
    assert all(token in final for token in tokens_a + tokens_b)
    await a.wait_for(lambda: str(a.text) == final)
    await b.wait_for(lambda: str(b.text) == final)
    meta, log, _ = document_keys("", DOC)
    snapshot = await reader.redis.hget(meta, "snap")
    assert snapshot is not None and len(text_of(snapshot)) > 0
    if retain_ms:
        # Nothing is older than the window yet: no follower could miss an entry, and each
        # got the other's updates exactly once (no whole document handed over again).
        assert await reader.redis.xlen(log) == 300
        assert a.followed == b.followed == 150
    else:
        assert await reader.redis.xlen(log) < 300  # the stream was trimmed


async def test_reads_racing_forced_compactions_are_complete(stores):
    store = stores("a", retain_ms=0)
    replica = await Replica(store).open()
    await typed(replica, words("t", 120))
    await replica.written()
    expected = str(replica.text)

    async def compact_again() -> None:
        for _ in range(20):
            await store.compact(DOC)
            replica.type("+")
            await replica.written()

    async def read_again() -> None:
        for _ in range(60):
            assert text_of(await store.read(DOC)).startswith(expected)

    await asyncio.gather(compact_again(), read_again(), read_again())
    assert text_of(await store.read(DOC)) == expected + "+" * 20


async def test_a_follower_behind_a_trim_gets_the_whole_document(stores):
    writer_store = stores("w", retain_ms=0)
    writer = await Replica(writer_store).open()
    await typed(writer, words("old", 20))
    await writer.written()
    reader_store = stores("r")
    update, cursor = await reader_store.read_with_cursor(DOC)
    await typed(writer, words("new", 20))
    await writer.written()
    assert await writer_store.compact(DOC)
    meta, _, _ = document_keys("", DOC)
    trimmed = await writer_store.redis.hget(meta, "trimmed")
    assert trimmed is not None and parse_stream_id(trimmed) > parse_stream_id(cursor)
    # The entries after the reader's cursor are gone: following from it hands over the
    # whole document instead.
    late = Replica(reader_store)
    assert update is not None
    late.apply(update)
    assert "new" not in str(late.text)
    late._follower = reader_store.follow(DOC, cursor)
    late._task = asyncio.create_task(late._follow(late._follower))
    await late.wait_for(lambda: str(late.text) == str(writer.text))
    await late.close()


async def test_a_slow_follower_is_held_and_misses_nothing(stores):
    writer = await Replica(stores("w")).open()
    store = stores("r", follow_max_pending=4)
    follower = store.follow(DOC)
    await typed(writer, words("w", 100))
    await writer.written()
    doc: Doc[Any] = Doc()
    received = 0
    async with asyncio.timeout(WAIT):
        async for update in follower:
            received += 1
            doc.apply_update(update)
            if str(doc.get("text", type=Text)) == str(writer.text):
                break
    assert received == 100
    await follower.aclose()


async def test_each_document_is_followed_on_its_own(stores):
    writer = stores("w")
    reader = stores("r")
    one = await Replica(reader, "doc-1").open()
    two = await Replica(reader, "doc-2").open()
    for document_id, word in (("doc-1", "one"), ("doc-2", "two")):
        source: Doc[Any] = Doc()
        updates: list[bytes] = []
        source.observe(lambda event, updates=updates: updates.append(event.update))
        source.get("text", type=Text).insert(0, word)
        await writer.write(document_id, updates[0])
    await one.wait_for(lambda: str(one.text) == "one")
    await two.wait_for(lambda: str(two.text) == "two")


async def test_keys_share_one_slot_per_document_behind_the_prefix(stores):
    store = stores("a", prefix="app:", compact_entries=2, retain_ms=0)
    replica = await Replica(store).open()
    for token in words("k", 5):
        replica.type(token)
        await replica.written()
    await store.compact(DOC)
    keys = [key.decode() for key in await store.redis.keys("*") if b"collab:wake" not in key]
    assert keys and all(key.startswith("app:{collab:notes:1}:") for key in keys)
    assert set(document_keys("app:", DOC)) >= set(keys)
    with pytest.raises(ValueError):
        RedisDocumentStore("redis://127.0.0.1:1/0", process_id="x", prefix="{bad}")


async def test_size_counts_the_snapshot_and_what_follows_it(stores):
    store = stores("a", retain_ms=0)
    assert await store.size(DOC) == 0
    replica = await Replica(store).open()
    await typed(replica, words("s", 30))
    await replica.written()
    total = sum(len(update) for update in await all_updates(store))
    assert await store.size(DOC) == total
    await store.compact(DOC)
    meta, _, _ = document_keys("", DOC)
    snapshot = await store.redis.hget(meta, "snap")
    assert await store.size(DOC) == len(snapshot) < total


async def all_updates(store: RedisDocumentStore) -> list[bytes]:
    _, log, _ = document_keys("", DOC)
    return [fields[b"u"] for _, fields in await store.redis.xrange(log)]


def test_a_snapshot_keeps_an_update_that_came_before_its_dependency():
    source: Doc[Any] = Doc()
    updates: list[bytes] = []
    source.observe(lambda event: updates.append(event.update))
    text = source.get("text", type=Text)
    text.insert(0, "hello")
    text.insert(5, " world")
    text.insert(11, "!")
    # The first has not arrived yet: a Doc holds the others back and would leave them out.
    snapshot = compacted(updates[1:])
    assert text_of(snapshot) == ""
    assert text_of(merge_updates(snapshot, updates[0])) == "hello world!"
    # Deleted text is kept as a length only.
    text.insert(12, "x" * 5000)
    del text[12:]
    assert len(compacted(updates)) < len(merge_updates(*updates)) - 4000
    assert text_of(compacted(updates)) == "hello world!"


async def test_redis_down_is_an_error_in_time_and_followers_catch_up():
    with RedisServer() as redis_server:
        a = RedisDocumentStore(redis_server.url, process_id="a", timeout=1.0)
        b = RedisDocumentStore(redis_server.url, process_id="b", timeout=1.0)
        try:
            writer = await Replica(a).open()
            reader = await Replica(b).open()
            writer.type("before;")
            await writer.written()
            await reader.wait_for(lambda: str(reader.text) == "before;")
            redis_server.kill()
            async with asyncio.timeout(10):
                with pytest.raises(StoreUnavailable):
                    await a.write(DOC, writer.doc.get_update())
                with pytest.raises(StoreUnavailable):
                    await b.read(DOC)
                with pytest.raises(StoreUnavailable):
                    await b.size(DOC)
            redis_server.start()  # its append-only file brings the document back
            writer.type("after;")
            await writer.written()
            await reader.wait_for(lambda: str(reader.text) == "before;after;")
            await reader.close()
        finally:
            await a.close()
            await b.close()


async def test_scripts_lost_by_redis_are_loaded_again(stores):
    store = stores("a")
    replica = await Replica(store).open()
    replica.type("one;")
    await replica.written()
    await store.redis.script_flush()
    replica.type("two;")
    await replica.written()
    assert text_of(await store.read(DOC)) == "one;two;"


async def test_one_process_compacts_at_a_time(stores):
    a, b = stores("a", retain_ms=0), stores("b", retain_ms=0)
    replica = await Replica(a).open()
    await typed(replica, words("c", 40))
    await replica.written()
    done = await asyncio.gather(a.compact(DOC), b.compact(DOC))
    assert sorted(done) == [False, True]  # the lock let one through
    assert not await a.compact(DOC)  # nothing new since the snapshot
    _, _, lock = document_keys("", DOC)
    assert not await a.redis.exists(lock)
    assert text_of(await b.read(DOC)) == str(replica.text)


# -- awareness ---------------------------------------------------------------------------


@pytest.fixture(params=["redis", "sentinel", "cluster"])
async def shaped_stores(request: pytest.FixtureRequest) -> AsyncIterator[StoreFactory]:
    """Stores as ``stores`` makes them, on each shape of Redis the server supports: one
    server, a primary named by Sentinels and a Redis Cluster (through a link, as the server
    makes them; on a cluster: announced reads, sharded pub/sub)."""
    made: list[RedisDocumentStore] = []
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        server.flush()
    elif request.param == "sentinel":
        group = request.getfixturevalue("sentinel_group")
        target = RedisTarget(sentinels=tuple(("127.0.0.1", s.port) for s in group.sentinels), master=MASTER)
    else:
        cluster = request.getfixturevalue("shared_redis_cluster")
        cluster.flush()
        target = RedisTarget(cluster=cluster.urls)

    def make(process_id: str, **options: Any) -> RedisDocumentStore:
        if request.param == "redis":
            store = RedisDocumentStore(server.url, process_id=process_id, timeout=3.0, **options)
        else:
            link = RedisLink(target, timeout=3.0)
            store = RedisDocumentStore(None, process_id=process_id, timeout=3.0, link=link, **options)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


class Heard:
    """The awareness updates one follower is handed."""

    def __init__(self) -> None:
        self.updates: list[bytes] = []
        self.changed = asyncio.Event()

    def __call__(self, update: bytes) -> None:
        self.updates.append(update)
        self.changed.set()

    async def wait_for(self, count: int) -> list[bytes]:
        async with asyncio.timeout(WAIT):
            while len(self.updates) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.updates


async def test_awareness_reaches_the_other_processes_not_the_sender(shaped_stores):
    a, b = shaped_stores("a"), shaped_stores("b")
    heard_a, heard_b = Heard(), Heard()
    await a.read(DOC)
    await b.read(DOC)
    on_a = a.follow(DOC, awareness=heard_a)
    on_b = b.follow(DOC, awareness=heard_b)
    a.publish_awareness(DOC, b"first")
    a.publish_awareness(DOC, b"second")
    b.publish_awareness(DOC, b"from b")
    assert await heard_b.wait_for(2) == [b"first", b"second"]
    assert await heard_a.wait_for(1) == [b"from b"]
    # Not part of the document: neither read, nor counted, nor in its stream.
    assert await a.read(DOC) is None
    assert await a.size(DOC) == 0
    _, log, _ = document_keys("", DOC)
    assert await a.redis.xlen(log) == 0
    # A document's updates still come as before.
    writer = await Replica(a, "other").open()
    reader = await Replica(b, "other").open()
    writer.type("text;")
    await writer.written()
    await reader.wait_for(lambda: str(reader.text) == "text;")
    await reader.close()
    await writer.close()
    await on_a.aclose()
    await on_b.aclose()
    assert len(heard_b.updates) == 2


async def test_a_late_follower_gets_the_recent_awareness_and_the_window_is_bounded(
    shaped_stores, monkeypatch
):
    a, late = shaped_stores("a"), shaped_stores("late")
    key = awareness_key("", DOC)
    # An entry older than the window, as if written long ago: the next publish drops it.
    await a.redis.xadd(key, {"p": "gone", "a": b"stale"}, id="1-1")
    a.publish_awareness(DOC, b"recent")
    heard = Heard()
    await late.read(DOC)
    follower = late.follow(DOC, awareness=heard)
    assert await heard.wait_for(1) == [b"recent"]
    assert await a.redis.xlen(key) == 1
    assert 0 < await a.redis.pttl(key) <= collab_store.AWARENESS_WINDOW_MS
    await follower.aclose()
    # The stream outlives its last update by the window, and then nothing is left.
    monkeypatch.setattr(collab_store, "AWARENESS_WINDOW_MS", 1)
    a.publish_awareness(DOC, b"last")
    async with asyncio.timeout(WAIT):
        while await a.redis.exists(key):
            await asyncio.sleep(0.01)
