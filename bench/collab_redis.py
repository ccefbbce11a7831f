"""What collaborative documents cost in Redis mode (issue 21): the per-update cost of
``RedisDocumentStore.write`` and ``follow`` for 1 and for 50 documents, and what a
replicated room costs a process that only follows a document (the price of "replicated
rooms" against "one owner process per document").

Two OS processes (on uvloop, as the server runs) and one redis-server: a writer (store
process ``w``: one pycrdt ``Doc`` per document, its updates prepared beforehand, written at
a steady pace) and a follower (store process ``f``) that follows each document, applying
every update into its own ``Doc`` as a replicated room does (or, in the "receives only"
rows, not). The follower reads all its documents with one ``XREAD`` (the store's way) or,
in the "per document" row, one blocking connection per document (the alternative).

    .venv/bin/python bench/collab_redis.py [--docs 1,50] [--rate 20] [--seconds 10]

Prints one JSON line per run and a Markdown table: write latency p50/p99, update latency
from ``write`` called to the update applied at the follower p50/p99, CPU per update of the
writer, of the follower and of redis-server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

import redis.asyncio as aioredis  # noqa: E402
import uvloop  # noqa: E402
from pycrdt import Doc, Text  # noqa: E402
from run import RedisServer, cpu_seconds, log  # noqa: E402

from server.cluster.collab_store import RedisDocumentStore  # noqa: E402

#: Characters per update: an AI batch of 50-100 ms at a model's pace, or a word typed.
UPDATE_CHARS = 24


def document_ids(count: int) -> list[str]:
    return [f"bench-{index}" for index in range(count)]


def prepare(count: int) -> list[bytes]:
    """``count`` updates of one document, each appending ``UPDATE_CHARS`` characters."""
    doc: Doc[Any] = Doc()
    text = doc.get("text", type=Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    for index in range(count):
        text += f"{index:06d}".ljust(UPDATE_CHARS, ".")
    return updates


def save(path: Path, result: dict[str, Any]) -> None:
    """A role's result for the parent (after the measured part: blocking is fine here)."""
    path.write_text(json.dumps(result))


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- the writer process ------------------------------------------------------


async def write_role(url: str, docs: int, rate: float, count: int, out: Path) -> None:
    store = RedisDocumentStore(url, process_id="w", timeout=5.0)
    started = time.perf_counter()
    prepared = prepare(count)
    prepare_s = (time.perf_counter() - started) / count
    sent: dict[str, list[float]] = {}
    latencies: list[float] = []

    async def one(document_id: str, offset: float) -> None:
        times = sent.setdefault(document_id, [])
        await asyncio.sleep(offset)
        begin = time.monotonic()
        for index, update in enumerate(prepared):
            due = begin + index / rate if rate else 0.0
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.monotonic()
            times.append(now)
            await store.write(document_id, update)
            latencies.append(time.monotonic() - now)

    cpu_before = time.process_time()
    ids = document_ids(docs)
    await asyncio.gather(*(one(d, (i / docs) / rate if rate else 0) for i, d in enumerate(ids)))
    cpu = time.process_time() - cpu_before
    await store.close()
    save(
        out,
        {
            "sent": sent,
            "writeP50Ms": percentile(latencies, 0.5) * 1000,
            "writeP99Ms": percentile(latencies, 0.99) * 1000,
            "writerCpuUsPerUpdate": cpu / len(latencies) * 1e6,
            "prepareUsPerUpdate": prepare_s * 1e6,
        },
    )


# -- the follower process ----------------------------------------------------


async def follow_role(url: str, docs: int, count: int, apply: bool, mode: str, out: Path) -> None:
    store = RedisDocumentStore(url, process_id="f", timeout=5.0)
    ids = document_ids(docs)
    arrived: dict[str, list[float]] = {d: [] for d in ids}
    rooms: dict[str, Doc[Any]] = {d: Doc() for d in ids}
    total = docs * count
    first, done = asyncio.Event(), asyncio.Event()
    received = 0

    def take(document_id: str, update: bytes) -> None:
        nonlocal received
        first.set()
        if apply:
            rooms[document_id].apply_update(update)
        arrived[document_id].append(time.monotonic())
        received += 1
        if received == total:
            done.set()

    async def via_store(document_id: str) -> None:
        async for update in store.follow(document_id):
            take(document_id, update)

    async def via_own_connection(document_id: str) -> None:
        """The alternative: each document its own blocking XREAD connection."""
        client = aioredis.Redis.from_url(url)
        key = f"{{collab:{document_id}}}:log"
        cursor = "0-0"
        try:
            while not done.is_set():
                result = await client.xread({key: cursor}, count=256, block=1000)
                for _, entries in result or []:
                    for entry_id, fields in entries:
                        cursor = entry_id
                        if fields[b"p"] != b"f":
                            take(document_id, fields[b"u"])
        finally:
            await client.aclose()

    for document_id in ids:  # nothing written yet: each read is empty and sets the cursor
        assert await store.read(document_id) is None
    follow = via_store if mode == "store" else via_own_connection
    tasks = [asyncio.create_task(follow(d)) for d in ids]
    await asyncio.sleep(0)  # every follow registered before the writer starts
    print("ready", flush=True)
    await asyncio.wait_for(first.wait(), 120)
    cpu_before = time.process_time()
    await asyncio.wait_for(done.wait(), 300)
    cpu = time.process_time() - cpu_before
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await store.close()
    save(out, {"arrived": arrived, "followerCpuUsPerUpdate": cpu / total * 1e6})


