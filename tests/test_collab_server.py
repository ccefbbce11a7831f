"""``/collab/{documentId}`` (PROTOCOL.md "Collaborative documents (Yjs)"): the y-websocket
protocol, rooms and their stores, limits and access.

Real server on an ephemeral port; real clients: the npm ``y-websocket`` provider in Node
(``tests/collab_client.mjs``, each document it sees checked against StarterKit's schema)
and, for what a browser never sends, a raw aiohttp WebSocket speaking the y-protocols with
pycrdt's encoders.
"""

from __future__ import annotations

import asyncio
import base64
import sqlite3
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import pytest
from pycrdt import (
    Doc,
    XmlElement,
    XmlFragment,
    XmlText,
    YMessageType,
    YSyncMessageType,
    create_sync_message,
    create_update_message,
    read_message,
    write_var_uint,
)

from server.collab.rooms import DocumentRooms, RoomLimits
from server.collab.stores import MemoryDocumentStore, SQLiteDocumentStore
from server.guards.auth import Identity, may_edit_document
from tests.collab_fixtures import Collab
from tests.helpers import WAIT, wait_until

SECRET = "test-secret-that-is-long-enough-for-hs256"


@pytest.fixture
def store() -> str:
    """Sessions in memory only: the Redis document store has its own tests
    (``tests/test_collab_redis_store.py``)."""
    return "memory"


# -- what a raw client speaks ------------------------------------------------------------


def paragraph_update(doc: Doc[Any], text: str) -> bytes:
    """Append a paragraph to ``doc``'s fragment; the update that does it."""
    updates: list[bytes] = []
    subscription = doc.observe(lambda event: updates.append(event.update))
    fragment = doc.get("default", type=XmlFragment)
    with doc.transaction():
        fragment.children.append(XmlElement("paragraph", contents=[XmlText(text)]))
    doc.unobserve(subscription)
    return updates[0]


def text_of(doc: Doc[Any]) -> str:
    return str(doc.get("default", type=XmlFragment))


def sync_step(step: int, payload: bytes) -> bytes:
    return bytes([YMessageType.SYNC, step]) + write_var_uint(len(payload)) + payload


async def raw_client(
    http: aiohttp.ClientSession, collab: Collab, document_id: str
) -> aiohttp.ClientWebSocketResponse:
    return await http.ws_connect(f"{collab.ws}/{document_id}")


async def closed_with(ws: aiohttp.ClientWebSocketResponse) -> int | None:
    """Read until the server closes; its close code."""
    async with asyncio.timeout(WAIT):
        async for _ in ws:
            pass
    return ws.close_code


# -- sync and persistence ----------------------------------------------------------------


async def test_two_clients_converge(collab, collaborators):
    a = await collaborators(collab, "converge")
    b = await collaborators(collab, "converge")
    await a.command("paragraph", text="written by a")
    await b.command("paragraph", text="written by b")
    await a.command("wait", contains="written by b")
    await b.command("wait", contains="written by a")
    dump_a, dump_b = await a.dump(), await b.dump()
    assert dump_a["json"] == dump_b["json"]
    assert sorted(dump_a["text"].split("\n")) == ["written by a", "written by b"]
    room = collab.rooms.loaded("converge")
    assert room is not None
    server_doc: Doc[Any] = Doc()
    server_doc.apply_update(room.doc.get_update())
    client_doc: Doc[Any] = Doc()
    client_doc.apply_update(base64.b64decode(dump_a["state"]))
    assert text_of(server_doc) == text_of(client_doc)


async def test_a_late_joiner_gets_everything(collab, collaborators):
    first = await collaborators(collab, "late")
    for n in range(3):
        await first.command("paragraph", text=f"line {n}")
    await wait_until(lambda: "line 2" in str(collab.rooms.loaded("late").fragment))
    await first.leave()
    late = await collaborators(collab, "late")
    assert (await late.dump())["text"] == "line 0\nline 1\nline 2"


