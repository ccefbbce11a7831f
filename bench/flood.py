"""Does one flooding socket stall everyone else? Chunk latency of other viewers, with and
without a socket that sends 50,000 ``pause-stream``/``resume-stream`` events in one burst.

One fresh server process (``python -m server``, defaults but for the session-creation
limits). ``VIEWERS`` sessions stream at 40 tokens/s, each watched by one viewer on the
direct Socket.IO WebSocket (``/stream/<id>``); a chunk's latency is its arrival time minus
its ``timestamp``. The baseline is a run of those streams alone. In the flood run, a
separate process (so that its client work does not delay the viewers' loop) opens one more
direct socket, starts a session of its own and writes the whole burst, with ack ids, in
one write, then reads every ack. The flood window runs from the write to the last ack.

    .venv/bin/python bench/flood.py                 # prints JSON, then a markdown snippet
    .venv/bin/python bench/flood.py --events 5000   # a quicker run
    .venv/bin/python bench/flood.py --path engineio # every socket on python-socketio
    .venv/bin/python bench/flood.py --idle 5000     # the heartbeat instead: 5,000 idle sockets

With ``--idle N`` there is no flood: the viewers' latency is measured alone, then beside N
idle direct sockets that answer the server's pings (``SOCKETIO_PING_INTERVAL=2``, so a
10 s stream sees five heartbeats of them all).

Target: the viewers' p99 under 20 ms during the flood.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import Server, log, raise_nofile  # bench/run.py: the server process

VIEWERS = 20
TOKENS_PER_SECOND = 40.0
EVENTS = 50_000
TARGET_P99_MS = 20.0
#: The flood starts this long after the streams, and the streams outlast it.
FLOOD_AFTER = 2.0
#: Settings of the server: the defaults (bench/run.py raises the per-connection message
#: rate for its own runs: set back here), but room to create the bench's sessions at once.
SETTINGS = {
    "SOCKET_MESSAGE_RATE": "50",
    "SOCKET_MESSAGE_BURST": "200",
    "SESSION_BURST_PER_USER": "1000",
    "SESSION_BURST_PER_ADDRESS": "1000",
    "MAX_SESSIONS_PER_USER": "1000",
}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def summary(latencies: list[float]) -> dict[str, Any]:
    return {
        "chunks": len(latencies),
        "p50Ms": percentile(latencies, 0.50),
        "p99Ms": percentile(latencies, 0.99),
        "maxMs": round(max(latencies), 2) if latencies else None,
    }


async def request(http: aiohttp.ClientSession, url: str, path: str, body: object) -> Any:
    async with http.post(url + path, json=body) as resp:
        resp.raise_for_status()
        return await resp.json()


async def new_session(http: aiohttp.ClientSession, url: str, user: str, tokens: int) -> str:
    config = {"provider": "demo", "maxTokens": tokens, "tokensPerSecond": TOKENS_PER_SECOND}
    created = await request(http, url, "/api/streaming/session", {"userId": user, "config": config})
    return str(created["sessionId"])


def ws_url(url: str) -> str:
    return url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"


@dataclass
class Viewer:
    """One viewer of ``/stream/<id>``: (arrival time, latency) of each chunk."""

    session_id: str
    chunks: list[tuple[float, float]] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)

    async def watch(self, http: aiohttp.ClientSession, url: str) -> None:
        namespace = f"/stream/{self.session_id}"
        prefix = f"42{namespace},"
        async with http.ws_connect(ws_url(url), compress=0, max_msg_size=0) as ws:
            await ws.send_str(f"40{namespace},")
            async for msg in ws:
                data = msg.data
                if data.startswith(prefix):
                    event, payload = json.loads(data[len(prefix) :])
                    if event == "chunk":
                        now = time.time()
                        self.chunks.append((now, now * 1000 - payload["timestamp"]))
                    elif event in ("complete", "stream-error"):
                        return
                elif data == "2":
                    await ws.send_str("3")
                elif data.startswith("40"):
                    self.connected.set()


def event_frames(session_id: str, count: int) -> bytes:
    """``count`` events with ack ids, as one client write (masked with a zero key)."""
    frames = []
    for i in range(count):
        event = "pause-stream" if i % 2 == 0 else "resume-stream"
        payload = f'42{i}["{event}","{session_id}"]'.encode()
        frames.append(struct.pack("!BB", 0x81, 0x80 | len(payload)) + b"\0\0\0\0" + payload)
    return b"".join(frames)


async def open_socket(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw Socket.IO WebSocket, its CONNECT to ``/`` sent (frames masked with a zero key)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    await reader.readuntil(b"\r\n\r\n")
    writer.write(struct.pack("!BB", 0x81, 0x82) + b"\0\0\0\0" + b"40")
    return reader, writer


async def flood(url: str, count: int) -> dict[str, Any]:
    """The flooding socket: a session of its own, the burst, then every ack read."""
    async with aiohttp.ClientSession() as http:
        session_id = await new_session(http, url, "flooder", 10_000)
        await request(http, url, f"/api/streaming/{session_id}/start", {"prompt": "Explain streaming"})
        reader, writer = await open_socket(url)
        burst = event_frames(session_id, count)
        acks = refused = 0
        started = 0.0
        while acks < count:
            _, second = await reader.readexactly(2)
            size = second & 0x7F
            if size == 126:
                (size,) = struct.unpack("!H", await reader.readexactly(2))
            elif size == 127:
                (size,) = struct.unpack("!Q", await reader.readexactly(8))
            text = (await reader.readexactly(size)).decode()
            if text.startswith("40{") and not started:
                started = time.time()
                writer.write(burst)
            elif text.startswith("43"):
                acks += 1
                refused += "Too many messages" in text  # either JSON spacing
            elif text == "2":
                writer.write(struct.pack("!BB", 0x81, 0x81) + b"\0\0\0\0" + b"3")
        ended = time.time()
        writer.close()
        return {"events": count, "acks": acks, "refused": refused, "start": started, "end": ended}


def flood_process(url: str, count: int, out: Any) -> None:
    out.put(asyncio.run(flood(url, count)))


@dataclass
class Idlers:
    """The idle sockets of one process: how many are open, and when to stop."""

    count: int
    opened: int = 0
    all_open: asyncio.Event = field(default_factory=asyncio.Event)
    stop: asyncio.Event = field(default_factory=asyncio.Event)


async def idle_socket(url: str, idlers: Idlers) -> None:
    """A direct socket connected to ``/`` that only answers pings, until ``stop``."""
    reader, writer = await open_socket(url)
    idlers.opened += 1
    if idlers.opened == idlers.count:
        idlers.all_open.set()

    async def answer() -> None:
        while True:
            _, second = await reader.readexactly(2)
            text = await reader.readexactly(second & 0x7F)
            if text == b"2":
                writer.write(struct.pack("!BB", 0x81, 0x81) + b"\0\0\0\0" + b"3")

    task = asyncio.ensure_future(answer())
    await idlers.stop.wait()
    task.cancel()
    writer.close()


def idle_process(url: str, count: int, ready: Any, done: Any) -> None:
    """``count`` idle sockets, open from ``ready`` until ``done`` is set."""
    raise_nofile()

    async def run() -> None:
        idlers = Idlers(count)
        tasks = []
        for _ in range(count):
            tasks.append(asyncio.ensure_future(idle_socket(url, idlers)))
            if len(tasks) % 200 == 0:
                await asyncio.sleep(0.05)  # pacing the connects, not synchronisation
        await idlers.all_open.wait()
        ready.set()
        await asyncio.get_running_loop().run_in_executor(None, done.wait)
        idlers.stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(run())


async def run_streams(url: str, tokens: int, events: int | None, idle: int = 0) -> dict[str, Any]:
    """``VIEWERS`` streams watched; with ``events``, the flood runs from ``FLOOD_AFTER`` s in;
    with ``idle``, that many idle sockets are open throughout."""
    context = multiprocessing.get_context("spawn")
    idlers = None
    if idle:
        ready, done = context.Event(), context.Event()
        idlers = context.Process(target=idle_process, args=(url, idle, ready, done))
        idlers.start()
        await asyncio.get_running_loop().run_in_executor(None, ready.wait, 120)
    async with aiohttp.ClientSession() as http:
        viewers = [Viewer(await new_session(http, url, f"viewer-{i}", tokens)) for i in range(VIEWERS)]
        tasks = [asyncio.create_task(v.watch(http, url)) for v in viewers]
        async with asyncio.timeout(30):
            await asyncio.gather(*(v.connected.wait() for v in viewers))
        for viewer in viewers:
            await request(
                http, url, f"/api/streaming/{viewer.session_id}/start", {"prompt": "Explain streaming"}
            )
        flooded: dict[str, Any] | None = None
        if events is not None:
            await asyncio.sleep(FLOOD_AFTER)  # the streams are under way (pacing, not synchronisation)
            queue = context.Queue()
            process = context.Process(target=flood_process, args=(url, events, queue))
            process.start()
            flooded = await asyncio.get_running_loop().run_in_executor(None, queue.get)
            process.join()
        await asyncio.gather(*tasks)
    if idlers is not None:
        done.set()
        idlers.join()
    latencies = [lat for v in viewers for _, lat in v.chunks]
    result: dict[str, Any] = {"all": summary(latencies)}
    if flooded is not None:
        window = [lat for v in viewers for at, lat in v.chunks if flooded["start"] <= at <= flooded["end"]]
        result["flood"] = {
            **{k: flooded[k] for k in ("events", "acks", "refused")},
            "seconds": round(flooded["end"] - flooded["start"], 3),
        }
        result["duringFlood"] = summary(window)
    return result


def markdown(result: dict[str, Any], path: str = "direct") -> str:
    base, flooded = result["baseline"], result["flood"]
    during = flooded["duringFlood"]
    ok = during["p99Ms"] is not None and during["p99Ms"] < TARGET_P99_MS
    lines = [
        f"**Flood**: {VIEWERS} viewers of sessions at {TOKENS_PER_SECOND:g} tokens/s on the {path} path; "
        f"one other socket sends {flooded['flood']['events']:,} `pause-stream`/`resume-stream` events "
        f"in one burst (answered in {flooded['flood']['seconds']} s, "
        f"{flooded['flood']['refused']:,} refused over `SOCKET_MESSAGE_RATE`).",
        "",
        "| viewers' chunk latency | chunks | p50 | p99 | max |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, row in (
        ("no flood", base["all"]),
        ("during the flood", during),
        ("whole flood run", flooded["all"]),
    ):
        lines.append(
            f"| {label} | {row['chunks']} | {row['p50Ms']} ms | {row['p99Ms']} ms | {row['maxMs']} ms |"
        )
    lines += ["", f"Target: p99 during the flood < {TARGET_P99_MS:g} ms: **{'pass' if ok else 'FAIL'}**."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=EVENTS)
    parser.add_argument("--tokens", type=int, default=400, help="tokens per viewer's session")
    parser.add_argument("--pin", action="store_true", help="server on core 0 (taskset)")
    parser.add_argument(
        "--path",
        choices=("direct", "engineio"),
        default="direct",
        help="which server code serves the WebSockets: the direct path, or python-socketio "
        "(SOCKETIO_DIRECT_WEBSOCKET=false)",
    )
    parser.add_argument("--idle", type=int, default=0, help="idle sockets instead of a flood")
    args = parser.parse_args(argv)
    settings = SETTINGS | {"SOCKETIO_DIRECT_WEBSOCKET": str(args.path == "direct").lower()}
    if args.idle:
        raise_nofile()
        settings |= {"SOCKETIO_PING_INTERVAL": "2", "MAX_CONNECTIONS_PER_ADDRESS": "100000"}
        with tempfile.TemporaryDirectory() as scratch:
            heartbeat: dict[str, Any] = {}
            for label, idle in (("alone", 0), ("beside idle sockets", args.idle)):
                log(f"heartbeat bench: {label}")
                with Server("ours", args.pin, Path(scratch), settings) as server:
                    heartbeat[label] = asyncio.run(run_streams(server.url, args.tokens, None, idle))["all"]
        print(json.dumps({"idle": args.idle, **heartbeat}, indent=2))
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        result: dict[str, Any] = {}
        for label, events in (("baseline", None), ("flood", args.events)):
            log(f"flood bench: {label}")
            with Server("ours", args.pin, Path(scratch), settings) as server:
                result[label] = asyncio.run(run_streams(server.url, args.tokens, events))
    print(json.dumps(result, indent=2))
    print()
    print(markdown(result, args.path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
