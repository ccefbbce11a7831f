"""The headline figures of every `make bench` run, kept in the repo (bench/history.csv: commit,
date, figure, value) and printed beside the previous run's, so that a change that costs
speed shows in its own commit.

``bench/run.py`` calls :func:`record` after a full run (not ``--quick`` and not an
``--out`` elsewhere); ``python bench/history.py`` prints the last two runs side by side.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

HISTORY = Path(__file__).resolve().parent / "history.csv"
FIELDS = ("commit", "date", "figure", "value")

#: (figure, scenario, path in the scenario's result for our server, higher is better)
HEADLINES: tuple[tuple[str, str, tuple[str, ...], bool], ...] = (
    ("a content chars/s", "a", ("charsPerSec",), True),
    ("b content chars/s", "b", ("charsPerSec",), True),
    ("b chunks", "b", ("chunks",), False),
    ("c chunk latency p99 ms", "c", ("latencyMs", "p99"), False),
    ("c server CPU s", "c", ("serverCpuSeconds",), False),
    ("d sessions on pace", "d", ("sessions",), True),
    ("e bytes per idle viewer", "e", ("bytesPerViewer",), False),
    ("f start -> first chunk p50 ms", "f", ("firstChunkMs", "p50"), False),
)


def _dig(value: Any, path: tuple[str, ...]) -> float | None:
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return float(value) if isinstance(value, int | float) else None


def _mean(runs: list[dict[str, Any]], path: tuple[str, ...]) -> float | None:
    values = [_dig(r, path) for r in runs]
    found = [v for v in values if v is not None]
    return sum(found) / len(found) if found and len(found) == len(values) else None


def figures(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The headline figures of a run of bench/run.py (``results[scenario]["ours"]``), and
    the ratio to the peer where the peer ran too."""
    out: dict[str, float] = {}
    for name, scenario, path, _ in HEADLINES:
        entry = results.get(scenario) or {}
        ours = _dig(entry.get("ours"), path)
        if ours is None:
            continue
        out[name] = ours
        peer = _dig(entry.get("peer"), path)
        if peer:
            out[f"{name}, ours/peer"] = round(ours / peer, 3)
    # ``--baseline``: the means over its alternating runs, ours over the older commit's.
    vs = results.get("vs") or {}
    for name, scenario, path, _ in HEADLINES:
        runs = vs.get(scenario) or {}
        ours, base = _mean(runs.get("ours", []), path), _mean(runs.get("baseline", []), path)
        if ours is not None and base:
            out[f"{name}, ours/{vs['rev']}"] = round(ours / base, 3)
    return out


def load() -> list[dict[str, str]]:
    if not HISTORY.exists():
        return []
    with HISTORY.open(newline="") as file:
        return list(csv.DictReader(file))


def previous_values(rows: list[dict[str, str]]) -> tuple[str | None, dict[str, float]]:
    """The last run in ``rows``: its commit and figures."""
    if not rows:
        return None, {}
    last = rows[-1]["commit"], rows[-1]["date"]
    return last[0], {r["figure"]: float(r["value"]) for r in rows if (r["commit"], r["date"]) == last}


def record(values: dict[str, float], commit: str, date: str) -> list[str]:
    """Append this run to bench/history.csv; lines comparing each figure to the last run."""
    rows = load()
    before_commit, before = previous_values(rows)
    lines = []
    better = {name: higher for name, _, _, higher in HEADLINES}
    for name, value in values.items():
        old = before.get(name)
        if old is None:
            lines.append(f"{name}: {value:g}")
            continue
        higher = better.get(name.split(", ours/")[0], True)
        change = (value - old) / old if old else 0.0
        worse = change < -0.05 if higher else change > 0.05
        mark = "  <- WORSE" if worse else ""
        lines.append(f"{name}: {value:g} (was {old:g} at {before_commit}, {change:+.0%}){mark}")
    new = not HISTORY.exists()
    with HISTORY.open("a", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        for name, value in values.items():
            writer.writerow({"commit": commit, "date": date, "figure": name, "value": str(round(value, 3))})
    return lines


def main() -> int:
    rows = load()
    commit, last = previous_values(rows)
    if commit is None:
        print("no history yet: run `make bench`")
        return 0
    older = [r for r in rows if r["commit"] != commit or r["figure"] not in last]
    before_commit, before = previous_values(older)
    for name, value in last.items():
        old = before.get(name)
        print(f"{name}: {value:g}" + (f" (was {old:g} at {before_commit})" if old is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