async def test_a_restarted_server_serves_the_document_as_it_was(start_collab, collaborators, tmp_path):
    """SQLite store: what a client wrote is there after a restart; shutting down closes the
    clients with 1001 and stores what was not stored yet."""
    settings = {"collab_store": "sqlite", "collab_data_dir": tmp_path / "data"}
    first = await start_collab(**settings)
    writer = await collaborators(first, "persist", reconnect=False)
    await writer.command("paragraph", text="kept across restarts")
    await wait_until(lambda: "kept across restarts" in str(first.rooms.loaded("persist").fragment))
    await first.close()
    assert (await writer.wait_event(lambda e: e["event"] == "closed"))["code"] == 1001

    second = await start_collab(**settings)
    reader = await collaborators(second, "persist")
    assert (await reader.dump())["text"] == "kept across restarts"
    assert (tmp_path / "data" / "documents.sqlite3").is_file()


async def test_the_first_write_to_a_room_is_sent_and_stored(start_collab, collaborators):
    """Trap: writes made before a room observes its document are neither sent nor stored.
    ``rooms.room()`` hands a room out only once it does."""
    store = MemoryDocumentStore()
    collab = await start_collab(document_store=store)
    async with collab.rooms.hold("first-write") as room:
        with room.doc.transaction(origin="ai"):
            room.fragment.children.append(XmlElement("paragraph", contents=[XmlText("at once")]))
        await room.flush()
        stored = await store.read("first-write")
        assert stored is not None
        doc: Doc[Any] = Doc()
        doc.apply_update(stored)
        assert text_of(doc) == "<paragraph>at once</paragraph>"
        client = await collaborators(collab, "first-write")
        assert (await client.dump())["text"] == "at once"


async def test_a_room_loads_its_document_from_the_store(start_collab, collaborators):
    """Trap: a YRoom does not load from its store by itself."""
    store = MemoryDocumentStore()
    await store.write("stored", paragraph_update(Doc(), "from the store"))
    collab = await start_collab(document_store=store)
    client = await collaborators(collab, "stored")
    assert (await client.dump())["text"] == "from the store"
    await client.command("paragraph", text="and more")
    room = collab.rooms.loaded("stored")
    await wait_until(lambda: "and more" in str(room.fragment))
    await room.flush()
    doc: Doc[Any] = Doc()
    doc.apply_update(await store.read("stored"))
    assert text_of(doc) == "<paragraph>from the store</paragraph><paragraph>and more</paragraph>"


