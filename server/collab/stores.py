"""Where collaborative documents persist: the ``DocumentStore`` protocol, in memory and in
an embedded SQLite database (pycrdt-store's ``SQLiteYStore``).

A document is kept as Yjs v1 updates. Applying an update twice changes nothing, so a
store may merge, replay or squash them freely. The Redis store of Redis mode implements
the same protocol (``server.cluster.collab_store``) and ``ReplicatedAwareness`` too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pycrdt import Doc, merge_updates
from pycrdt.store import SQLiteYStore, YDocNotFound

log = logging.getLogger(__name__)


class DocumentStore(Protocol):
    """Where documents persist. Updates are Yjs v1 updates; applying one twice changes nothing."""

    async def read(self, document_id: str) -> bytes | None:
        """The whole document as one update (or None for a document never written)."""

    async def write(self, document_id: str, update: bytes) -> None:
        """Keep one update; durable when this returns (a process that dies after it lost nothing)."""

    async def size(self, document_id: str) -> int:
        """Bytes kept for the document (the size limit compares against it)."""

    async def close(self) -> None: ...


@runtime_checkable
class ReplicatedStore(DocumentStore, Protocol):
    """A store shared by several processes (Redis mode): each process that has a document open
    also applies the updates the others write."""

    def follow(self, document_id: str, after: bytes | None = None) -> AsyncIterator[bytes]:
        """Updates written by other processes to this document, as they come, starting after
        the point `read` returned (the store keeps what that point is; `after` is opaque)."""


@runtime_checkable
class ReplicatedAwareness(ReplicatedStore, Protocol):
    """A replicated store that also carries each document's awareness (who is in it, their
    carets, the AI's state) between the processes that have it open, without keeping it."""

    def follow(
        self,
        document_id: str,
        after: bytes | None = None,
        awareness: Callable[[bytes], None] | None = None,
    ) -> AsyncIterator[bytes]:
        """As :meth:`ReplicatedStore.follow`; `awareness`, if given, is called with each
        awareness update (y-protocols' encoding) the other processes publish for the
        document, first with those of the last 30 s (so a process that opens it late
        knows who is there)."""

    def publish_awareness(self, document_id: str, update: bytes) -> None:
        """Hand an awareness update of this process's clients to the other processes that
        follow the document, without waiting; not kept with the document."""


#: Updates the memory store keeps per document before it merges them into one.
MEMORY_MERGE_AFTER = 64


class MemoryDocumentStore:
    """Documents in this process's memory, lost on restart (``COLLAB_STORE=memory``: tests
    and demos)."""

    def __init__(self) -> None:
        self._updates: dict[str, list[bytes]] = {}

    async def read(self, document_id: str) -> bytes | None:
        return self._merged(document_id)

    async def write(self, document_id: str, update: bytes) -> None:
        updates = self._updates.setdefault(document_id, [])
        updates.append(update)
        if len(updates) > MEMORY_MERGE_AFTER:
            self._merged(document_id)

    async def size(self, document_id: str) -> int:
        return sum(len(update) for update in self._updates.get(document_id, ()))

    async def close(self) -> None:
        self._updates.clear()

    def _merged(self, document_id: str) -> bytes | None:
        updates = self._updates.get(document_id)
        if not updates:
            return None
        if len(updates) > 1:
            updates[:] = [merge_updates(*updates)]
        return updates[0]


#: The database file of the SQLite store, inside ``COLLAB_DATA_DIR``.
SQLITE_FILE = "documents.sqlite3"


class _DocumentYStore(SQLiteYStore):
    """One document's rows in the shared database (pycrdt-store keeps every document in one
    file, told apart by ``path``: here the document id).

    Checked against pycrdt-store 0.1.5 and sqlite-anyio 0.2.10; ``tests/test_collab_server.py``
    fails when either of the two work-arounds below stops holding:

    - sqlite-anyio's connections log and swallow every SQLite error (``exception_logger``),
      so a failed ``write`` would return as if it had stored the update: :func:`_raise_errors`
      drops that handler on the connection the store opened.
    - The squash after inactivity applies the old updates to the squashed document only
      when a decompressor is registered, and deletes them either way: the identity
      "compression" below makes it apply them (the rows stay uncompressed).
    """

    def __init__(self, db_path: Path, document_id: str, squash_after: int) -> None:
        super().__init__(document_id, log=log)
        self.db_path = str(db_path)
        self.squash_after_inactivity_of = squash_after
        self.register_compression_callbacks(bytes, bytes)


