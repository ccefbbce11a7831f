"""Soak test (issue 12): many concurrent demo sessions for minutes, with viewers that drop
and come back, long-polling viewers and slow readers; nothing may be lost.

    make soak                                   # 500 sessions for 300 s (about 6 minutes)
    .venv/bin/python bench/soak.py --sessions 100 --seconds 60
    SOAK_SESSIONS=200 SOAK_SECONDS=120 make soak

The server runs as its own process (``python -m server``, demo provider at
``DEMO_TOKENS_PER_SECOND=40``, rate limits raised: all the load comes from 127.0.0.1). One
or more load generator processes (this file with ``--worker``) keep ``--sessions`` sessions
running: each slot creates a session, connects its one viewer, starts it with a long
prompt, and starts the next session when it ends. A viewer is, at random, a raw Socket.IO
WebSocket client (the direct path, as socket.io-client and the frontend connect), a
python-socketio ``AsyncClient`` over WebSocket, one on long-polling, or a slow reader (a
raw WebSocket client on a small receive buffer that reads a few messages a second for a
few seconds, then catches up at full speed); ``--drop-fraction`` of them also drop their connection at random
moments and rejoin with ``lastSeq`` and ``epoch``. At the end each slot's running session
is cancelled, and every viewer's seqs and text are compared with ``GET
/api/streaming/{id}``.

Reported: chunks lost, duplicated or out of order (exit status 1 unless all 0), errors by
code, chunk latency (receive time minus the chunk's ``timestamp``) of the well-behaved
viewers, reconnects, and the server's RSS sampled every second (``soak.png``, a flat-memory
verdict: the median RSS of the last third of the run against the middle third). Figures go
to ``soak.json``; a markdown section for ``bench/RESULTS.md`` is printed on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import struct
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
import socketio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.run import cpu_seconds, ensure_matplotlib

SCRIPT = Path(__file__).resolve()
BENCH = SCRIPT.parent
ROOT = BENCH.parent
READY = "Streaming server on "

Kind = Literal["ws", "sio-ws", "polling", "slow"]
KINDS: tuple[Kind, ...] = ("ws", "sio-ws", "polling", "slow")
KIND_LABELS: dict[Kind, str] = {
    "ws": "WebSocket, raw Socket.IO client (direct path)",
    "sio-ws": "WebSocket, python-socketio AsyncClient",
    "polling": "long-polling, python-socketio AsyncClient",
    "slow": "slow reader, raw WebSocket client",
}
#: The memory is called flat when the last third's median RSS is at most this much above
#: the middle third's.
FLAT_GROWTH_PCT = 5.0
#: Latency histograms: 1 ms buckets up to this, one overflow bucket above.
LATENCY_CAP_MS = 60_000
#: Finished sessions stay this long (the default is an hour): the RSS then shows the
#: working set of the live sessions, not an hour of finished logs piling up.
SESSION_TTL = 60
#: Server log lines that are not a problem: python-engineio logs this (once at ERROR, then
#: at INFO) when a long-polling client's last poll arrives after its own disconnect.
BENIGN_LOG_LINES = (re.compile(r"ERROR engineio\.server: 'Session is disconnected'"),)
#: The slow reader's receive buffer (the kernel doubles it) and its stream buffer.
SLOW_RCVBUF = 4096
SLOW_STREAM_LIMIT = 4096
PROMPT_WORDS = [
    "latency",
    "throughput",
    "backpressure",
    "websocket",
    "polling",
    "reconnect",
    "sequence",
    "epoch",
    "snapshot",
    "replay",
    "session",
    "viewer",
    "chunk",
    "token",
    "provider",
    "coalescing",
    "buffer",
    "socket",
    "memory",
    "heap",
    "garbage",
    "collector",
    "event",
    "loop",
    "timer",
    "queue",
    "log",
    "journal",
    "cluster",
    "redis",
    "nginx",
    "proxy",
    "editor",
    "document",
    "paragraph",
    "heading",
    "markdown",
    "cursor",
    "selection",
    "rendering",
]


def log(*parts: object) -> None:
    print("[soak]", *parts, file=sys.stderr, flush=True)


def env_number(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


# ---- configuration ----------------------------------------------------------------------


@dataclass(frozen=True)
class SoakConfig:
    """Everything one run depends on (passed to the workers as JSON)."""

    sessions: int = 500
    seconds: float = 300.0
    tokens_per_second: float = 40.0
    #: Nominal length of a session; the first session of each slot runs a random part of
    #: it (so that completions, and the log bytes held, are spread evenly from the start),
    #: the next ones 0.75x to 1.25x of it.
    session_seconds: float = 90.0
    #: The slots' first sessions start spread over this many seconds.
    ramp_seconds: float = 10.0
    drop_fraction: float = 0.10
    polling_fraction: float = 0.10
    slow_fraction: float = 0.05
    sio_ws_fraction: float = 0.10
    #: A dropping viewer drops this many seconds (min, max) after each (re)join ...
    drop_after: tuple[float, float] = (5.0, 30.0)
    #: ... and comes back after this many.
    reconnect_after: tuple[float, float] = (0.2, 3.0)
    #: Slow readers alternate a slow phase (``slow_rate`` messages a second, far below what
    #: the stream sends) with a phase of reading at full speed, lengths (min, max) seconds.
    slow_rate: float = 5.0
    slow_phase: tuple[float, float] = (3.0, 8.0)
    fast_phase: tuple[float, float] = (2.0, 4.0)
    #: After the end, how long the viewers of the cancelled sessions have to finish.
    finish_timeout: float = 60.0
    workers: int = 2
    seed: int = 12
    pin: bool = False
    #: Offer permessage-deflate, as browsers do (the server declines it on the direct path).
    deflate: bool = True

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SoakConfig:
        values = dict(data)
        for key in ("drop_after", "reconnect_after", "slow_phase", "fast_phase"):
            low, high = values[key]
            values[key] = (float(low), float(high))
        return cls(**values)

    def server_env(self) -> dict[str, str]:
        """Settings of the server process besides the port: the pace, and the per-address
        and per-user limits raised (every viewer and request comes from 127.0.0.1)."""
        n = max(self.sessions, 1)
        longest = int(self.session_seconds * 1.25 * self.tokens_per_second) + 100
        return {
            "DEMO_TOKENS_PER_SECOND": f"{self.tokens_per_second:g}",
            "MAX_TOKENS_LIMIT": str(max(32_000, longest)),
            "SESSION_RATE_PER_ADDRESS": str(max(1000, 4 * n)),
            "SESSION_BURST_PER_ADDRESS": str(max(1000, 4 * n)),
            "SESSION_RATE_PER_USER": "100",
            "SESSION_BURST_PER_USER": "100",
            "MAX_CONNECTIONS_PER_ADDRESS": str(max(1000, 8 * n)),
            "HANDSHAKE_RATE_PER_ADDRESS": str(max(1000, 4 * n)),
            "HANDSHAKE_BURST_PER_ADDRESS": str(max(1000, 4 * n)),
            "SOCKET_MESSAGE_RATE": "1000",
            "SESSION_TTL": str(SESSION_TTL),
            "SWEEP_INTERVAL": "5",
            "LOG_LEVEL": "warning",
            "SHUTDOWN_TIMEOUT": "2",
        }


def _kind_for(rng: random.Random, config: SoakConfig) -> Kind:
    shares: tuple[tuple[Kind, float], ...] = (
        ("polling", config.polling_fraction),
        ("slow", config.slow_fraction),
        ("sio-ws", config.sio_ws_fraction),
    )
    x = rng.random()
    for kind, share in shares:
        if x < share:
            return kind
        x -= share
    return "ws"


# ---- what one viewer received -----------------------------------------------------------


class Track:
    """The chunks one viewer received over all its connections, checked as they come."""

    __slots__ = ("contiguous", "duplicated", "jumps", "max_seq", "out_of_order", "parts", "received", "seen")

    def __init__(self) -> None:
        self.seen = bytearray()
        self.parts: list[str] = []
        self.received = 0
        self.max_seq = -1
        #: Every seq up to this one was received (what a reconnect sends as ``lastSeq``).
        self.contiguous = -1
        self.duplicated = 0
        self.out_of_order = 0
        #: Chunks whose seq was past the next expected one (a gap at that moment).
        self.jumps = 0

    def add(self, seq: int, content: str) -> None:
        self.received += 1
        if seq < 0:
            self.out_of_order += 1
            return
        if seq >= len(self.seen):
            self.seen.extend(bytes(seq + 1 - len(self.seen) + 256))
        if self.seen[seq]:
            self.duplicated += 1
            return
        self.seen[seq] = 1
        self.parts.append(content)
        if seq < self.max_seq:
            self.out_of_order += 1
        elif seq > self.max_seq + 1:
            self.jumps += 1
        self.max_seq = max(self.max_seq, seq)
        while self.contiguous + 1 < len(self.seen) and self.seen[self.contiguous + 1]:
            self.contiguous += 1

    def distinct_below(self, count: int) -> int:
        return sum(self.seen[:count])

    @property
    def text(self) -> str:
        return "".join(self.parts)


class Histogram:
    """Counts per whole millisecond (``LATENCY_CAP_MS`` and above in the last bucket)."""

    def __init__(self, counts: Iterable[int] | None = None) -> None:
        self.counts = list(counts) if counts is not None else [0] * (LATENCY_CAP_MS + 1)

    def add(self, ms: float) -> None:
        self.counts[min(max(int(ms), 0), LATENCY_CAP_MS)] += 1

    def merge(self, other: Histogram) -> None:
        for i, count in enumerate(other.counts):
            if count:
                self.counts[i] += count

    @property
    def total(self) -> int:
        return sum(self.counts)

    def quantile(self, q: float) -> int | None:
        total = self.total
        if total == 0:
            return None
        rank = max(1, int(q * total + 0.999999))
        seen = 0
        for ms, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                return ms
        return LATENCY_CAP_MS

    def summary(self) -> dict[str, int | None]:
        top = max((ms for ms, count in enumerate(self.counts) if count), default=None)
        return {
            "samples": self.total,
            "p50": self.quantile(0.50),
            "p90": self.quantile(0.90),
            "p99": self.quantile(0.99),
            "max": top,
        }

    def to_sparse(self) -> dict[str, int]:
        return {str(ms): count for ms, count in enumerate(self.counts) if count}

    @classmethod
    def from_sparse(cls, data: dict[str, int]) -> Histogram:
        histogram = cls()
        for ms, count in data.items():
            histogram.counts[int(ms)] += count
        return histogram


@dataclass
class WorkerStats:
    """What one load generator process saw; summed over the workers by the parent."""

    sessions_started: int = 0
    sessions_completed: int = 0
    sessions_cancelled: int = 0
    sessions_failed: int = 0
    sessions_unverified: int = 0
    viewers: Counter[str] = field(default_factory=Counter)
    dropping_viewers: int = 0
    drops: Counter[str] = field(default_factory=Counter)
    reconnects: Counter[str] = field(default_factory=Counter)
    server_closes: Counter[str] = field(default_factory=Counter)
    chunks: int = 0
    chunks_expected: int = 0
    chars: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    extra: int = 0
    text_mismatches: int = 0
    total_mismatches: int = 0
    resets: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    latency: dict[str, Histogram] = field(default_factory=dict)
    cpu_seconds: float = 0.0

    def error(self, code: str, detail: str | None = None) -> None:
        self.errors[code] += 1
        if detail is not None and len(self.failures) < 50:
            self.failures.append(f"{code}: {detail}")

    def histogram(self, group: str) -> Histogram:
        if group not in self.latency:
            self.latency[group] = Histogram()
        return self.latency[group]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "latency":
                value = {group: h.to_sparse() for group, h in value.items()}
            elif isinstance(value, Counter):
                value = dict(value)
            out[f.name] = value
        return out

    def merge_json(self, data: dict[str, Any]) -> None:
        for f in dataclasses.fields(self):
            value = data.get(f.name)
            if value is None:
                continue
            mine = getattr(self, f.name)
            if f.name == "latency":
                for group, sparse in value.items():
                    self.histogram(group).merge(Histogram.from_sparse(sparse))
            elif isinstance(mine, Counter):
                mine.update(value)
            elif isinstance(mine, list):
                mine.extend(value)
            else:
                setattr(self, f.name, mine + value)


# ---- Engine.IO / Socket.IO text packets ------------------------------------------------


class Viewer(ABC):
    """One session's viewer: joins ``/stream/<id>``, keeps what it receives in a
    :class:`Track`, and (when ``dropping``) drops its connection at random moments and
    rejoins with ``lastSeq`` and ``epoch``. Subclasses provide one connection's life."""

    def __init__(
        self,
        kind: Kind,
        url: str,
        session_id: str,
        config: SoakConfig,
        rng: random.Random,
        stats: WorkerStats,
        dropping: bool,
    ) -> None:
        self.kind = kind
        self.url = url
        self.session_id = session_id
        self.namespace = f"/stream/{session_id}"
        self.config = config
        self.rng = rng
        self.stats = stats
        self.dropping = dropping
        self.track = Track()
        self.epoch: str | None = None
        self.joined = asyncio.Event()
        self.finished = asyncio.Event()
        self.end_event: str | None = None
        self.end_payload: dict[str, Any] = {}
        self.closing = False
        #: Set at the end of the run: a slow reader then reads what is left at full speed.
        self.draining = False
        #: The server no longer knows the session: rejoining is pointless.
        self.gone = False
        group = {"ws": "websocket", "sio-ws": "websocket", "polling": "polling", "slow": "slow"}[kind]
        #: Latency is measured for viewers that never drop (a rejoin replays old chunks).
        self.latency = None if dropping else stats.histogram(group)
        self._event_prefix = f"42{self.namespace},"

    def auth(self) -> dict[str, Any]:
        auth: dict[str, Any] = {}
        if self.track.contiguous >= 0:
            auth["lastSeq"] = self.track.contiguous
        if self.epoch is not None:
            auth["epoch"] = self.epoch
        return auth

    def on_event(self, event: str, payload: Any) -> None:
        if not isinstance(payload, dict):
            self.stats.error(f"bad-payload:{event}", f"{self.session_id}: {payload!r}")
            return
        if event == "chunk":
            now = time.time() * 1000
            self.track.add(int(payload["seq"]), str(payload["content"]))
            if self.latency is not None:
                self.latency.add(now - float(payload["timestamp"]))
        elif event == "stream-state":
            epoch = payload.get("epoch")
            if isinstance(epoch, str):
                self.epoch = epoch
        elif event == "stream-reset":
            # Not expected in one process (its epoch never changes); do what a client must.
            self.stats.resets += 1
            self.epoch = str(payload["epoch"])
            self.track = Track()
        elif event in ("complete", "stream-error"):
            if not self.finished.is_set():
                self.end_event = event
                self.end_payload = payload
                self.finished.set()
        else:
            self.stats.error(f"unexpected-event:{event}", self.session_id)

    def on_text(self, data: str) -> str | None:
        """One Engine.IO packet of a raw client: ``"pong"`` to answer a ping, ``"closed"``
        when the server ends the namespace or the connection, else ``None``."""
        if data.startswith(self._event_prefix):
            event, payload = json.loads(data[len(self._event_prefix) :])
            self.on_event(str(event), payload)
        elif data == "2":
            return "pong"
        elif data.startswith("40" + self.namespace):
            self.joined.set()
        elif data.startswith("44" + self.namespace):
            message = _message(data[len(self.namespace) + 3 :])
            self.stats.error(f"connect_error:{message}", self.session_id)
            self.gone = "not found" in message
            return "closed"
        elif data.startswith("41" + self.namespace) or data == "1":
            return "closed"
        return None

    def drop_deadline(self) -> float | None:
        if not self.dropping:
            return None
        return asyncio.get_running_loop().time() + self.rng.uniform(*self.config.drop_after)

    @abstractmethod
    async def connection(self) -> str:
        """Connect with :meth:`auth`, receive until the session ends (``"finished"``), the
        server closes (``"server-closed"``) or the drop deadline (``"dropped"``)."""

    async def run(self) -> None:
        failures = 0
        #: Server closes in a row with no new chunk in between.
        fruitless = 0
        while not self.finished.is_set() and not self.closing and not self.gone:
            before = self.track.contiguous
            try:
                outcome = await self.connection()
            except (
                aiohttp.ClientError,
                OSError,
                TimeoutError,
                ConnectionError,
                socketio.exceptions.ConnectionError,
            ) as exc:
                failures += 1
                self.stats.error(
                    f"connect-failed:{self.kind}:{type(exc).__name__}", f"{self.session_id}: {exc}"
                )
                if failures >= 5:
                    return
                outcome = "failed"
            if self.finished.is_set() or self.closing:
                return
            if outcome == "dropped":
                self.stats.drops[self.kind] += 1
                await asyncio.sleep(self.rng.uniform(*self.config.reconnect_after))
            elif outcome == "server-closed":
                self.stats.server_closes[self.kind] += 1
                fruitless = fruitless + 1 if self.track.contiguous == before else 0
                if self.gone or fruitless >= 10:
                    self.stats.error(f"gave-up:{self.kind}", self.session_id)
                    return
                await asyncio.sleep(self.rng.uniform(0.1, 0.5))
            else:
                await asyncio.sleep(1.0)
            self.stats.reconnects[self.kind] += 1