class GatedStore(MemoryDocumentStore):
    """A memory store whose writes wait for ``gate`` while it is closed."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = asyncio.Event()

    async def write(self, document_id: str, update: bytes) -> None:
        if not self.gate.is_set():
            self.waiting.set()
            await self.gate.wait()
        await super().write(document_id, update)


async def test_an_idle_room_leaves_memory_only_once_everything_is_stored(start_collab, collaborators):
    """Trap: an empty room must not drop unsaved state. The room stays while its last
    update waits for the store, leaves once it is stored, and comes back from the store."""
    idle = 0.05
    store = GatedStore()
    collab = await start_collab(document_store=store, collab_room_idle_timeout=idle)
    store.gate.clear()
    writer = await collaborators(collab, "idle")
    await writer.command("paragraph", text="not lost")
    async with asyncio.timeout(WAIT):
        await store.waiting.wait()
    await writer.leave()
    await wait_until(lambda: collab.rooms.connections("idle") == 0)
    # Several idle timeouts pass with the update still unstored: the room stays.
    await asyncio.sleep(idle * 6)
    room = collab.rooms.loaded("idle")
    assert room is not None and not room.saved
    store.gate.set()
    await wait_until(lambda: collab.rooms.loaded("idle") is None)
    reader = await collaborators(collab, "idle")
    assert (await reader.dump())["text"] == "not lost"
    assert collab.rooms.loaded("idle") is not room


async def test_a_client_joining_while_the_server_writes_fast_gets_the_same_document(collab, http):
    """Trap (pycrdt-websocket PR #138): a client must get no update before the document it
    builds on. A client that holds back its sync step 1 while the server writes receives no
    update meanwhile; then sync step 2 comes first, and what it received makes the server's
    document."""
    async with collab.rooms.hold("race") as room:
        ws = await raw_client(http, collab, "race")
        first = await ws.receive_bytes(timeout=WAIT)
        assert first[:2] == bytes([YMessageType.SYNC, YSyncMessageType.SYNC_STEP1])
        for n in range(50):
            with room.doc.transaction(origin="ai"):
                room.fragment.children.append(XmlElement("paragraph", contents=[XmlText(f"fast {n}")]))
            await asyncio.sleep(0)
        # Anything before the client's sync step 1 would be awareness at most.
        with pytest.raises(TimeoutError):
            while True:
                early = await ws.receive_bytes(timeout=0.2)
                assert early[0] != YMessageType.SYNC, early[:2]
        await ws.send_bytes(create_sync_message(Doc()))
        writing = asyncio.get_running_loop().create_task(_write_fast(room, 50, 100))
        received = [await ws.receive_bytes(timeout=WAIT)]
        await writing
        assert received[0][:2] == bytes([YMessageType.SYNC, YSyncMessageType.SYNC_STEP2])
        client: Doc[Any] = Doc()
        while text_of(client) != text_of(room.doc):
            message = received.pop() if received else await ws.receive_bytes(timeout=WAIT)
            if message[0] == YMessageType.SYNC:
                client.apply_update(read_message(message[2:]))
        await ws.close()


async def _write_fast(room: Any, start: int, end: int) -> None:
    for n in range(start, end):
        with room.doc.transaction(origin="ai"):
            room.fragment.children.append(XmlElement("paragraph", contents=[XmlText(f"fast {n}")]))
        await asyncio.sleep(0)


async def test_collaborators_joining_during_fast_server_writes_see_no_error(collab, collaborators):
    """The same race with real y-websocket clients: five join while the server writes; none
    throws, each ends with the server's document."""
    async with collab.rooms.hold("join-race") as room:
        writing = asyncio.get_running_loop().create_task(_write_fast(room, 0, 400))
        clients = await asyncio.gather(*(collaborators(collab, "join-race") for _ in range(5)))
        await writing
        for client in clients:
            await client.command("wait", contains="fast 399")
            dump = await client.dump()
            assert dump["text"] == "\n".join(f"fast {n}" for n in range(400))
            assert not client.problems()


# -- awareness ---------------------------------------------------------------------------


async def test_a_client_that_asks_for_awareness_gets_every_state(collab, http):
    async with collab.rooms.hold("query") as room:
        room.set_peer_state({"user": {"name": "AI", "aiInstanceId": "s"}})
        ws = await raw_client(http, collab, "query")
        await ws.send_bytes(create_sync_message(Doc()))
        await ws.send_bytes(bytes([3]))  # y-protocols' query awareness
        async with asyncio.timeout(WAIT):
            while True:
                message = await ws.receive_bytes()
                if message[0] == YMessageType.AWARENESS and b"aiInstanceId" in message:
                    break
        await ws.close()


async def test_the_servers_peer_state_reaches_the_clients(collab, collaborators):
    client = await collaborators(collab, "peer")
    room = collab.rooms.loaded("peer")
    ai = {"user": {"name": "AI", "color": "#7c3aed", "aiInstanceId": "session-1"}}
    room.set_peer_state(ai)
    await client.command("wait", peer="aiInstanceId")
    states = (await client.command("awareness"))["states"]
    assert ai in states.values()
    late = await collaborators(collab, "peer")
    await late.command("wait", peer="aiInstanceId")
    room.set_peer_state(None)
    await client.command("waitNoPeer", peer="aiInstanceId")
    await late.command("waitNoPeer", peer="aiInstanceId")


async def test_a_client_that_vanishes_leaves_the_others_awareness(collab, collaborators):
    staying = await collaborators(collab, "vanish")
    vanishing = await collaborators(collab, "vanish")
    await staying.command("wait", peer="name")
    vanishing.kill()  # no goodbye: the server removes its state for the others
    await staying.command("waitNoPeer", peer="name")


# -- bad input and limits ----------------------------------------------------------------


async def test_an_update_that_does_not_decode_closes_that_client_1007(collab, collaborators, http):
    good = await collaborators(collab, "bad-update")
    other = await collaborators(collab, "bad-update")
    bad = await raw_client(http, collab, "bad-update")
    await bad.send_bytes(create_sync_message(Doc()))
    await bad.send_bytes(sync_step(YSyncMessageType.SYNC_UPDATE, b"\x01\x02\x03 not an update"))
    assert await closed_with(bad) == 1007
    await good.command("paragraph", text="still syncing")
    await other.command("wait", contains="still syncing")
    assert (await other.dump())["text"] == "still syncing"


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (bytes([7, 1, 2]), 1003),  # a message type y-websocket does not have
        (bytes([YMessageType.SYNC, 9, 0]), 1003),  # a sync step there is not
        (bytes([YMessageType.SYNC, YSyncMessageType.SYNC_UPDATE, 50, 1]), 1007),  # shorter than its length
        (bytes([YMessageType.AWARENESS, 3, 1, 2, 3]), 1007),  # awareness short of its state
        (bytes([YMessageType.AWARENESS, 5, 1, 2, 3, 1]) + b"{", 1007),  # a state that is no JSON
        (b"", 1007),
    ],
)
async def test_a_message_the_protocol_does_not_have_closes_that_client(
    collab, collaborators, http, message, code
):
    good = await collaborators(collab, "bad-message")
    bad = await raw_client(http, collab, "bad-message")
    await bad.send_bytes(message)
    assert await closed_with(bad) == code
    await good.command("paragraph", text="unharmed")
    assert (await good.dump())["text"] == "unharmed"


