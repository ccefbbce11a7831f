"""10,000 sessions come and go: once their TTL passes, the process is back near where it
started, and a second round ends no higher than the first (``bench/memory.py`` gives the
figures; this holds it in ``make test``)."""

from __future__ import annotations

from bench.memory import rounds as run_rounds
from bench.memory import server

SESSIONS = 10_000
MIB = 1024 * 1024
#: What the process may keep after the first round (the allocator keeps freed memory for
#: reuse; measured: about 15 MiB), and may add in the second (measured: nothing).
FIRST_ROUND_MARGIN = 40 * MIB
SECOND_ROUND_MARGIN = 8 * MIB


async def test_ten_thousand_sessions_leave_nothing_behind_once_expired() -> None:
    with server({"SESSION_TTL": "1", "SWEEP_INTERVAL": "0.25"}) as process:
        result = await run_rounds(process, SESSIONS, count=2, max_tokens=50)
    figures = result.summary()
    first, second = result.swept_rss
    assert first <= result.start_rss + FIRST_ROUND_MARGIN, figures
    assert second <= first + SECOND_ROUND_MARGIN, figures