def _message(body: str) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body[:80]
    return str(data.get("message", data)) if isinstance(data, dict) else str(data)[:80]


def _ws_url(url: str) -> str:
    return url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"


class RawViewer(Viewer):
    """The direct path, as socket.io-client with ``transports: ['websocket']`` speaks it,
    on aiohttp's WebSocket client."""

    def __init__(self, http: aiohttp.ClientSession, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.http = http

    async def connection(self) -> str:
        ws = await self.http.ws_connect(
            _ws_url(self.url), compress=15 if self.config.deflate else 0, max_msg_size=0, autoping=True
        )
        try:
            await ws.send_str(f"40{self.namespace}," + json.dumps(self.auth()))
            drop_at = self.drop_deadline()
            try:
                async with asyncio.timeout_at(drop_at):
                    while True:
                        msg = await ws.receive()
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            return "server-closed"
                        action = self.on_text(msg.data)
                        if action == "pong":
                            await ws.send_str("3")
                        elif action == "closed":
                            return "server-closed"
                        if self.finished.is_set():
                            await ws.send_str(f"41{self.namespace},")
                            return "finished"
            except TimeoutError:
                style = self.rng.choice(("abort", "close", "leave"))
                if style == "abort":
                    transport = ws.get_extra_info("socket")
                    if isinstance(transport, socket.socket):
                        with contextlib.suppress(OSError):
                            transport.shutdown(socket.SHUT_RDWR)
                elif style == "leave":
                    with contextlib.suppress(ConnectionError, aiohttp.ClientError):
                        await ws.send_str(f"41{self.namespace},")
                return "dropped"
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 5)


