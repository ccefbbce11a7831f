"""Scenario (i): how long a live stream waits for its successor when its process dies.

Three of our processes share one Redis. Each kill: a demo session is created and started
on process X (its owner), a viewer watches it on another process Y over the direct
Socket.IO WebSocket, X gets SIGKILL, and we time the kill -> the first chunk the successor
wrote (the first ``seq`` past the end of X's log, read from Redis right after the kill, so
the chunks X had logged and the viewer had not received yet do not count). The viewer must
see every ``seq`` once, in order, and no ``stream-error``. The kill comes a random time
(up to a lease renewal period, ``lease/3``) after the viewer's first chunks, so kills fall
at every point of the owner's renewal cycle rather than at one. Then a fresh process replaces X
and the session is cancelled; the victim rotates among the three.

Called by ``bench/run.py`` (``Bench.i``), which starts the processes (``spawn``).
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

#: The session streams this fast: a chunk every 20 ms, so the wait measured is the takeover.
TOKENS_PER_SECOND = 50
#: Far more than a kill needs (about 1,000 s of stream): the session never ends by itself.
MAX_TOKENS = 50_000
#: The viewer has received this many chunks before the owner is killed.
WARM_CHUNKS = 5
#: Chunks the viewer must receive after the takeover (the stream goes on, not one chunk).
AFTER_CHUNKS = 3
#: The target: the longest takeover under this many leases.
TARGET_LEASES = 2.0
PROCESSES = 3


class Process(Protocol):
    """What ``spawn`` returns: a healthy server process (run.py's ``Server``)."""

    url: str
    port: int
    proc: subprocess.Popen[bytes]

    def stop(self) -> None: ...


@dataclass
class Viewer:
    """One viewer of ``/stream/<id>`` over the raw Engine.IO WebSocket: what it received, when."""

    namespace: str
    chunks: list[tuple[float, int]] = field(default_factory=list)  # (perf_counter, seq)
    errors: list[dict[str, Any]] = field(default_factory=list)
    resets: int = 0
    completes: int = 0
    refused: str | None = None
    closed: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def read(self, ws: Any) -> None:
        event_prefix = f"42{self.namespace},"
        try:
            async for msg in ws:
                now = time.perf_counter()
                data = msg.data
                if not isinstance(data, str):
                    continue
                if data == "2":  # Engine.IO ping
                    await ws.send_str("3")
                elif data.startswith(event_prefix):
                    event, payload = json.loads(data[len(event_prefix) :])
                    if event == "chunk":
                        self.chunks.append((now, int(payload["seq"])))
                    elif event == "stream-error":
                        self.errors.append(payload)
                    elif event == "stream-reset":
                        self.resets += 1
                    elif event == "complete":
                        self.completes += 1
                elif data.startswith(f"44{self.namespace},"):
                    self.refused = data[len(self.namespace) + 3 :]
                self.changed.set()
        finally:
            self.closed = True
            self.changed.set()

    async def wait_for(self, pred: Callable[[], bool], limit: float) -> bool:
        """Wait until ``pred()`` holds, the connection ends or ``limit`` seconds pass."""
        end = time.monotonic() + limit
        while True:
            self.changed.clear()
            if pred():
                return True
            remaining = end - time.monotonic()
            if self.closed or self.refused is not None or remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except TimeoutError:
                return pred()


def measure(
    spawn: Callable[[], Process],
    lease: float,
    kills: int,
    redis_url: str,
    log: Callable[..., None],
) -> dict[str, Any]:
    """``kills`` kills with ``OWNER_LEASE_SECONDS`` = ``lease`` (what ``spawn`` starts with):
    the summary, and every kill under ``trials``. Never raises: a failure that stops the
    run is recorded as ``fatal`` next to the kills done so far."""
    trials: list[dict[str, Any]] = []
    fatal: str | None = None
    try:
        asyncio.run(_run(spawn, lease, kills, redis_url, log, trials))
    except Exception as exc:  # the harness records it and goes on with the next scenario
        fatal = f"{type(exc).__name__}: {exc}"
        log(f"  lease {lease:g} s: FATAL {fatal[:300]}")
    return summarize(lease, kills, trials, fatal)


def summarize(lease: float, kills: int, trials: list[dict[str, Any]], fatal: str | None) -> dict[str, Any]:
    times = [t["seconds"] for t in trials if t.get("seconds") is not None]
    contiguous = sum(1 for t in trials if t.get("contiguous"))
    p50 = round(statistics.median(times), 3) if times else None
    worst = round(max(times), 3) if times else None
    out: dict[str, Any] = {
        "lease": lease,
        "kills": kills,
        "done": len(trials),
        "measured": len(times),
        "p50": p50,
        "max": worst,
        "maxOverLease": round(worst / lease, 2) if worst is not None else None,
        "contiguous": contiguous,
        "streamErrors": sum(len(t.get("errors") or []) for t in trials),
        "targetMet": (
            fatal is None
            and worst is not None
            and len(times) == kills
            and contiguous == kills
            and worst < TARGET_LEASES * lease
        ),
        "trials": trials,
    }
    if fatal is not None:
        out["fatal"] = fatal
    return out


async def _run(
    spawn: Callable[[], Process],
    lease: float,
    kills: int,
    redis_url: str,
    log: Callable[..., None],
    trials: list[dict[str, Any]],
) -> None:
    import aiohttp
    import redis.asyncio as aioredis

    procs: list[Process] = []
    store = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        for _ in range(PROCESSES):
            procs.append(await asyncio.to_thread(spawn))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            jitter = random.Random(f"takeover-{lease}")  # the same delays on every run
            for k in range(kills):
                victim = k % PROCESSES
                watcher = (k + 1) % PROCESSES
                delay = jitter.uniform(0, lease / 3)
                trial = await _kill_once(http, store, procs[victim], procs[watcher], lease, k, delay)
                trials.append(trial)
                log(
                    f"  lease {lease:g} s, kill {k + 1}/{kills}: "
                    + (
                        f"{trial['seconds']:.3f} s, seq {trial['loggedLast']} -> {trial['nextSeq']}"
                        if trial.get("seconds") is not None
                        else "no takeover chunk"
                    )
                    + ("" if trial["contiguous"] else f" NOT CONTIGUOUS ({trial.get('note')})")
                )
                procs[victim].stop()  # dead already: closes its log file
                procs[victim] = await asyncio.to_thread(spawn)
                await _cancel(http, procs[watcher], trial["sessionId"])
    finally:
        await asyncio.gather(*(asyncio.to_thread(p.stop) for p in procs), return_exceptions=True)
        await store.aclose()


async def _post(http: Any, url: str, body: Any = None) -> dict[str, Any]:
    async with http.post(url, json=body) as resp:
        payload: dict[str, Any] = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"POST {url}: {resp.status} {payload}")
        return payload