# -- the parent --------------------------------------------------------------


def run_once(
    url: str, redis_pid: int, docs: int, rate: float, seconds: float, apply: bool, mode: str
) -> dict:
    count = max(1, int(rate * seconds)) if rate else int(seconds)
    with tempfile.TemporaryDirectory() as tmp:
        wrote, followed = Path(tmp) / "w.json", Path(tmp) / "f.json"
        me = [sys.executable, __file__]
        common = ["--url", url, "--docs", str(docs), "--count", str(count)]
        options = ["--apply", "yes" if apply else "no", "--follow", mode, "--out", str(followed)]
        follower = subprocess.Popen(
            [*me, "--role", "follower", *common, *options],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert follower.stdout is not None
        if follower.stdout.readline().strip() != "ready":
            raise RuntimeError("the follower did not start")
        redis_before = cpu_seconds(redis_pid) or 0.0
        writer = subprocess.run([*me, "--role", "writer", *common, "--rate", str(rate), "--out", str(wrote)])
        if writer.returncode != 0 or follower.wait(timeout=600) != 0:
            raise RuntimeError("a bench process failed")
        redis_cpu = (cpu_seconds(redis_pid) or 0.0) - redis_before
        w, f = json.loads(wrote.read_text()), json.loads(followed.read_text())
    latencies = [
        (arrival - sent) * 1000
        for document_id, times in w["sent"].items()
        for sent, arrival in zip(times, f["arrived"][document_id], strict=True)
    ]
    updates = docs * count
    return {
        "docs": docs,
        "updates": updates,
        "ratePerDoc": rate,
        "follow": mode,
        "apply": apply,
        "writeP50Ms": round(w["writeP50Ms"], 2),
        "writeP99Ms": round(w["writeP99Ms"], 2),
        "updateP50Ms": round(percentile(latencies, 0.5), 2),
        "updateP99Ms": round(percentile(latencies, 0.99), 2),
        "writerCpuUsPerUpdate": round(w["writerCpuUsPerUpdate"], 1),
        "followerCpuUsPerUpdate": round(f["followerCpuUsPerUpdate"], 1),
        "redisCpuUsPerUpdate": round(redis_cpu / updates * 1e6, 1),
        "prepareUsPerUpdate": round(w["prepareUsPerUpdate"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--role", choices=["parent", "writer", "follower"], default="parent")
    parser.add_argument("--url")
    parser.add_argument(
        "--docs", default="1,50", help="document counts to run (parent) or this run's (roles)"
    )
    parser.add_argument("--rate", type=float, default=20.0, help="updates per second per document")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--apply", choices=["yes", "no"], default="yes")
    parser.add_argument("--follow", choices=["store", "per-document"], default="store")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.role == "writer":
        uvloop.run(write_role(args.url, int(args.docs), args.rate, args.count, args.out))
        return
    if args.role == "follower":
        uvloop.run(
            follow_role(args.url, int(args.docs), args.count, args.apply == "yes", args.follow, args.out)
        )
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp), False) as redis:
        for docs in (int(d) for d in args.docs.split(",")):
            rate = args.rate if docs > 1 else args.rate * 10
            runs = [("store", True), ("store", False)]
            if docs > 1:
                runs.append(("per-document", False))
            for mode, apply in runs:
                redis.flush()
                result = run_once(redis.url, redis.proc.pid, docs, rate, args.seconds, apply, mode)
                log(json.dumps(result))
                results.append(result)
    print(
        "| documents | updates/s | follower | write p50/p99 ms | write→follower p50/p99 ms "
        "| CPU µs/update: writer | follower | redis |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    for r in results:
        how = (
            ("one XREAD, applies" if r["apply"] else "one XREAD, receives only")
            if r["follow"] == "store"
            else ("XREAD per document, receives only")
        )
        rate = r["docs"] * r["ratePerDoc"]
        print(
            f"| {r['docs']} | {rate:.0f} | {how} | {r['writeP50Ms']} / {r['writeP99Ms']} "
            f"| {r['updateP50Ms']} / {r['updateP99Ms']} | {r['writerCpuUsPerUpdate']} "
            f"| {r['followerCpuUsPerUpdate']} | {r['redisCpuUsPerUpdate']} |"
        )


if __name__ == "__main__":
    main()