class SioViewer(Viewer):
    """python-socketio's ``AsyncClient`` (its own reconnection off: a rejoin must carry the
    current ``lastSeq``) on WebSocket or long-polling."""

    async def connection(self) -> str:
        transport = "polling" if self.kind == "polling" else "websocket"
        http = aiohttp.ClientSession()
        client = socketio.AsyncClient(reconnection=False, http_session=http)
        lost = asyncio.Event()
        #: Cleared when this connection is dropped: what its last poll still brings in is
        #: not read (the rejoin's replay has it), as with a client whose network went away.
        active = [True]

        for event in ("chunk", "stream-state", "stream-reset", "snapshot", "complete", "stream-error"):

            async def handler(payload: Any, event: str = event) -> None:
                if active[0]:
                    self.on_event(event, payload)

            client.on(event, handler, namespace=self.namespace)

        async def on_disconnect(*args: Any) -> None:
            lost.set()

        client.on("disconnect", on_disconnect, namespace=self.namespace)
        try:
            await client.connect(
                self.url,
                namespaces=[self.namespace],
                transports=[transport],
                auth=self.auth(),
                wait_timeout=30,
            )
            self.joined.set()
            drop_at = self.drop_deadline()
            finished = asyncio.ensure_future(self.finished.wait())
            disconnected = asyncio.ensure_future(lost.wait())
            try:
                timeout = None if drop_at is None else max(drop_at - asyncio.get_running_loop().time(), 0)
                await asyncio.wait(
                    (finished, disconnected), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                finished.cancel()
                disconnected.cancel()
            if self.finished.is_set():
                return "finished"
            active[0] = False
            if lost.is_set():
                return "server-closed"
            if self.rng.random() < 0.5:
                await client.eio.disconnect(abort=True)
            return "dropped"
        finally:
            active[0] = False
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), 5)
            await http.close()