async def test_a_text_frame_closes_the_client_1003(collab, http):
    ws = await raw_client(http, collab, "text-frame")
    await ws.send_str("hello")
    assert await closed_with(ws) == 1003


async def test_an_update_past_the_document_size_closes_that_client_1009(start_collab, collaborators, http):
    collab = await start_collab(collab_max_document_bytes=4096)
    good = await collaborators(collab, "big")
    await good.command("paragraph", text="small")
    bad = await raw_client(http, collab, "big")
    await bad.send_bytes(create_sync_message(Doc()))
    await bad.send_bytes(create_update_message(paragraph_update(Doc(), "x" * 5000)))
    assert await closed_with(bad) == 1009
    await good.command("paragraph", text="room for this")
    other = await collaborators(collab, "big")
    assert (await other.dump())["text"] == "small\nroom for this"
    assert collab.rooms.loaded("big").size < 4096


async def test_a_message_past_its_size_closes_the_client_1009(start_collab, http):
    collab = await start_collab(collab_max_message_bytes=2048)
    ws = await raw_client(http, collab, "huge-message")
    await ws.send_bytes(create_update_message(paragraph_update(Doc(), "y" * 4000)))
    assert await closed_with(ws) == 1009


async def test_a_client_that_never_syncs_is_closed_1008(start_collab, http):
    collab = await start_collab(collab_sync_timeout=0.2)
    ws = await raw_client(http, collab, "silent")
    assert await closed_with(ws) == 1008


async def test_connections_per_document_are_limited_429_before_the_upgrade(start_collab, http):
    collab = await start_collab(collab_max_connections_per_document=2)
    first = await raw_client(http, collab, "crowded")
    second = await raw_client(http, collab, "crowded")
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await raw_client(http, collab, "crowded")
    assert refused.value.status == 429
    elsewhere = await raw_client(http, collab, "another-document")
    await first.close()
    await wait_until(lambda: collab.rooms.connections("crowded") == 1)
    third = await raw_client(http, collab, "crowded")
    for ws in (second, third, elsewhere):
        await ws.close()


@pytest.mark.parametrize("path", ["bad%20id", "", "a/b", "x" * 129, "caf%C3%A9"])
async def test_an_invalid_document_id_is_400_before_the_upgrade(collab, http, path):
    async with http.get(f"{collab.url}/collab/{path}") as resp:
        assert resp.status == 400
        assert "documentId" in (await resp.json())["error"]


