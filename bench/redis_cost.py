"""What Redis mode costs beside memory mode (issue 20): the same paced load on one process,
in memory and on Redis, alternating, with the server's and redis-server's CPU and the
chunk latency the viewers see.

Each round runs both modes on a fresh server process pinned to core 0; redis-server and
the load generator (bench/loadgen, one Socket.IO viewer per session) run on core 1.

    bash bench/run.sh --help >/dev/null   # once: installs bench/loadgen's packages
    .venv/bin/python bench/redis_cost.py [--sessions 1500] [--tokens 200] [--rounds 3] [--write]

``--write`` puts the section into bench/RESULTS.md (after bench/run.py's marker, replacing
an earlier one of the same title); ``make bench`` runs it so.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from autocomplete import write_section
from run import TPS, RedisServer, Server, cpu_seconds, log, paced_limit, raise_nofile, run_loadgen

TITLE = "## Added at stop 23 (issue 20): Redis mode beside memory mode, paced load"


def one(
    workdir: Path, redis: RedisServer, mode: str, sessions: int, tokens: int, ramp: float
) -> dict[str, Any]:
    settings = {"REDIS_URL": redis.url} if mode == "redis" else {}
    redis.flush()
    redis_before = cpu_seconds(redis.proc.pid) or 0.0
    with Server("ours", True, workdir, settings) as server:
        result = run_loadgen(
            server,
            True,
            f"redis-cost-{mode}",
            60 + 2 * tokens / TPS + sessions / 50,
            mode="stream",
            sessions=sessions,
            tokens=tokens,
            tps=TPS,
            ramp=ramp,
            stream_timeout=paced_limit(tokens, ramp),
        )
    result["redisCpuSeconds"] = round((cpu_seconds(redis.proc.pid) or 0.0) - redis_before, 3)
    lat = result.get("latencyMs") or {}
    log(
        f"  {mode}: server CPU {result.get('serverCpuSeconds')} s, redis CPU {result['redisCpuSeconds']} s, "
        f"p99 {lat.get('p99')} ms, chunks {result.get('chunks')}, "
        f"completed {result.get('completed')}/{sessions}, "
        f"gaps {result.get('gaps')} dups {result.get('duplicates')}"
    )
    return result


def section(
    runs: dict[str, list[dict[str, Any]]], sessions: int, tokens: int, rounds: int, label: str
) -> str:
    def total(mode: str, key: str) -> float:
        return sum(float(r.get(key) or 0) for r in runs[mode])

    def p99s(mode: str) -> list[float]:
        return [float((r.get("latencyMs") or {}).get("p99") or 0) for r in runs[mode]]

    memory_cpu = total("memory", "serverCpuSeconds")
    redis_server_cpu, redis_cpu = total("redis", "serverCpuSeconds"), total("redis", "redisCpuSeconds")
    rows = [
        TITLE,
        "",
        f"`.venv/bin/python bench/redis_cost.py --sessions {sessions} --tokens {tokens} --rounds {rounds}`"
        f" at {label}: {sessions:,} sessions x {tokens} tokens at {TPS:g} tokens/s, one process"
        " (core 0), redis-server and the load generator on core 1; memory and Redis mode"
        f" alternating, {rounds} rounds, CPU summed over the rounds.",
        "",
        "| | memory mode | Redis mode |",
        "|---|---:|---:|",
        f"| server CPU, s | {memory_cpu:.1f} | {redis_server_cpu:.1f} |",
        f"| redis-server CPU, s | - | {redis_cpu:.1f} |",
        f"| chunk latency p99, ms (median of rounds) | {statistics.median(p99s('memory')):.0f} |"
        f" {statistics.median(p99s('redis')):.0f} |",
        f"| completed | {int(total('memory', 'completed'))} | {int(total('redis', 'completed'))} |",
        f"| seq gaps / duplicates | {int(total('memory', 'gaps'))} / {int(total('memory', 'duplicates'))} |"
        f" {int(total('redis', 'gaps'))} / {int(total('redis', 'duplicates'))} |",
        "",
        f"Efficiency (memory-mode CPU / Redis-mode server + redis-server CPU):"
        f" **{memory_cpu / max(redis_server_cpu + redis_cpu, 1e-9):.2f}**.",
    ]
    return "\n".join(rows) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1500)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ramp", type=float, default=1.0)
    parser.add_argument("--label", default="this commit", help="what is measured, for the section")
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args()
    raise_nofile()
    runs: dict[str, list[dict[str, Any]]] = {"memory": [], "redis": []}
    with tempfile.TemporaryDirectory() as scratch, RedisServer(Path(scratch), True, core=1) as redis:
        for round_ in range(args.rounds):
            log(f"round {round_ + 1}/{args.rounds}")
            for mode in ("memory", "redis"):
                runs[mode].append(one(Path(scratch), redis, mode, args.sessions, args.tokens, args.ramp))
    text = section(runs, args.sessions, args.tokens, args.rounds, args.label)
    print(text)
    if args.write:
        write_section(TITLE, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
