"""A session's chunk log, kept compactly: its text and the chunk boundaries.

A chunk as sent is a dict of five fields (about 600 bytes in CPython for a few words of
text). The log keeps instead, for all chunks together, the UTF-8 text in blocks of
:data:`BLOCK_BYTES` (equal blocks do not leave the holes in the heap that one buffer
growing by ``realloc`` does), and in ``array``\\ s each chunk's end offset, its timestamp (from the
first one's) and its metadata's ``tokens`` (PROTOCOL.md: the count a provider reports,
which the demo provider updates on every chunk): 12 bytes a chunk. The rest of the
metadata is kept once per run of chunks that share it. A chunk's payload is built again
when it is read (replay, ``/chunks``), which is rare next to the writes. Once the
session has ended, :meth:`ChunkLog.seal` gives back what the buffers had reserved to grow.

Every log of a process counts its bytes in one :class:`LogBudget`, so the server can
refuse new sessions before the logs outgrow the machine (``MAX_LOG_BYTES``).
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from typing import Any, overload

__all__ = ["ChunkLog", "LogBudget"]

Payload = dict[str, Any]

#: Bytes a chunk costs besides its text: its end offset, its timestamp and its tokens.
PER_CHUNK_BYTES = 4 + 4 + 4
#: The text is kept in ``bytes`` blocks of this size, and a tail that grows to it.
BLOCK_BYTES = 16 * 1024
#: ``tokens`` absent from a chunk's metadata.
NO_TOKENS = -1
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


class LogBudget:
    """The bytes held by every :class:`ChunkLog` of a process, against a limit."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    @property
    def full(self) -> bool:
        return self.used >= self.limit


_MISSING = object()


