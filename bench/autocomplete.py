"""Autocomplete's start -> first chunk beside a plain session's (issue 19).

One fresh server (demo provider, pinned to core 0 like the other benches), then ROUNDS
rounds in turn, each: create a session, join it as a Socket.IO viewer, POST start and time
until its first chunk arrives; the rounds alternate a plain prompt and the ``complete``
action with the text before the cursor, so both see the same machine. The demo answers at
once (tokensPerSecond 0), so what is measured is the server's own path: the template,
the context cut and the provider call.

    .venv/bin/python bench/autocomplete.py [--rounds 400] [--write]

``--write`` puts the section into bench/RESULTS.md (after the marker of bench/run.py,
replacing an earlier one); ``make bench`` runs it so.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import socketio
from run import KEPT_MARKER, Server  # bench/run.py: the server process

BENCH = Path(__file__).resolve().parent
TITLE = "## Added at stop 23 (issue 19): autocomplete, start -> first chunk"
BEFORE = "Streaming text into an editor is mostly about latency. " * 40 + "The writer pauses and"


async def first_chunk(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> float:
    async with http.post(
        f"{url}/api/streaming/session", json={"userId": "bench", "config": {"tokensPerSecond": 0}}
    ) as r:
        session_id = (await r.json())["sessionId"]
    client = socketio.AsyncClient(reconnection=False)
    namespace = f"/stream/{session_id}"
    arrived = asyncio.Event()
    client.on("chunk", lambda _: arrived.set(), namespace=namespace)
    await client.connect(url, namespaces=[namespace], transports=["websocket"])
    try:
        began = time.perf_counter()
        async with http.post(f"{url}/api/streaming/{session_id}/start", json=body) as r:
            assert r.status == 200, await r.text()
        await asyncio.wait_for(arrived.wait(), 10)
        return (time.perf_counter() - began) * 1000
    finally:
        await client.disconnect()


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {
        "p50": statistics.median(ordered),
        "p90": pick(0.9),
        "p99": pick(0.99),
        "mean": statistics.fmean(ordered),
    }


async def measure(url: str, rounds: int) -> dict[str, dict[str, float]]:
    plain: list[float] = []
    complete: list[float] = []
    body_plain = {"prompt": "Explain streaming"}
    body_complete = {"action": "complete", "context": {"before": BEFORE, "after": ""}}
    async with aiohttp.ClientSession() as http:
        for _ in range(20):  # warm-up
            await first_chunk(http, url, body_plain)
            await first_chunk(http, url, body_complete)
        for _ in range(rounds):
            plain.append(await first_chunk(http, url, body_plain))
            complete.append(await first_chunk(http, url, body_complete))
    return {"plain": summary(plain), "complete": summary(complete)}


def section(result: dict[str, dict[str, float]], rounds: int) -> str:
    rows = [
        TITLE,
        "",
        f"`.venv/bin/python bench/autocomplete.py --rounds {rounds}`: one server (demo provider,"
        " core 0), rounds in turn alternating a plain prompt and `complete` with 2,000"
        " characters before the cursor; from POST start to the viewer's first chunk, as the"
        " client sees it.",
        "",
        "| ms | plain session | `complete` | difference |",
        "|---|---:|---:|---:|",
    ]
    for key in ("p50", "p90", "p99", "mean"):
        plain, complete = result["plain"][key], result["complete"][key]
        rows.append(f"| {key} | {plain:.2f} | {complete:.2f} | {complete - plain:+.2f} |")
    return "\n".join(rows) + "\n"


def write_section(title: str, text: str) -> None:
    """Put ``text`` (a section headed ``title``) into bench/RESULTS.md after bench/run.py's
    marker, in place of an earlier section with the same title."""
    path = BENCH / "RESULTS.md"
    current = path.read_text()
    if KEPT_MARKER not in current:
        current = current.rstrip("\n") + "\n\n" + KEPT_MARKER + "\n"
    if title in current:
        start = current.index(title)
        end = current.find("\n## ", start + len(title))
        rest = "\n" + current[end + 1 :] if end >= 0 else ""
        current = current[:start] + text.rstrip("\n") + "\n" + rest
    else:
        current = current.rstrip("\n") + "\n\n" + text
    path.write_text(current)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the server to core 0")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir, Server("ours", not args.no_pin, Path(workdir)) as server:
        result = asyncio.run(measure(server.url, args.rounds))
    text = section(result, args.rounds)
    print(text)
    if args.write:
        write_section(TITLE, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
