"""Check that bench/peer-node/demo.js yields exactly the tokens of providers/demo.py.

Usage: .venv/bin/python bench/check_demo_parity.py  (exit status 1 on any difference)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from providers.demo import demo_tokens  # noqa: E402

PROMPTS = [
    "Explain streaming session 0",
    "Write about bench session 17 please",
    "",
    "   ",
    "the a about",
    "Tell me about Ünïcode wörds and émoji 🎉 in prompts",
    "x" * 1000,
    "Describe the history of the Mersenne Twister in detail, with examples and code",
    *[f"Benchmark prompt {i}: tell me about topic number {i * 7919}" for i in range(40)],
]


def main() -> int:
    failures = 0
    for max_tokens in (None, 1, 7, 300, 5000):
        arg = "-" if max_tokens is None else str(max_tokens)
        out = subprocess.run(
            ["node", str(BENCH / "peer-node" / "demo.js"), arg, *PROMPTS],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        node = json.loads(out)
        for prompt, got in zip(PROMPTS, node, strict=True):
            want = list(demo_tokens(prompt, max_tokens))
            if got != want:
                failures += 1
                first = next(
                    (i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
                    min(len(got), len(want)),
                )
                print(
                    f"MISMATCH max_tokens={max_tokens} prompt={prompt[:40]!r} at token {first}: "
                    f"node={got[first : first + 3]!r} python={want[first : first + 3]!r} "
                    f"(lengths {len(got)} vs {len(want)})"
                )
    print("demo parity:", "OK" if not failures else f"{failures} mismatches")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