class ChunkLog(Sequence[Payload]):
    """The chunks of one session, ``seq`` 0 to ``len - 1``; indexing builds payloads."""

    __slots__ = (
        "_blocks",
        "_budget",
        "_ends",
        "_meta_starts",
        "_metas",
        "_size",
        "_stamps",
        "_t0",
        "_tail",
        "_tokens",
        "session_id",
    )

    def __init__(self, session_id: str, budget: LogBudget | None = None) -> None:
        self.session_id = session_id
        self._budget = budget
        self._blocks: list[bytes] = []
        self._tail: bytearray | bytes = bytearray()
        self._size = 0
        self._ends = array("I")
        #: Milliseconds after ``_t0`` (the first chunk's timestamp).
        self._t0: int | None = None
        self._stamps = array("i")
        self._tokens = array("i")
        #: The first ``seq`` of each run of chunks with the same metadata, and that metadata.
        self._meta_starts = array("I")
        self._metas: list[Payload] = []

    # -- writing -------------------------------------------------------------

    def append(self, chunk: Payload) -> int:
        """Log a chunk payload (its ``seq`` must be the next one); its content's size in
        UTF-8 bytes. (Once per chunk: written for as few steps as it takes.)"""
        data = chunk["content"].encode()
        size = len(data)
        tail = self._tail
        if type(tail) is bytes:  # sealed, and yet written to: make it growable again
            tail = self._tail = bytearray(tail)
        tail += data
        if len(tail) >= BLOCK_BYTES:
            while len(tail) >= BLOCK_BYTES:
                self._blocks.append(bytes(tail[:BLOCK_BYTES]))
                del tail[:BLOCK_BYTES]
        end = self._size = self._size + size
        self._ends.append(end)
        stamp: int = chunk["timestamp"]
        t0 = self._t0
        if t0 is None:
            t0 = self._t0 = stamp
        offset = stamp - t0
        self._stamps.append(offset if _INT32_MIN <= offset <= _INT32_MAX else 0)
        metadata: Payload = chunk["metadata"]
        tokens = metadata.get("tokens", NO_TOKENS)
        metas = self._metas
        if type(tokens) is int and _INT32_MIN <= tokens <= _INT32_MAX and tokens != NO_TOKENS:
            self._tokens.append(tokens)
            # Per chunk: the metadata without its count, compared with the run's in C.
            rest = metadata.copy()
            del rest["tokens"]
        else:
            self._tokens.append(NO_TOKENS)
            rest = metadata
        if not metas or rest != metas[-1]:
            self._meta_starts.append(len(self._ends) - 1)
            metas.append(rest)
        budget = self._budget
        if budget is not None:
            budget.used += size + PER_CHUNK_BYTES
        return size

    def seal(self) -> None:
        """No more chunks are expected: keep the buffers at their exact size."""
        if isinstance(self._tail, bytes):
            return
        self._tail = bytes(self._tail)
        self._ends = array("I", self._ends)
        self._stamps = array("i", self._stamps)
        self._tokens = array("i", self._tokens)

    def release(self) -> None:
        """The session is gone: its bytes no longer count against the budget."""
        if self._budget is not None:
            self._budget.used -= self.nbytes
            self._budget = None

    def adopt(self, budget: LogBudget | None) -> None:
        """Count this log against ``budget`` from now on (instead of its current one)."""
        self.release()
        self._budget = budget
        if budget is not None:
            budget.used += self.nbytes

    # -- reading -------------------------------------------------------------

    @property
    def budget(self) -> LogBudget | None:
        return self._budget

    @property
    def nbytes(self) -> int:
        """What the budget counts: the text's bytes and :data:`PER_CHUNK_BYTES` per chunk."""
        return self._size + PER_CHUNK_BYTES * len(self._ends)

    @property
    def text(self) -> str:
        return (b"".join(self._blocks) + self._tail).decode()

    @property
    def chars(self) -> int:
        """The text's length in characters."""
        return len(self.text)

    def content(self, seq: int) -> str:
        start = self._ends[seq - 1] if seq > 0 else 0
        return self._bytes(start, self._ends[seq]).decode()

    def _bytes(self, start: int, end: int) -> bytes:
        """The text's bytes from offset ``start`` to ``end``."""
        blocks = self._blocks
        first, start = divmod(start, BLOCK_BYTES)
        last, end = divmod(end, BLOCK_BYTES)

        def block(index: int) -> bytes | bytearray:
            return blocks[index] if index < len(blocks) else self._tail

        if first == last:
            return bytes(block(first)[start:end])
        return b"".join([block(first)[start:], *blocks[first + 1 : last], block(last)[:end]])

    def __len__(self) -> int:
        return len(self._ends)

    def _payload(self, seq: int, rest: Payload) -> Payload:
        tokens = self._tokens[seq]
        return {
            "content": self.content(seq),
            "timestamp": (self._t0 or 0) + self._stamps[seq],
            "metadata": rest if tokens == NO_TOKENS else {**rest, "tokens": tokens},
            "seq": seq,
            "sessionId": self.session_id,
        }

    def _metadata(self, seq: int) -> Payload:
        return self._metas[bisect_right(self._meta_starts, seq) - 1]

    @overload
    def __getitem__(self, index: int) -> Payload: ...

    @overload
    def __getitem__(self, index: slice) -> list[Payload]: ...

    def __getitem__(self, index: int | slice) -> Payload | list[Payload]:
        if isinstance(index, slice):
            return list(self.iter_from(*index.indices(len(self))[:2]))
        count = len(self)
        if index < 0:
            index += count
        if not 0 <= index < count:
            raise IndexError("chunk log index out of range")
        return self._payload(index, self._metadata(index))

    def iter_from(self, start: int, stop: int | None = None) -> Iterator[Payload]:
        """The payloads of ``seq`` ``start`` up to (not including) ``stop``."""
        stop = len(self) if stop is None else min(stop, len(self))
        if start >= stop:
            return
        run = bisect_right(self._meta_starts, start) - 1
        starts, metas = self._meta_starts, self._metas
        for seq in range(start, stop):
            while run + 1 < len(starts) and starts[run + 1] <= seq:
                run += 1
            yield self._payload(seq, metas[run])

    def __iter__(self) -> Iterator[Payload]:
        return self.iter_from(0)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]