class SlowViewer(Viewer):
    """A raw RFC 6455 client on a small receive buffer that reads ``slow_rate`` messages a
    second for a few seconds, then catches up at full speed: the server's flow control
    (holding the session's output, coalescing, dropping a stalled viewer that then
    rejoins) is what keeps it whole."""

    async def connection(self) -> str:
        loop = asyncio.get_running_loop()
        host, port = _host_port(self.url)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (host, port)), 30)
        except BaseException:
            sock.close()
            raise
        reader, writer = await asyncio.open_connection(sock=sock, limit=SLOW_STREAM_LIMIT)
        try:
            await _handshake(reader, writer, host, port)
            writer.write(_frame(0x1, f"40{self.namespace},{json.dumps(self.auth())}".encode()))
            drop_at = self.drop_deadline()
            slow = True
            phase_end = loop.time() + self.rng.uniform(*self.config.slow_phase)
            try:
                async with asyncio.timeout_at(drop_at):
                    while True:
                        message = await _read_message(reader, writer)
                        if message is None:
                            return "server-closed"
                        action = self.on_text(message)
                        if action == "pong":
                            writer.write(_frame(0x1, b"3"))
                        elif action == "closed":
                            return "server-closed"
                        if self.finished.is_set():
                            writer.write(_frame(0x1, f"41{self.namespace},".encode()))
                            return "finished"
                        # Pacing of the slow reader (not synchronisation).
                        if loop.time() >= phase_end:
                            slow = not slow
                            phase = self.config.slow_phase if slow else self.config.fast_phase
                            phase_end = loop.time() + self.rng.uniform(*phase)
                        if slow and not self.draining:
                            await asyncio.sleep(1 / self.config.slow_rate)
            except TimeoutError:
                if self.rng.random() < 0.5:
                    writer.transport.abort()
                return "dropped"
        finally:
            with contextlib.suppress(Exception):
                if not writer.transport.is_closing():
                    writer.write(_frame(0x8, struct.pack("!H", 1000)))
                writer.close()
                await asyncio.wait_for(writer.wait_closed(), 5)


def _host_port(url: str) -> tuple[str, int]:
    match = re.match(r"https?://([^:/]+):(\d+)", url)
    if match is None:
        raise ValueError(f"not a host:port URL: {url}")
    return match.group(1), int(match.group(2))


async def _handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, port: int
) -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
            f"Host: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    if not head.startswith(b"HTTP/1.1 101"):
        status = head.split(b"\r\n", 1)[0].decode(errors="replace")
        raise ConnectionError(f"WebSocket upgrade refused: {status}")


def _frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    mask = os.urandom(4)
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "big")).to_bytes(
        n, "big"
    )
    return header + mask + masked


async def _read_message(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str | None:
    """The next text message (fragments joined), answering pings; ``None`` at the close."""
    parts: list[bytes] = []
    while True:
        try:
            b0, b1 = await reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await reader.readexactly(8))
            mask = await reader.readexactly(4) if b1 & 0x80 else b""
            data = await reader.readexactly(n)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        if mask:
            data = bytes(b ^ mask[i & 3] for i, b in enumerate(data))
        opcode = b0 & 0x0F
        if opcode == 0x8:
            return None
        if opcode == 0x9:
            writer.write(_frame(0xA, data))
            continue
        if opcode in (0x1, 0x0):
            parts.append(data)
            if b0 & 0x80:
                return b"".join(parts).decode()


# ---- the load generator (one process) ---------------------------------------------------


