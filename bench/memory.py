"""Memory of kept and expired sessions: does the process give back what sessions took?

Two measurements against a real ``python -m server`` process (demo provider, unthrottled):

- **kept**: 100 finished sessions of ``maxTokens`` 32,000, each of another user: RSS growth
  per session against the text it keeps (issue 12: was 1.4 MB for 189 KB of text).
- **rounds**: create and finish 10,000 sessions (every tenth watched by a Socket.IO viewer
  that joins and leaves), wait until their ``SESSION_TTL`` passes and the sweep drops them,
  and read RSS; twice, because the allocator keeps freed memory for reuse: the second
  round must not end higher than the first.

    .venv/bin/python bench/memory.py                 # both; figures as JSON on stdout
    .venv/bin/python bench/memory.py --sessions 2000 --skip-kept

- **handshakes**: one client opens long-polling Engine.IO sessions as fast as it can
  (issue 12: 115,000 in 12 s added 1 GB); ``HANDSHAKE_RATE_PER_ADDRESS`` and
  ``MAX_CONNECTIONS_PER_ADDRESS`` at their defaults.

``tests/test_memory.py`` runs the rounds in ``make test``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import socketio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.server_process import ServerProcess  # noqa: E402

#: All the load comes from 127.0.0.1: the per-address limits are raised for it.
LOAD_ENV = {
    "SESSION_RATE_PER_ADDRESS": "100000",
    "SESSION_BURST_PER_ADDRESS": "100000",
    "SESSION_RATE_PER_USER": "100000",
    "SESSION_BURST_PER_USER": "100000",
    "SOCKET_MESSAGE_RATE": "100000",
    "SOCKET_MESSAGE_BURST": "100000",
    "DEMO_TOKENS_PER_SECOND": "0",
}


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@contextmanager
def server(env: dict[str, str]) -> Iterator[ServerProcess]:
    with ServerProcess(env=LOAD_ENV | env) as process:
        yield process


async def metric(http: aiohttp.ClientSession, url: str, name: str) -> float:
    """The sum of a metric's samples on ``/metrics``."""
    async with http.get(f"{url}/metrics") as resp:
        text = await resp.text()
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", re.MULTILINE)
    return sum(float(value) for value in pattern.findall(text))


async def wait_for(check: Callable[[], Awaitable[bool]], within: float) -> None:
    """Ask another process until ``check`` holds (it has no event to wait on)."""
    async with asyncio.timeout(within):
        while not await check():  # noqa: ASYNC110
            await asyncio.sleep(0.1)


async def run_sessions(
    url: str, count: int, *, max_tokens: int, viewer_every: int = 10, concurrency: int = 32
) -> int:
    """Create, start and finish ``count`` sessions; every ``viewer_every``-th is watched by a
    Socket.IO viewer that joins it, waits for its end and leaves. Returns the chunks seen."""
    seen = 0
    viewers = [socketio.AsyncClient() for _ in range(4)]
    ended: dict[str, asyncio.Future[None]] = {}

    def on_end(data: dict[str, Any]) -> None:
        future = ended.get(data["sessionId"])
        if future is not None and not future.done():
            future.set_result(None)

    def on_chunk(data: dict[str, Any]) -> None:
        nonlocal seen
        seen += 1

    for viewer in viewers:
        viewer.on("complete", on_end)
        viewer.on("stream-error", on_end)
        viewer.on("chunk", on_chunk)
        await viewer.connect(url, transports=["websocket"])
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(count):
        queue.put_nowait(index)

    async def worker(http: aiohttp.ClientSession) -> None:
        while not queue.empty():
            index = queue.get_nowait()
            body = {"userId": f"mem-{index}", "config": {"maxTokens": max_tokens}}
            async with http.post(f"{url}/api/streaming/session", json=body) as resp:
                assert resp.status == 200, await resp.text()
                session_id = (await resp.json())["sessionId"]
            viewer = viewers[index % len(viewers)] if index % viewer_every == 0 else None
            if viewer is not None:
                ended[session_id] = asyncio.get_running_loop().create_future()
                ack = await viewer.call("join-stream", {"sessionId": session_id}, timeout=30)
                assert ack["ok"], ack
            async with http.post(
                f"{url}/api/streaming/{session_id}/start", json={"prompt": "memory"}
            ) as resp:
                assert resp.status == 200, await resp.text()
            if viewer is not None:
                await asyncio.wait_for(ended[session_id], 60)
                ack = await viewer.call("leave-stream", {"sessionId": session_id}, timeout=30)
                assert ack["ok"], ack
                del ended[session_id]

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    for viewer in viewers:
        await viewer.disconnect()
    return seen