async def test_a_request_that_is_no_upgrade_is_400(collab, http):
    async with http.get(f"{collab.url}/collab/plain-get") as resp:
        assert resp.status == 400
        assert "WebSocket" in (await resp.json())["error"]
    assert collab.rooms.loaded("plain-get") is None


# -- access ------------------------------------------------------------------------------


def token(sub: str, **claims: Any) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 300, **claims}, SECRET, algorithm="HS256")


async def test_access_needs_a_token_whose_docs_claim_lists_the_document(start_collab, collaborators, http):
    collab = await start_collab(auth_jwt_secret=SECRET)
    refusals = {
        None: 401,
        "not-a-token": 401,
        token("ann"): 403,
        token("ann", docs=["other-doc", "team-b*"]): 403,
    }
    for value, status in refusals.items():
        params = {} if value is None else {"token": value}
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{collab.ws}/team-a:notes", params=params)
        assert refused.value.status == status, value
    assert collab.rooms.loaded("team-a:notes") is None

    exact = await collaborators(collab, "team-a:notes", token=token("ann", docs=["team-a:notes"]))
    prefixed = await collaborators(collab, "team-a:notes", token=token("bob", docs=["team-a:*"]))
    await exact.command("paragraph", text="for the team")
    await prefixed.command("wait", contains="for the team")


def test_may_edit_document_reads_ids_and_prefixes():
    ann = Identity("ann", docs=frozenset({"plan", "team-*"}))
    assert may_edit_document(None, "anything")
    assert may_edit_document(ann, "plan")
    assert may_edit_document(ann, "team-")
    assert may_edit_document(ann, "team-notes")
    assert not may_edit_document(ann, "plans")
    assert not may_edit_document(ann, "tea")
    assert may_edit_document(Identity("root", docs=frozenset({"*"})), "x")
    assert not may_edit_document(Identity("nobody"), "plan")


# -- stores ------------------------------------------------------------------------------