class Worker:
    """Keeps its share of the slots busy until the deadline, then cancels and verifies."""

    def __init__(self, config: SoakConfig, url: str, index: int, start_at: float) -> None:
        self.config = config
        self.url = url
        self.index = index
        self.start_at = start_at
        self.deadline = start_at + config.seconds
        self.stats = WorkerStats()
        self.live = 0
        self.http: aiohttp.ClientSession | None = None

    def wall_to_loop(self, wall: float) -> float:
        return asyncio.get_running_loop().time() + (wall - time.time())

    async def request(self, method: str, path: str, route: str, body: Any = None) -> tuple[int, Any]:
        assert self.http is not None
        async with self.http.request(method, self.url + path, json=body) as resp:
            data = await resp.json(content_type=None)
            if resp.status >= 400 and not (route == "cancel" and resp.status == 409):
                self.stats.error(f"http:{route}:{resp.status}", f"{path}: {data}")
            return resp.status, data

    async def run(self) -> WorkerStats:
        slots = range(self.index, self.config.sessions, self.config.workers)
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        async with aiohttp.ClientSession(connector=connector) as http:
            self.http = http
            await asyncio.sleep(max(self.start_at - time.time(), 0))
            progress = asyncio.ensure_future(self.report_progress())
            try:
                await asyncio.gather(*(self.run_slot(slot) for slot in slots))
            finally:
                progress.cancel()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.stats.cpu_seconds = round(usage.ru_utime + usage.ru_stime, 2)
        return self.stats

    async def report_progress(self) -> None:
        while True:
            await asyncio.sleep(10)  # pacing of the progress lines
            s = self.stats
            emit(
                {
                    "type": "progress",
                    "worker": self.index,
                    "t": round(time.time() - self.start_at, 1),
                    "live": self.live,
                    "started": s.sessions_started,
                    "chunks": s.chunks,
                    "reconnects": sum(s.reconnects.values()),
                    "errors": sum(s.errors.values()),
                }
            )

    async def run_slot(self, slot: int) -> None:
        rng = random.Random(self.config.seed * 1_000_003 + slot)
        await asyncio.sleep(rng.uniform(0, self.config.ramp_seconds))  # the ramp (pacing)
        generation = 0
        while time.time() < self.deadline:
            if generation == 0:
                seconds = self.config.session_seconds * rng.uniform(0.02, 1.0)
            else:
                seconds = self.config.session_seconds * rng.uniform(0.75, 1.25)
            tokens = max(10, int(seconds * self.config.tokens_per_second))
            try:
                ok = await self.run_session(slot, generation, tokens, rng)
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                self.stats.error(f"slot:{type(exc).__name__}", f"slot {slot}: {exc}")
                ok = False
            if not ok:
                await asyncio.sleep(1.0)  # back off before the next try (pacing)
            generation += 1

    async def run_session(self, slot: int, generation: int, tokens: int, rng: random.Random) -> bool:
        config = self.config
        status, created = await self.request(
            "POST",
            "/api/streaming/session",
            "create",
            {"userId": f"soak-{slot}", "config": {"provider": "demo", "maxTokens": tokens}},
        )
        if status != 200:
            return False
        session_id = str(created["sessionId"])
        kind = _kind_for(rng, config)
        dropping = rng.random() < config.drop_fraction
        stats = self.stats
        # The viewer's own generator: the slot's sequence of kinds does not depend on timing.
        args = (kind, self.url, session_id, config, random.Random(rng.random()), stats, dropping)
        viewer: Viewer
        if kind == "ws":
            assert self.http is not None
            viewer = RawViewer(self.http, *args)
        elif kind == "slow":
            viewer = SlowViewer(*args)
        else:
            viewer = SioViewer(*args)
        stats.viewers[kind] += 1
        stats.dropping_viewers += dropping
        task = asyncio.ensure_future(viewer.run())
        self.live += 1
        try:
            try:
                await asyncio.wait_for(viewer.joined.wait(), 30)
            except TimeoutError:
                stats.error(f"join-timeout:{kind}", session_id)
            prompt = _prompt(rng, slot, generation)
            status, _ = await self.request(
                "POST", f"/api/streaming/{session_id}/start", "start", {"prompt": prompt}
            )
            if status != 200:
                viewer.closing = True
                return False
            stats.sessions_started += 1
            finished = asyncio.ensure_future(viewer.finished.wait())
            ended = asyncio.ensure_future(task)  # the viewer gave up
            timeout = max(self.wall_to_loop(self.deadline) - asyncio.get_running_loop().time(), 0)
            await asyncio.wait((finished, ended), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            viewer.draining = True
            if not viewer.finished.is_set() and not task.done():
                # The end of the run: cancel, then the viewer gets the rest and `complete`.
                await self.request("POST", f"/api/streaming/{session_id}/cancel", "cancel")
                await asyncio.wait(
                    (finished, ended), timeout=config.finish_timeout, return_when=asyncio.FIRST_COMPLETED
                )
            finished.cancel()
            await self.verify(viewer)
            return True
        finally:
            self.live -= 1
            viewer.closing = True
            if not task.done():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(task), 10)
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            elif not task.cancelled() and task.exception() is not None:
                exc = task.exception()
                stats.error(f"viewer:{type(exc).__name__}", f"{viewer.session_id}: {exc!r}")

    async def verify(self, viewer: Viewer) -> None:
        stats = self.stats
        track = viewer.track
        sid = viewer.session_id
        stats.chunks += track.received
        stats.chars += sum(len(p) for p in track.parts)
        status, body = await self.request("GET", f"/api/streaming/{sid}", "status")
        if status != 200 or not viewer.finished.is_set():
            stats.sessions_unverified += 1
            stats.failures.append(
                f"{sid} ({viewer.kind}): unverified: finished={viewer.finished.is_set()} status={status}"
            )
            return
        count = int(body["chunks"])
        stats.chunks_expected += count
        lost = count - track.distinct_below(count)
        extra = sum(track.seen[count:])
        problems: list[str] = []
        if lost:
            stats.lost += lost
            problems.append(f"{lost} lost")
        if extra:
            stats.extra += extra
            problems.append(f"{extra} past the end")
        if track.duplicated:
            stats.duplicated += track.duplicated
            problems.append(f"{track.duplicated} duplicated")
        if track.out_of_order:
            stats.out_of_order += track.out_of_order
            problems.append(f"{track.out_of_order} out of order")
        if track.text != body["text"]:
            stats.text_mismatches += 1
            problems.append("text differs")
        if viewer.end_event == "complete":
            if int(viewer.end_payload.get("totalChunks", -1)) != count:
                stats.total_mismatches += 1
                problems.append(f"complete.totalChunks {viewer.end_payload.get('totalChunks')} != {count}")
            if viewer.end_payload.get("finishReason") == "cancelled":
                stats.sessions_cancelled += 1
            else:
                stats.sessions_completed += 1
        else:
            stats.sessions_failed += 1
            stats.error(f"stream-error:{viewer.end_payload.get('code')}", f"{sid}: {viewer.end_payload}")
        if problems and len(stats.failures) < 50:
            stats.failures.append(
                f"{sid} ({viewer.kind}{', dropping' if viewer.dropping else ''}): " + ", ".join(problems)
            )


def _prompt(rng: random.Random, slot: int, generation: int) -> str:
    """A long prompt (about 2,000 characters): its first words are the demo's topic."""
    topic = " ".join(rng.sample(PROMPT_WORDS, 3))
    context = " ".join(rng.choice(PROMPT_WORDS) for _ in range(220))
    return f"Explain {topic} for soak slot {slot} run {generation}. Context: {context}."


def emit(data: dict[str, Any]) -> None:
    print(json.dumps(data), flush=True)


def worker_main(spec: str) -> int:
    # python-engineio's client refuses a long-polling response of more than 16 packets
    # ("Too many packets in payload", miguelgrinberg/python-engineio#142), which a replay
    # or a late poll gives; socket.io-client has no such limit.
    from engineio.payload import Payload

    Payload.max_decode_packets = 1_000_000
    data = json.loads(spec)
    config = SoakConfig.from_json(data["config"])
    worker = Worker(config, str(data["url"]), int(data["index"]), float(data["startAt"]))
    try:
        import uvloop

        runner: Callable[[Any], Any] = uvloop.run
    except ImportError:
        runner = asyncio.run
    stats: WorkerStats = runner(worker.run())
    emit({"type": "result", "worker": worker.index, "stats": stats.to_json()})
    return 0


