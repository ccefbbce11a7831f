"""Awareness across processes in Redis mode (docs/collaboration.md): a publisher
process 'w' publishes y-protocols awareness updates for N documents at a steady pace with
RedisDocumentStore.publish_awareness; follower process 'f' follows each document with an
awareness callback that applies the update into a pycrdt Awareness (as a room does).
Reports publish->applied latency p50/p99 and CPU per update of each process and of redis.

    .venv/bin/python bench/collab_awareness.py --docs 1,50 --rate 20 --seconds 10
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import uvloop  # noqa: E402
from pycrdt import Awareness, Doc  # noqa: E402
from run import RedisServer, cpu_seconds, log  # noqa: E402

from server.cluster.collab_store import RedisDocumentStore  # noqa: E402


def ids(n: int) -> list[str]:
    return [f"aw-{i}" for i in range(n)]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


async def publisher(url: str, docs: int, rate: float, count: int, out: Path) -> None:
    store = RedisDocumentStore(url, process_id="w", timeout=5.0)
    sent: dict[str, float] = {}

    async def one(document_id: str, offset: float) -> None:
        aw = Awareness(Doc())
        await asyncio.sleep(offset)
        begin = time.monotonic()
        for i in range(count):
            delay = begin + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            aw.set_local_state(
                {
                    "user": {"name": "Writer", "color": "#0ea5e9"},
                    "cursor": {"anchor": f"AQLvmI6lDAI{i:08d}", "head": f"AQLvmI6lDAI{i:08d}"},
                }
            )
            update = aw.encode_awareness_update([aw.client_id])
            sent[f"{document_id}/{update.hex()}"] = time.monotonic()
            store.publish_awareness(document_id, update)

    cpu = time.process_time()
    await asyncio.gather(*(one(d, i / docs / rate) for i, d in enumerate(ids(docs))))
    await store.close()  # waits for what is queued
    cpu = time.process_time() - cpu
    out.write_text(json.dumps({"sent": sent, "cpu": cpu / (docs * count) * 1e6}))  # noqa: ASYNC240 (once, at the end)


async def follower(url: str, docs: int, count: int, out: Path) -> None:
    store = RedisDocumentStore(url, process_id="f", timeout=5.0)
    arrived: dict[str, float] = {}
    total = docs * count
    first, done = asyncio.Event(), asyncio.Event()
    followers = []
    for d in ids(docs):
        aw = Awareness(Doc())

        def take(update: bytes, d: str = d, aw: Awareness = aw) -> None:
            first.set()
            aw.apply_awareness_update(update, "remote")
            arrived[f"{d}/{update.hex()}"] = time.monotonic()
            if len(arrived) == total:
                done.set()

        await store.read(d)
        followers.append(store.follow(d, awareness=take))
    print("ready", flush=True)
    await asyncio.wait_for(first.wait(), 120)
    cpu = time.process_time()
    await asyncio.wait_for(done.wait(), 300)
    cpu = time.process_time() - cpu
    for f in followers:
        await f.aclose()
    await store.close()
    out.write_text(json.dumps({"arrived": arrived, "cpu": cpu / total * 1e6}))  # noqa: ASYNC240 (once, at the end)


def run_once(url: str, redis_pid: int, docs: int, rate: float, seconds: float) -> dict[str, Any]:
    count = int(rate * seconds)
    with tempfile.TemporaryDirectory() as tmp:
        w, f = Path(tmp) / "w.json", Path(tmp) / "f.json"
        common = ["--url", url, "--docs", str(docs), "--count", str(count)]
        fp = subprocess.Popen(
            [sys.executable, __file__, "--role", "follower", *common, "--out", str(f)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert fp.stdout is not None and fp.stdout.readline().strip() == "ready"
        before = cpu_seconds(redis_pid) or 0.0
        subprocess.run(
            [sys.executable, __file__, "--role", "publisher", *common, "--rate", str(rate), "--out", str(w)],
            check=True,
        )
        assert fp.wait(timeout=600) == 0
        redis_cpu = (cpu_seconds(redis_pid) or 0.0) - before
        wr, fr = json.loads(w.read_text()), json.loads(f.read_text())
    lat = [(fr["arrived"][k] - t) * 1000 for k, t in wr["sent"].items()]
    n = docs * count
    return {
        "docs": docs,
        "updatesPerS": docs * rate,
        "p50Ms": round(pct(lat, 0.5), 2),
        "p99Ms": round(pct(lat, 0.99), 2),
        "publisherCpuUs": round(wr["cpu"], 1),
        "followerCpuUs": round(fr["cpu"], 1),
        "redisCpuUs": round(redis_cpu / n * 1e6, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--role", default="parent")
    p.add_argument("--url")
    p.add_argument("--docs", default="1,50")
    p.add_argument("--rate", type=float, default=20.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    if a.role == "publisher":
        uvloop.run(publisher(a.url, int(a.docs), a.rate, a.count, a.out))
        return
    if a.role == "follower":
        uvloop.run(follower(a.url, int(a.docs), a.count, a.out))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp), False) as redis:
        for docs in (int(d) for d in a.docs.split(",")):
            for rate in [a.rate * 10] if docs == 1 else [a.rate, a.rate * 5]:
                redis.flush()
                r = run_once(redis.url, redis.proc.pid, docs, rate, a.seconds)
                log(json.dumps(r))
                rows.append(r)
    print(
        "| documents | awareness updates/s | publish→applied p50/p99 ms"
        " | CPU µs/update: publisher | follower | redis |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['docs']} | {r['updatesPerS']:.0f} | {r['p50Ms']} / {r['p99Ms']}"
            f" | {r['publisherCpuUs']} | {r['followerCpuUs']} | {r['redisCpuUs']} |"
        )


if __name__ == "__main__":
    main()