@dataclass
class Rounds:
    sessions: int
    start_rss: int
    #: Per round: RSS once every session finished, and once the sweep dropped them all.
    finished_rss: list[int] = field(default_factory=list)
    swept_rss: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        mib = 1024 * 1024
        return asdict(self) | {
            "start_mib": round(self.start_rss / mib, 1),
            "finished_mib": [round(r / mib, 1) for r in self.finished_rss],
            "swept_mib": [round(r / mib, 1) for r in self.swept_rss],
        }


async def rounds(process: ServerProcess, sessions: int, count: int = 2, max_tokens: int = 100) -> Rounds:
    """``count`` rounds of ``sessions`` sessions, each left to expire."""
    assert process.process is not None
    pid, url = process.process.pid, process.url
    async with aiohttp.ClientSession() as http:

        async def live() -> float:
            return await metric(http, url, "streaming_sessions")

        # One small round first, so that what every process allocates once (imports on
        # first use, caches, the first connections) is not counted as kept.
        await run_sessions(url, 50, max_tokens=max_tokens)
        await wait_for(lambda: _equals(live, 0), 120)
        result = Rounds(sessions, rss_bytes(pid))
        for _ in range(count):
            began = time.monotonic()
            await run_sessions(url, sessions, max_tokens=max_tokens)
            result.finished_rss.append(rss_bytes(pid))
            await wait_for(lambda: _equals(live, 0), 120)
            result.swept_rss.append(rss_bytes(pid))
            result.seconds.append(round(time.monotonic() - began, 1))
    return result


async def _equals(read: Callable[[], Awaitable[float]], value: float) -> bool:
    return await read() == value


async def kept(process: ServerProcess, sessions: int = 100, max_tokens: int = 32_000) -> dict[str, Any]:
    """RSS growth per finished session of ``max_tokens`` against the text it keeps.

    Measured twice: over the first ``sessions`` (which includes the one-time high-water
    of streaming several at once: the demo's token lists, the pending text), and over
    as many more (what one more kept session costs).
    """
    assert process.process is not None
    pid, url = process.process.pid, process.url

    async def text() -> float:
        async with aiohttp.ClientSession() as http:
            return await metric(http, url, "streaming_chunk_bytes_total")

    figures: dict[str, Any] = {"sessions": sessions, "max_tokens": max_tokens}
    for phase in ("first", "next"):
        before, text_before = rss_bytes(pid), await text()
        await run_sessions(url, sessions, max_tokens=max_tokens, viewer_every=sessions + 1, concurrency=8)
        grown, text_bytes = rss_bytes(pid) - before, await text() - text_before
        figures[phase] = {
            "rss_growth_mib": round(grown / 1024 / 1024, 1),
            "text_mib": round(text_bytes / 1024 / 1024, 1),
            "per_session_kib": round(grown / sessions / 1024, 1),
            "text_per_session_kib": round(text_bytes / sessions / 1024, 1),
            "ratio": round(grown / text_bytes, 2),
        }
    return figures


async def handshakes(process: ServerProcess, count: int = 115_000, concurrency: int = 64) -> dict[str, Any]:
    """RSS before and after ``count`` long-polling handshakes from one address."""
    assert process.process is not None
    pid, url = process.process.pid, process.url
    before = rss_bytes(pid)
    statuses: dict[int, int] = {}
    began = time.monotonic()
    remaining = count
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                async with http.get(f"{url}/socket.io/?EIO=4&transport=polling") as resp:
                    await resp.read()
                    statuses[resp.status] = statuses.get(resp.status, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.monotonic() - began
    return {
        "handshakes": count,
        "seconds": round(seconds, 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "rss_before_mib": round(before / 1024 / 1024, 1),
        "rss_after_mib": round(rss_bytes(pid) / 1024 / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-kept", action="store_true")
    parser.add_argument("--handshakes", type=int, default=115_000)
    args = parser.parse_args()
    figures: dict[str, Any] = {}
    if not args.skip_kept:
        with server({"SESSION_TTL": "3600"}) as process:
            figures["kept"] = asyncio.run(kept(process))
    if args.handshakes:
        # Only this bench's own limits are at their defaults here.
        with server({"HANDSHAKE_RATE_PER_ADDRESS": "20", "HANDSHAKE_BURST_PER_ADDRESS": "200"}) as process:
            figures["handshakes"] = asyncio.run(handshakes(process, args.handshakes))
    with server({"SESSION_TTL": "2", "SWEEP_INTERVAL": "0.5"}) as process:
        figures["rounds"] = asyncio.run(rounds(process, args.sessions, args.rounds)).summary()
    json.dump(figures, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