# ---- the parent: server process, workers, sampling, report ------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def raise_nofile(target: int = 65536) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, target), hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def proc_status(pid: int) -> dict[str, int]:
    """``VmRSS``, ``VmHWM`` (KiB) of a process; empty once it is gone."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0])
    return out


def _pin(core: int, config: SoakConfig) -> list[str]:
    return ["taskset", "-c", str(core)] if config.pin and shutil.which("taskset") else []


class ServerProcess:
    """``python -m server`` with the soak's settings, ready once it prints that it listens."""

    def __init__(self, config: SoakConfig) -> None:
        self.config = config
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
        self.env.update(config.server_env(), PORT=str(self.port), HOST="127.0.0.1", PYTHONPATH=str(ROOT))
        self.proc: asyncio.subprocess.Process | None = None
        self.tail: deque[str] = deque(maxlen=200)
        self.problems: Counter[str] = Counter()
        self._ready = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._workdir = tempfile.TemporaryDirectory(prefix="soak-")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, startup_timeout: float = 30.0) -> None:
        # A scratch cwd: a developer's .env does not change the run.
        self.proc = await asyncio.create_subprocess_exec(
            *_pin(0, self.config),
            sys.executable,
            "-m",
            "server",
            "--provider",
            "demo",
            cwd=self._workdir.name,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self._reader = asyncio.ensure_future(self._read())
        try:
            await asyncio.wait_for(self._ready.wait(), startup_timeout)
        except TimeoutError:
            await self.stop()
            raise RuntimeError("the server did not start:\n" + "".join(self.tail)) from None
        if self.proc.returncode is not None:
            raise RuntimeError(f"the server exited with {self.proc.returncode}:\n" + "".join(self.tail))

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode(errors="replace")
            self.tail.append(line)
            if line.startswith(READY):
                self._ready.set()
            elif any(pattern.search(line) for pattern in BENIGN_LOG_LINES):
                self.problems["benign log line"] += 1
            elif "Traceback" in line:
                self.problems["traceback"] += 1
            elif re.search(r"\b(ERROR|CRITICAL)\b", line):
                self.problems["error log line"] += 1
            elif re.search(r"\bWARNING\b", line):
                self.problems["warning log line"] += 1
        self._ready.set()

    async def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)
        self._workdir.cleanup()
        return self.proc.returncode


@dataclass
class Sample:
    t: float
    rss_kib: int
    cpu: float | None
    streaming: int | None = None


async def sample_server(
    server: ServerProcess, start_at: float, samples: list[Sample], stop: asyncio.Event
) -> None:
    """RSS every second from /proc/PID/status; every 5 s the streaming sessions from /metrics."""
    async with aiohttp.ClientSession() as http:
        tick = 0
        while not stop.is_set():
            status = proc_status(server.pid)
            if "VmRSS" in status:
                sample = Sample(round(time.time() - start_at, 2), status["VmRSS"], cpu_seconds(server.pid))
                if tick % 5 == 0:
                    sample.streaming = await _streaming_sessions(http, server.url)
                samples.append(sample)
            tick += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)  # one sample a second (pacing)


async def _streaming_sessions(http: aiohttp.ClientSession, url: str) -> int | None:
    try:
        async with http.get(url + "/metrics", timeout=aiohttp.ClientTimeout(total=3)) as resp:
            text = await resp.text()
    except (aiohttp.ClientError, TimeoutError):
        return None
    match = re.search(r'^streaming_sessions\{state="streaming"\} ([0-9.e+]+)$', text, re.M)
    return int(float(match.group(1))) if match else 0


async def run_worker(
    config: SoakConfig, url: str, index: int, start_at: float, progress: dict[int, dict[str, Any]]
) -> dict[str, Any]:
    spec = json.dumps({"config": config.to_json(), "url": url, "index": index, "startAt": start_at})
    proc = await asyncio.create_subprocess_exec(
        *_pin(1, config),
        sys.executable,
        str(SCRIPT),
        "--worker",
        spec,
        stdout=asyncio.subprocess.PIPE,
        limit=1 << 24,
    )
    assert proc.stdout is not None
    result: dict[str, Any] | None = None
    async for raw in proc.stdout:
        data = json.loads(raw)
        if data.get("type") == "progress":
            progress[index] = data
            if index == config.workers - 1 or config.workers == 1:
                live = sum(p.get("live", 0) for p in progress.values())
                log(
                    f"t={data['t']:.0f}s live sessions={live} "
                    f"started={sum(p.get('started', 0) for p in progress.values())} "
                    f"reconnects={sum(p.get('reconnects', 0) for p in progress.values())} "
                    f"errors={sum(p.get('errors', 0) for p in progress.values())}"
                )
        elif data.get("type") == "result":
            result = data["stats"]
    code = await proc.wait()
    if result is None:
        raise RuntimeError(f"load generator {index} exited with {code} and no result")
    return result


async def run_soak(config: SoakConfig) -> dict[str, Any]:
    """One run: the figures (what ``soak.json`` holds)."""
    nofile = raise_nofile()
    server = ServerProcess(config)
    await server.start()
    log(
        f"server pid {server.pid} on {server.url}; {config.sessions} sessions for "
        f"{config.seconds:g} s, {config.workers} load generator(s)"
    )
    start_at = time.time() + 2.0  # the workers import their modules meanwhile
    samples: list[Sample] = []
    stop = asyncio.Event()
    sampler = asyncio.ensure_future(sample_server(server, start_at, samples, stop))
    progress: dict[int, dict[str, Any]] = {}
    stats = WorkerStats()
    cpu0 = cpu_seconds(server.pid)
    hwm = 0
    try:
        results = await asyncio.gather(
            *(run_worker(config, server.url, i, start_at, progress) for i in range(config.workers))
        )
        for result in results:
            stats.merge_json(result)
        ended_at = time.time() - start_at
        cpu1 = cpu_seconds(server.pid)
        hwm = proc_status(server.pid).get("VmHWM", 0)
        alive = server.proc is not None and server.proc.returncode is None
    finally:
        stop.set()
        await sampler
        exit_code = await server.stop()
    figures = summarize(config, stats, samples, ended_at, (cpu1 or 0) - (cpu0 or 0), hwm, server)
    figures["server"]["aliveAtEnd"] = alive
    figures["server"]["exitCode"] = exit_code
    figures["machine"]["nofile"] = nofile
    return figures


