"""Collaborative documents under load (issue 21): DOCS documents, COLLABORATORS y-websocket
clients on each, one AI answer written into each by the server as a peer.

One fresh server (demo provider, memory document store) pinned to core 0; the
collaborators (bench/collab_load.mjs, one Node process) on core 1. Figures: the time from
a chunk being made (its ``timestamp``) to its last character in a collaborator's
document, p50/p99 over every chunk and collaborator, and the server's CPU per update the
AI wrote (one update: one transaction, sent to every collaborator of its document and
stored).

    .venv/bin/python bench/collab.py [--docs 50] [--collaborators 5] [--tokens 200] [--write]

``--write`` puts the section into bench/RESULTS.md (after bench/run.py's marker, replacing
an earlier one of the same title); ``make bench`` runs it so.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from autocomplete import write_section
from run import BENCH, Server, cpu_seconds, log, pin, raise_nofile

TITLE = "## Added at stop 24 (issue 21): collaborative documents, the AI as a peer"


def measure(args: argparse.Namespace, pinning: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as workdir:
        settings = {"COLLAB_STORE": "memory"}
        with Server("ours", pinning, Path(workdir), settings) as server:
            before = cpu_seconds(server.pid) or 0.0
            cmd = [
                *pin(1, pinning),
                "node",
                str(BENCH / "collab_load.mjs"),
                server.url,
                *("--docs", str(args.docs), "--collaborators", str(args.collaborators)),
                *("--tokens", str(args.tokens), "--tps", str(args.tps)),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
            after = cpu_seconds(server.pid) or 0.0
    if out.returncode != 0 or not out.stdout.strip():
        raise SystemExit(f"collab_load failed ({out.returncode}): {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    result["serverCpuSeconds"] = round(after - before, 3)
    written = result["aiUpdates"] / max(1, args.collaborators)
    result["cpuPerAiUpdateMs"] = round(1000 * result["serverCpuSeconds"] / max(1.0, written), 3)
    return result


def section(result: dict[str, Any], args: argparse.Namespace) -> str:
    lat = result["latencyMs"]
    return "\n".join(
        [
            TITLE,
            "",
            f"`.venv/bin/python bench/collab.py --docs {args.docs} --collaborators {args.collaborators}"
            f" --tokens {args.tokens}`: one server (core 0, demo provider at {args.tps:g} tokens/s, memory"
            " document store), the collaborators in one Node process (npm `y-websocket`, core 1). Latency:"
            " a chunk made on the server -> its last character in a collaborator's document, every chunk"
            " at every collaborator. CPU: the server's, from the first start to the last answer, over the"
            " updates the AI wrote (each sent to every collaborator of its document and stored).",
            "",
            "| documents | collaborators each | answers completed | AI updates written | p50 ms | p90 ms"
            " | p99 ms | max ms | server CPU, s | CPU per AI update, ms |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {result['documents']} | {result['collaborators']} | {result['completed']} |"
            f" {round(result['aiUpdates'] / max(1, args.collaborators))} | {lat['p50']} | {lat['p90']} |"
            f" {lat['p99']} | {lat['max']} | {result['serverCpuSeconds']} | {result['cpuPerAiUpdateMs']} |",
            "",
            f"Errors: {result['errors'] or 'none'}.",
            "",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=50)
    parser.add_argument("--collaborators", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--tps", type=float, default=40.0)
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args()
    raise_nofile()
    result = measure(args, not args.no_pin)
    log(f"collab: {json.dumps(result)}")
    text = section(result, args)
    print(text)
    if args.write:
        write_section(TITLE, text)
    return 0 if result["completed"] == args.docs and not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