async def _cancel(http: Any, proc: Process, session_id: str) -> None:
    """Cancel the session (wherever it runs now); a session that already ended answers 409."""
    async with http.post(f"{proc.url}/api/streaming/{session_id}/cancel") as resp:
        await resp.read()


async def _log_end(store: Any, session_id: str) -> tuple[str | None, int]:
    """The session's owner and its last logged chunk ``seq`` (-1: none), read at once."""
    from server.cluster.redis_store import log_key, meta_key

    pipe = store.pipeline(transaction=True)
    pipe.hget(meta_key(session_id), "owner")
    pipe.xrevrange(log_key(session_id), "+", "-", count=1)
    owner, last = await pipe.execute()
    # Chunk seq N has the stream id N+1-0; the events after it N+1-1, N+1-2, ...
    seq = int(last[0][0].split("-")[0]) - 1 if last else -1
    return owner, seq


async def _kill_once(
    http: Any, store: Any, owner: Process, other: Process, lease: float, k: int, delay: float
) -> dict[str, Any]:
    config = {"provider": "demo", "maxTokens": MAX_TOKENS, "tokensPerSecond": TOKENS_PER_SECOND}
    created = await _post(http, f"{owner.url}/api/streaming/session", {"userId": f"i-{k}", "config": config})
    session_id = str(created["sessionId"])
    await _post(http, f"{owner.url}/api/streaming/{session_id}/start", {"prompt": "Explain streaming"})
    trial: dict[str, Any] = {
        "sessionId": session_id,
        "victim": owner.port,
        "viewer": other.port,
        "seconds": None,
        "contiguous": False,
        "delay": round(delay, 3),
    }
    namespace = f"/stream/{session_id}"
    viewer = Viewer(namespace)
    ws_url = other.url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"
    async with http.ws_connect(ws_url, compress=0) as ws:
        reader = asyncio.create_task(viewer.read(ws))
        try:
            await ws.send_str(f"40{namespace},{{}}")
            if not await viewer.wait_for(lambda: len(viewer.chunks) >= WARM_CHUNKS, 30):
                raise RuntimeError(
                    f"the viewer got {len(viewer.chunks)} chunks of a started session in 30 s "
                    f"(refused: {viewer.refused}, closed: {viewer.closed})"
                )
            await asyncio.sleep(delay)
            owner_id, _ = await _log_end(store, session_id)
            trial["seenAtKill"] = viewer.chunks[-1][1]
            killed_at = time.perf_counter()
            owner.proc.kill()  # SIGKILL
            await asyncio.to_thread(owner.proc.wait, 10)
            await asyncio.sleep(0.02)  # let Redis run what the dead process had sent it
            owner_now, logged_last = await _log_end(store, session_id)
            trial["loggedLast"] = logged_last
            trial["readAfterKill"] = round(time.perf_counter() - killed_at, 3)
            if owner_now != owner_id:
                trial["note"] = "claimed before the end of the dead owner's log was read"
            limit = 4 * lease + 10
            got = await viewer.wait_for(lambda: any(s > logged_last for _, s in viewer.chunks), limit)
            if got:
                at, seq = next((t, s) for t, s in viewer.chunks if s > logged_last)
                trial["seconds"] = round(at - killed_at, 4)
                trial["nextSeq"] = seq
                trial["inFlight"] = sum(1 for t, s in viewer.chunks if t > killed_at and s <= logged_last)
                n = len(viewer.chunks)
                await viewer.wait_for(lambda: len(viewer.chunks) >= n + AFTER_CHUNKS, 2 + lease)
            else:
                trial.setdefault("note", f"no chunk past seq {logged_last} within {limit:g} s")
            seqs = [s for _, s in viewer.chunks]
            trial["received"] = len(seqs)
            trial["errors"] = viewer.errors
            trial["resets"] = viewer.resets
            in_order = seqs == list(range(len(seqs)))
            trial["contiguous"] = bool(
                got
                and in_order
                and trial["nextSeq"] == logged_last + 1
                and len(seqs) >= seqs.index(trial["nextSeq"]) + 1 + AFTER_CHUNKS
                and not viewer.errors
                and not viewer.resets
                and "note" not in trial
            )
            if not trial["contiguous"] and "note" not in trial:
                trial["note"] = (
                    f"errors {viewer.errors}, resets {viewer.resets}, in order {in_order}, "
                    f"next seq {trial.get('nextSeq')} after {logged_last}, {len(seqs)} chunks"
                )
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
    return trial
