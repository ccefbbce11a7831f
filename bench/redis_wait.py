"""What ``REDIS_WAIT_REPLICAS`` costs (issue 22): the journal's write path alone, one script
call per batch (``RedisStore.append``, as the writer sends it), without and with one
``WAIT 1 <timeout>`` after each batch, against a primary with one replica on this machine.

Batches go one after the other, as the journal sends them (the next once the previous is
answered), each carrying one chunk of each of ``--sessions`` sessions. For each batch size
the table gives the round trip of a batch (what a viewer waits for a chunk on top of the
write) and the Python CPU per chunk; WAIT adds one replica acknowledgement per batch, not
per chunk, so its cost per chunk falls as batches grow.

    .venv/bin/python bench/redis_wait.py [--rounds 300] [--write]

``--write`` puts the section into bench/RESULTS.md (after bench/run.py's marker, replacing
an earlier one of the same title).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import redis  # noqa: E402
from autocomplete import write_section  # noqa: E402
from run import free_port, log  # noqa: E402

from server.cluster.redis_store import Append, RedisStore, chunk_id  # noqa: E402

TITLE = "## Added at stop 24 (issue 22): REDIS_WAIT_REPLICAS, one WAIT per batch"
TTL = 600_000


def start_redis(workdir: Path, port: int, primary: int | None = None) -> subprocess.Popen[bytes]:
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--dir", str(workdir)]
    if primary is not None:
        command += ["--replicaof", "127.0.0.1", str(primary)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL)


def wait_replica_online(primary: int, timeout: float = 30.0) -> None:
    client = redis.Redis(port=primary, decode_responses=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            info = client.info("replication")
            if any(k.startswith("slave") and v.get("state") == "online" for k, v in info.items()):
                return
        except redis.RedisError:
            pass
        time.sleep(0.05)  # polled: a replica coming up has no event to wait on
    raise RuntimeError("the replica did not come online")


async def trial(url: str, sessions: int, rounds: int, wait: int, timeout_ms: int) -> dict[str, Any]:
    store = RedisStore(url, timeout=5.0, wait_replicas=wait, wait_timeout_ms=timeout_ms)
    try:
        await store.redis.flushall()
        ids = [f"bench-{i:05d}" for i in range(sessions)]
        for session_id in ids:
            await store.put_session(session_id, {"userId": "u", "epoch": "e"}, "p", TTL)
        # The replica catches up with the set-up (FLUSHALL, the sessions) before the clock starts.
        await store.redis.execute_command("WAIT", 1, 5000)
        latencies = []
        cpu_before, wall_before = time.process_time(), time.perf_counter()
        for seq in range(rounds):
            after = chunk_id(seq - 1) if seq else "0-0"
            fields = ("c", "token ", "t", "0", "m", "{}")
            batch = [Append(s, "1", chunk_id(seq), fields, ("lastSeq", str(seq)), after) for s in ids]
            began = time.perf_counter()
            results = await store.append(batch, TTL)
            latencies.append(time.perf_counter() - began)
            assert all(r == chunk_id(seq) for r in results), results[:3]
        cpu = time.process_time() - cpu_before
        wall = time.perf_counter() - wall_before
    finally:
        await store.close()
    latencies.sort()
    chunks = sessions * rounds
    return {
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[int(0.99 * (len(latencies) - 1))] * 1000,
        "cpu_us": cpu / chunks * 1e6,
        "chunks_per_s": chunks / wall,
        "short": store.unreplicated,
    }


def section(rows: list[tuple[int, dict[str, Any], dict[str, Any]]], rounds: int, timeout_ms: int) -> str:
    lines = [
        TITLE,
        "",
        f"`.venv/bin/python bench/redis_wait.py --rounds {rounds}`: the journal's append (one EVALSHA per"
        f" batch, one chunk per session in it) against a primary and one replica on this machine, batches"
        f" one after the other, without and with `WAIT 1 {timeout_ms}` after each batch.",
        "",
        "| sessions per batch | batch round trip p50 / p99, ms: no WAIT | with WAIT"
        " | Python CPU per chunk, µs: no WAIT | with WAIT | chunks/s: no WAIT | with WAIT |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for sessions, plain, waited in rows:
        lines.append(
            f"| {sessions} | {plain['p50']:.2f} / {plain['p99']:.2f}"
            f" | {waited['p50']:.2f} / {waited['p99']:.2f}"
            f" | {plain['cpu_us']:.1f} | {waited['cpu_us']:.1f}"
            f" | {plain['chunks_per_s']:,.0f} | {waited['chunks_per_s']:,.0f} |"
        )
    short = sum(waited["short"] for _, _, waited in rows)
    lines += [
        "",
        f"WAIT answered with fewer replicas than asked for {short} batches. The cost is one replica"
        " acknowledgement per batch: a round trip on top of the write, whatever the batch carries.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--sessions", default="1,64,512", help="sessions per batch, comma-separated")
    parser.add_argument("--timeout-ms", type=int, default=100)
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sessions.split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        primary_port, replica_port = free_port(), free_port()
        (Path(scratch) / "p").mkdir()
        (Path(scratch) / "r").mkdir()
        primary = start_redis(Path(scratch) / "p", primary_port)
        replica = start_redis(Path(scratch) / "r", replica_port, primary_port)
        try:
            wait_replica_online(primary_port)
            url = f"redis://127.0.0.1:{primary_port}/0"
            rows = []
            for sessions in sizes:
                plain = asyncio.run(trial(url, sessions, args.rounds, 0, args.timeout_ms))
                waited = asyncio.run(trial(url, sessions, args.rounds, 1, args.timeout_ms))
                log(f"  {sessions} sessions: no WAIT {plain}, WAIT {waited}")
                rows.append((sessions, plain, waited))
        finally:
            for process in (replica, primary):
                process.terminate()
                process.wait(timeout=10)
    text = section(rows, args.rounds, args.timeout_ms)
    print(text)
    if args.write:
        write_section(TITLE, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