def summarize(
    config: SoakConfig,
    stats: WorkerStats,
    samples: list[Sample],
    ended_at: float,
    server_cpu: float,
    hwm_kib: int,
    server: ServerProcess,
) -> dict[str, Any]:
    window = [s for s in samples if 0 <= s.t <= config.seconds]
    third = config.seconds / 3
    middle = [s.rss_kib for s in window if third <= s.t < 2 * third]
    last = [s.rss_kib for s in window if s.t >= 2 * third]
    middle_mib = statistics.median(middle) / 1024 if middle else None
    last_mib = statistics.median(last) / 1024 if last else None
    growth = None if not middle_mib or last_mib is None else (last_mib - middle_mib) / middle_mib * 100
    unexpected = dict(stats.errors)
    server_closes_unexpected = {k: v for k, v in stats.server_closes.items() if k != "slow"}
    for kind, count in server_closes_unexpected.items():
        unexpected[f"server-closed:{kind}"] = count
    for problem, count in server.problems.items():
        if problem not in ("warning log line", "benign log line"):
            unexpected[f"server:{problem}"] = count
    integrity = {
        "lost": stats.lost,
        "duplicated": stats.duplicated,
        "outOfOrder": stats.out_of_order,
        "pastTheEnd": stats.extra,
        "textMismatches": stats.text_mismatches,
        "totalChunksMismatches": stats.total_mismatches,
        "unverified": stats.sessions_unverified,
    }
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "config": config.to_json(),
        "serverSettings": config.server_env(),
        "durationSeconds": round(ended_at, 1),
        "sessions": {
            "concurrent": config.sessions,
            "started": stats.sessions_started,
            "completed": stats.sessions_completed,
            "cancelledAtEnd": stats.sessions_cancelled,
            "failed": stats.sessions_failed,
            "unverified": stats.sessions_unverified,
            "streamingMax": max((s.streaming for s in samples if s.streaming is not None), default=None),
            "streamingMedian": _median(
                [s.streaming for s in window if s.streaming is not None and s.t >= config.ramp_seconds]
            ),
        },
        "viewers": {
            "byKind": dict(stats.viewers),
            "dropping": stats.dropping_viewers,
            "drops": dict(stats.drops),
            "reconnects": dict(stats.reconnects),
            "serverCloses": dict(stats.server_closes),
            "streamResets": stats.resets,
        },
        "chunks": {"received": stats.chunks, "logged": stats.chunks_expected, "chars": stats.chars},
        "integrity": integrity,
        "ok": all(v == 0 for v in integrity.values()) and stats.sessions_started > 0,
        "errors": dict(stats.errors),
        "unexpectedErrors": unexpected,
        "failures": stats.failures[:50],
        "latencyMs": {group: h.summary() for group, h in sorted(stats.latency.items())},
        "server": {
            "cpuSeconds": round(server_cpu, 1),
            "cpuShare": round(server_cpu / ended_at, 3) if ended_at else None,
            "peakRssMiB": round(hwm_kib / 1024, 1),
            "logProblems": dict(server.problems),
            "tail": list(server.tail)[-20:],
        },
        "loadGeneratorCpuSeconds": round(stats.cpu_seconds, 1),
        "memory": {
            "startMiB": round(window[0].rss_kib / 1024, 1) if window else None,
            "middleThirdMedianMiB": _round(middle_mib),
            "lastThirdMedianMiB": _round(last_mib),
            "endMiB": round(window[-1].rss_kib / 1024, 1) if window else None,
            "maxMiB": round(max(s.rss_kib for s in window) / 1024, 1) if window else None,
            "growthPct": _round(growth, 2),
            "flat": growth is not None and growth <= FLAT_GROWTH_PCT,
            "flatThresholdPct": FLAT_GROWTH_PCT,
        },
        "rssSamples": [[s.t, s.rss_kib, s.streaming] for s in samples],
    }