class FailingStore(MemoryDocumentStore):
    """A memory store that fails to read or write while ``failing`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = True
        self.failed_writes = 0

    async def read(self, document_id: str) -> bytes | None:
        if self.failing:
            raise ConnectionError("store down")
        return await super().read(document_id)

    async def write(self, document_id: str, update: bytes) -> None:
        if self.failing:
            self.failed_writes += 1
            raise ConnectionError("store down")
        await super().write(document_id, update)


async def test_a_document_whose_store_cannot_be_read_is_503_until_it_can(start_collab, collaborators, http):
    store = FailingStore()
    collab = await start_collab(document_store=store)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await raw_client(http, collab, "down")
    assert refused.value.status == 503
    store.failing = False
    client = await collaborators(collab, "down")
    await client.command("paragraph", text="back")


async def test_a_failed_write_is_retried_and_the_room_stays_until_it_is_stored():
    store = FailingStore()
    store.failing = False
    rooms = DocumentRooms(store, RoomLimits(idle_timeout=0.01))
    room = await rooms.room("flaky")
    store.failing = True
    with room.doc.transaction():
        room.fragment.children.append(XmlElement("paragraph", contents=[XmlText("eventually")]))
    await wait_until(lambda: store.failed_writes >= 2)
    assert rooms.loaded("flaky") is room and not room.saved
    store.failing = False
    await room.flush()
    await wait_until(lambda: rooms.loaded("flaky") is None)
    doc: Doc[Any] = Doc()
    doc.apply_update(await store.read("flaky"))
    assert text_of(doc) == "<paragraph>eventually</paragraph>"
    await rooms.close(grace=1)


class ReplicatedMemoryStore(MemoryDocumentStore):
    """A memory store that also hands out updates "other processes" wrote (``remote``)."""

    def __init__(self) -> None:
        super().__init__()
        self.remote: asyncio.Queue[bytes] = asyncio.Queue()
        self.written: list[bytes] = []

    async def write(self, document_id: str, update: bytes) -> None:
        self.written.append(update)
        await super().write(document_id, update)

    async def follow(self, document_id: str, after: bytes | None = None) -> AsyncIterator[bytes]:
        while True:
            yield await self.remote.get()


async def test_other_processes_updates_reach_the_clients_and_are_not_stored_again(
    start_collab, collaborators
):
    store = ReplicatedMemoryStore()
    collab = await start_collab(document_store=store)
    client = await collaborators(collab, "replicated")
    remote = paragraph_update(Doc(), "from process B")
    store.remote.put_nowait(remote)
    await client.command("wait", contains="from process B")
    await client.command("paragraph", text="from here")
    room = collab.rooms.loaded("replicated")
    await wait_until(lambda: "from here" in str(room.fragment))
    await room.flush()
    stored: Doc[Any] = Doc()
    for update in store.written:
        stored.apply_update(update)
    # What was written builds on B's paragraph (which B stored) but does not hold it.
    assert text_of(stored) == ""
    stored.apply_update(remote)
    assert text_of(stored) == "<paragraph>from process B</paragraph><paragraph>from here</paragraph>"


async def test_memory_store_keeps_merges_and_measures():
    store = MemoryDocumentStore()
    assert await store.read("none") is None
    assert await store.size("none") == 0
    doc: Doc[Any] = Doc()
    updates = [paragraph_update(doc, f"p{n}") for n in range(100)]
    for update in updates:
        await store.write("d", update)
        await store.write("d", update)  # twice: changes nothing
    copy: Doc[Any] = Doc()
    copy.apply_update(await store.read("d"))
    assert text_of(copy) == text_of(doc)
    assert 0 < await store.size("d") <= sum(len(u) for u in updates) * 2


async def test_sqlite_store_squashes_history_without_losing_it(tmp_path):
    """pycrdt-store 0.1.5 squashes a document after inactivity by applying its rows only
    when a decompressor is registered (and deletes them either way): our store registers
    one. Three rows, then a store that finds them inactive (``squash_after=0``) writes a
    fourth: two rows are left, the squashed three and the new one."""
    doc: Doc[Any] = Doc()
    updates = [paragraph_update(doc, f"row {n}") for n in range(4)]
    store = SQLiteDocumentStore(tmp_path, squash_after=3600, open_documents=4)
    for update in updates[:3]:
        await store.write("squashed", update)
    await store.close()
    store = SQLiteDocumentStore(tmp_path, squash_after=0, open_documents=4)
    await store.write("squashed", updates[3])
    await store.close()
    with sqlite3.connect(tmp_path / "documents.sqlite3") as db:
        rows = db.execute("SELECT count(*) FROM yupdates WHERE path = 'squashed'").fetchone()[0]
    assert rows == 2, "the history was squashed"
    reopened = SQLiteDocumentStore(tmp_path, squash_after=3600, open_documents=4)
    copy: Doc[Any] = Doc()
    copy.apply_update(await reopened.read("squashed"))
    assert text_of(copy) == text_of(doc)
    assert await reopened.size("squashed") == len(copy.get_update())
    assert await reopened.read("never-written") is None
    await reopened.close()


async def test_sqlite_store_write_failures_reach_the_caller(tmp_path):
    """sqlite-anyio swallows SQLite errors unless its handler is dropped: a write that
    failed must not look stored."""
    store = SQLiteDocumentStore(tmp_path, squash_after=300, open_documents=4)
    await store.write("fails", paragraph_update(Doc(), "first"))
    with sqlite3.connect(tmp_path / "documents.sqlite3") as db:
        db.execute("DROP TABLE yupdates")
    with pytest.raises(sqlite3.OperationalError):
        await store.write("fails", paragraph_update(Doc(), "second"))
    await store.close()


async def test_sqlite_store_closes_the_least_recently_used_documents(tmp_path):
    store = SQLiteDocumentStore(tmp_path, squash_after=300, open_documents=2)
    for name in ("one", "two", "three"):
        await store.write(name, paragraph_update(Doc(), name))
    assert len(store._handles) == 2
    for name in ("one", "two", "three"):
        copy: Doc[Any] = Doc()
        copy.apply_update(await store.read(name))
        assert text_of(copy) == f"<paragraph>{name}</paragraph>"
    await store.close()