def _raise_errors(ystore: SQLiteYStore) -> None:
    """Let SQLite errors reach the caller (see :class:`_DocumentYStore`)."""
    connection = getattr(ystore, "_db", None)
    if connection is None or not hasattr(connection, "_exception_handler"):
        raise RuntimeError(
            f"could not open the document database {ystore.db_path} (or pycrdt-store changed:"
            " see server/collab/stores.py)"
        )
    connection._exception_handler = None


@dataclass(eq=False)
class _Handle:
    """One document's open ``SQLiteYStore``, the task that runs it and its bytes."""

    ystore: _DocumentYStore
    runner: asyncio.Task[None]
    users: int = 0
    #: Bytes of the document (known once it was read in this handle's life).
    size: int | None = None


class SQLiteDocumentStore:
    """Documents in one SQLite file under ``directory`` (``COLLAB_STORE=sqlite``, the
    default): a restarted server serves every document as it was.

    pycrdt-store writes each update as one row in its own committed transaction and keeps a
    checkpoint of the whole document every 100 updates, so a document loads from its last
    checkpoint and the rows after it. A document not written for ``squash_after`` seconds
    has its rows squashed into one on its next write. Each open document holds one
    connection; past ``open_documents`` the least recently used is closed. Nothing touches
    the disk before the first document is read or written.
    """

    def __init__(self, directory: Path, *, squash_after: int, open_documents: int) -> None:
        self.path = directory / SQLITE_FILE
        self.squash_after = squash_after
        self.open_documents = open_documents
        self._handles: OrderedDict[str, _Handle] = OrderedDict()
        # pycrdt-store creates the schema when a store starts on a missing file: two
        # starting at once would both try. One at a time.
        self._opening = asyncio.Lock()
        self._closed = False

    async def read(self, document_id: str) -> bytes | None:
        async with self._use(document_id) as handle:
            doc: Doc[Any] = Doc()
            try:
                await handle.ystore.apply_updates(doc)
            except YDocNotFound:
                handle.size = 0
                return None
            update = doc.get_update()
            handle.size = len(update)
            return update

    async def write(self, document_id: str, update: bytes) -> None:
        async with self._use(document_id) as handle:
            await handle.ystore.write(update)
            if handle.size is not None:
                handle.size += len(update)

    async def size(self, document_id: str) -> int:
        async with self._use(document_id) as handle:
            known = handle.size
        if known is not None:
            return known
        update = await self.read(document_id)
        return 0 if update is None else len(update)

    async def close(self) -> None:
        self._closed = True
        handles = list(self._handles.values())
        self._handles.clear()
        await asyncio.gather(*(_stop(handle) for handle in handles))

    @contextlib.asynccontextmanager
    async def _use(self, document_id: str) -> AsyncIterator[_Handle]:
        """The document's handle, kept open while the block runs."""
        if self._closed:
            raise RuntimeError("the document store is closed")
        handle = self._handles.get(document_id)
        if handle is None:
            async with self._opening:
                handle = self._handles.get(document_id)
                if handle is None:
                    handle = await self._open(document_id)
                    self._handles[document_id] = handle
        self._handles.move_to_end(document_id)
        handle.users += 1
        try:
            await self._close_unused()
            yield handle
        finally:
            handle.users -= 1

    async def _open(self, document_id: str) -> _Handle:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        ystore = _DocumentYStore(self.path, document_id, self.squash_after)
        loop = asyncio.get_running_loop()
        handle = _Handle(ystore, loop.create_task(ystore.start()))
        await ystore.started.wait()
        assert ystore.db_initialized is not None
        initialized = loop.create_task(ystore.db_initialized.wait())
        await asyncio.wait({handle.runner, initialized}, return_when=asyncio.FIRST_COMPLETED)
        if not initialized.done():
            initialized.cancel()
            failure = handle.runner.exception() if not handle.runner.cancelled() else None
            raise RuntimeError(f"could not open the document database {self.path}") from failure
        try:
            _raise_errors(ystore)
        except RuntimeError:
            await _stop(handle)
            raise
        return handle

    async def _close_unused(self) -> None:
        """Close the least recently used handles past ``open_documents`` (those in use stay)."""
        extra = len(self._handles) - self.open_documents
        for document_id, handle in list(self._handles.items()):
            if extra <= 0:
                return
            if handle.users == 0:
                del self._handles[document_id]
                extra -= 1
                await _stop(handle)


async def _stop(handle: _Handle) -> None:
    with contextlib.suppress(RuntimeError):  # it stopped already
        await handle.ystore.stop()
    await asyncio.gather(handle.runner, return_exceptions=True)