def _median(values: list[int]) -> float | None:
    return statistics.median(values) if values else None


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def chart(figures: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    samples = figures["rssSamples"]
    seconds = float(figures["config"]["seconds"])
    fig, ax = plt.subplots(figsize=(10, 4.8))
    ts = [s[0] for s in samples]
    ax.plot(ts, [s[1] / 1024 for s in samples], color="#2f6fdf", label="server RSS (MiB)")
    mem = figures["memory"]
    for lo, hi, key, label in (
        (seconds / 3, 2 * seconds / 3, "middleThirdMedianMiB", "median of the middle third"),
        (2 * seconds / 3, seconds, "lastThirdMedianMiB", "median of the last third"),
    ):
        if mem[key] is not None:
            color = "#2a9d4b" if key.startswith("middle") else "#d04040"
            ax.hlines(mem[key], lo, hi, colors=color, linestyles="dashed", label=label)
    ax.axvline(seconds, color="#888888", linewidth=0.8)
    ax.set_xlabel("seconds since the start")
    ax.set_ylabel("RSS, MiB")
    ax.set_ylim(bottom=0)
    streaming = [(s[0], s[2]) for s in samples if s[2] is not None]
    if streaming:
        ax2 = ax.twinx()
        ax2.plot(
            [t for t, _ in streaming],
            [n for _, n in streaming],
            color="#e07b39",
            alpha=0.7,
            label="streaming sessions",
        )
        ax2.set_ylabel("streaming sessions")
        ax2.set_ylim(bottom=0)
        ax2.legend(loc="lower right", fontsize=8)
    verdict = "flat" if mem["flat"] else "NOT flat"
    title = (
        f"Soak: {figures['config']['sessions']} sessions at {figures['config']['tokens_per_second']:g} tok/s"
    )
    if mem["growthPct"] is not None:
        title += f": server RSS {verdict} ({mem['growthPct']:+.1f} % last third vs middle third)"
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _fmt(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {n:,}" for k, n in sorted(counts.items())) or "none"


def _codes(counts: dict[str, int]) -> str:
    return ", ".join(f"`{k}` {n:,}" for k, n in sorted(counts.items())) or "none"


def describe(figures: dict[str, Any]) -> str:
    """The paragraph that says how the run was made."""
    c = figures["config"]
    pinned = ", pinned (server core 0, load core 1)" if c["pin"] else ", not pinned"
    slow = (
        f"a raw WebSocket client on a {SLOW_RCVBUF}-byte receive buffer that reads {c['slow_rate']:g} "
        f"messages/s for {c['slow_phase'][0]:g}-{c['slow_phase'][1]:g} s, then at full speed for "
        f"{c['fast_phase'][0]:g}-{c['fast_phase'][1]:g} s"
    )
    drops = (
        f"{c['drop_fraction']:.0%} of the viewers drop their connection every "
        f"{c['drop_after'][0]:g}-{c['drop_after'][1]:g} s (a TCP shutdown, a WebSocket close or a "
        f"Socket.IO disconnect) and rejoin {c['reconnect_after'][0]:g}-{c['reconnect_after'][1]:g} s "
        "later with `lastSeq` and `epoch`"
    )
    raised = ", ".join(
        f"`{k}={val}`"
        for k, val in figures["serverSettings"].items()
        if k not in ("LOG_LEVEL", "SHUTDOWN_TIMEOUT", "SESSION_TTL", "SWEEP_INTERVAL")
    )
    return (
        f"{figures['date']}, {figures['machine']['cores']} cores, Python {figures['machine']['python']}. "
        f"The server is one `python -m server` process; the viewers run in {c['workers']} load "
        f"generator process(es) (`bench/soak.py`){pinned}. Each of the {c['sessions']} slots runs one "
        f"demo session after another (nominal length {c['session_seconds']:g} s, the first of each "
        f"slot a random part of it) with one viewer: {c['polling_fraction']:.0%} long-polling, "
        f"{c['slow_fraction']:.0%} slow readers ({slow}), {c['sio_ws_fraction']:.0%} python-socketio "
        "over WebSocket, the rest raw Socket.IO WebSocket clients (the direct path); "
        f"{drops}. At the end the running sessions are cancelled and every viewer's seqs and text "
        "are compared with `GET /api/streaming/{id}`.\n\n"
        f"All the load comes from 127.0.0.1, so the per-address and per-user limits are raised: "
        f"{raised}. `SESSION_TTL={SESSION_TTL}` (and `SWEEP_INTERVAL=5`) so that finished sessions "
        "leave memory during the run (the default keeps them an hour)."
    )


def markdown(figures: dict[str, Any], chart_name: str | None) -> str:
    c = figures["config"]
    s = figures["sessions"]
    v = figures["viewers"]
    i = figures["integrity"]
    m = figures["memory"]
    srv = figures["server"]
    ch = figures["chunks"]
    lat = figures["latencyMs"]

    def latency_row(group: str, label: str) -> str:
        x = lat.get(group)
        if not x or not x["samples"]:
            return f"| chunk latency, {label} | n/a |"
        return (
            f"| chunk latency, {label}: p50 / p90 / p99 / max | "
            f"{x['p50']} / {x['p90']} / **{x['p99']}** / {x['max']} ms ({x['samples']:,} chunks) |"
        )

    sessions = " / ".join(
        f"{s[k]:,}" for k in ("concurrent", "started", "completed", "cancelledAtEnd", "failed")
    )
    rss = " / ".join(
        _fmt(x) for x in (m["startMiB"], m["middleThirdMedianMiB"], m["lastThirdMedianMiB"], m["endMiB"])
    )
    verdict = "**PASS**: nothing lost, duplicated or out of order" if figures["ok"] else "**FAIL**"
    title = f"{c['sessions']} sessions at {c['tokens_per_second']:g} tokens/s for {c['seconds']:g} s"
    lines = [
        f"## Soak: {title} (`make soak`)",
        "",
        describe(figures),
        "",
        "| figure | value |",
        "|---|---|",
        f"| sessions: concurrent / started / completed / cancelled at the end / failed | {sessions} |",
        "| sessions streaming on the server (`/metrics` every 5 s, after the ramp): median / max | "
        f"{_fmt(s['streamingMedian'])} / {_fmt(s['streamingMax'])} |",
        "| viewers: raw WebSocket / python-socketio WebSocket / long-polling / slow | "
        + " / ".join(f"{v['byKind'].get(k, 0):,}" for k in KINDS)
        + " |",
        f"| viewers that dropped and rejoined / drops | {v['dropping']:,} / {sum(v['drops'].values()):,} |",
        f"| reconnects (after drops and server closes) | {sum(v['reconnects'].values()):,} "
        f"({_counts(v['reconnects'])}) |",
        f"| connections closed by the server | {_counts(v['serverCloses'])} |",
        f"| chunks received / logged, characters | {ch['received']:,} / {ch['logged']:,}, {ch['chars']:,} |",
        f"| **lost / duplicated / out of order** | **{i['lost']} / {i['duplicated']} / {i['outOfOrder']}** |",
        "| text differing from `GET` / `totalChunks` differing / unverified | "
        f"{i['textMismatches']} / {i['totalChunksMismatches']} / {i['unverified']} |",
        f"| errors by code | {_codes(figures['errors'])} |",
        f"| unexpected errors | {_codes(figures['unexpectedErrors'])} |",
        latency_row("websocket", "well-behaved WebSocket viewers (never dropped)"),
        latency_row("polling", "long-polling viewers (never dropped)"),
        latency_row("slow", "slow readers (queued by design)"),
        f"| server RSS: start / middle third median / last third median / end | {rss} MiB |",
        f"| server peak RSS (VmHWM) | {_fmt(srv['peakRssMiB'])} MiB |",
        f"| flat memory (last third within {m['flatThresholdPct']:g} % of the middle third) | "
        f"**{'yes' if m['flat'] else 'no'}** ({_fmt(m['growthPct'])} %) |",
        f"| server CPU | {srv['cpuSeconds']:,} s ({(srv['cpuShare'] or 0):.0%} of one core) |",
        f"| load generator CPU | {figures['loadGeneratorCpuSeconds']:,} s |",
        "",
        f"Verdict: {verdict}.",
    ]
    if chart_name:
        lines += ["", f"![server RSS during the soak]({chart_name})"]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = SoakConfig()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument(
        "--sessions",
        type=int,
        default=int(env_number("SOAK_SESSIONS", defaults.sessions)),
        help="concurrent sessions (SOAK_SESSIONS, 500)",
    )
    ap.add_argument(
        "--seconds",
        type=float,
        default=env_number("SOAK_SECONDS", defaults.seconds),
        help="length of the run (SOAK_SECONDS, 300)",
    )
    ap.add_argument(
        "--session-seconds",
        type=float,
        default=env_number("SOAK_SESSION_SECONDS", defaults.session_seconds),
        help="nominal length of one session (SOAK_SESSION_SECONDS, 90)",
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=int(env_number("SOAK_WORKERS", defaults.workers)),
        help="load generator processes (SOAK_WORKERS, 2)",
    )
    ap.add_argument("--tokens-per-second", type=float, default=defaults.tokens_per_second)
    ap.add_argument(
        "--ramp", type=float, default=defaults.ramp_seconds, help="first starts spread over this many seconds"
    )
    ap.add_argument("--drop-fraction", type=float, default=defaults.drop_fraction)
    ap.add_argument("--polling-fraction", type=float, default=defaults.polling_fraction)
    ap.add_argument("--slow-fraction", type=float, default=defaults.slow_fraction)
    ap.add_argument("--sio-ws-fraction", type=float, default=defaults.sio_ws_fraction)
    ap.add_argument("--seed", type=int, default=defaults.seed)
    ap.add_argument(
        "--pin", action="store_true", help="server on core 0, load generators on core 1 (taskset)"
    )
    ap.add_argument("--no-deflate", action="store_true", help="viewers do not offer permessage-deflate")
    ap.add_argument("--out", type=Path, default=BENCH, help="where soak.json and soak.png go (bench/)")
    ap.add_argument("--no-chart", action="store_true")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return worker_main(args.worker)
    config = SoakConfig(
        sessions=args.sessions,
        seconds=args.seconds,
        session_seconds=args.session_seconds,
        workers=max(1, min(args.workers, args.sessions)),
        tokens_per_second=args.tokens_per_second,
        ramp_seconds=args.ramp,
        drop_fraction=args.drop_fraction,
        polling_fraction=args.polling_fraction,
        slow_fraction=args.slow_fraction,
        sio_ws_fraction=args.sio_ws_fraction,
        seed=args.seed,
        pin=args.pin,
        deflate=not args.no_deflate,
    )
    figures = asyncio.run(run_soak(config))
    args.out.mkdir(parents=True, exist_ok=True)
    chart_name = None
    if not args.no_chart and ensure_matplotlib() and chart(figures, args.out / "soak.png"):
        chart_name = "soak.png"
    (args.out / "soak.json").write_text(json.dumps(figures, indent=1) + "\n")
    log(f"wrote {args.out / 'soak.json'}" + (f" and {args.out / chart_name}" if chart_name else ""))
    for failure in figures["failures"][:20]:
        log("failure:", failure)
    print(markdown(figures, chart_name))
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
