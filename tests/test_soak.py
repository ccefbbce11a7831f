"""`make soak` in small (issue 12): the same soak code (bench/soak.py) against a real
``python -m server`` process, with the same mix of viewers (raw and python-socketio
WebSocket, long-polling, slow readers, 10% dropping and rejoining with ``lastSeq``) at
40 tokens/s; nothing may be lost, duplicated or out of order."""

from __future__ import annotations

import pytest

from bench.soak import KINDS, SoakConfig, run_soak

CONFIG = SoakConfig(
    sessions=40,
    seconds=15.0,
    session_seconds=6.0,
    ramp_seconds=2.0,
    drop_after=(1.0, 4.0),
    reconnect_after=(0.1, 1.0),
    slow_phase=(1.0, 3.0),
    fast_phase=(0.5, 1.5),
    finish_timeout=20.0,
    workers=1,
)


@pytest.mark.timeout(90)
async def test_short_soak_loses_nothing() -> None:
    figures = await run_soak(CONFIG)

    assert figures["integrity"] == {
        "lost": 0,
        "duplicated": 0,
        "outOfOrder": 0,
        "pastTheEnd": 0,
        "textMismatches": 0,
        "totalChunksMismatches": 0,
        "unverified": 0,
    }, figures["failures"]
    assert figures["ok"]
    assert figures["unexpectedErrors"] == {}, (figures["failures"], figures["server"]["tail"])
    assert figures["server"]["aliveAtEnd"]
    sessions = figures["sessions"]
    # New sessions replaced finished ones, and every one ended with `complete`.
    assert sessions["started"] > CONFIG.sessions
    assert sessions["completed"] + sessions["cancelledAtEnd"] == sessions["started"]
    viewers = figures["viewers"]
    assert all(viewers["byKind"].get(kind, 0) > 0 for kind in KINDS), viewers
    assert sum(viewers["drops"].values()) > 0 and sum(viewers["reconnects"].values()) > 0, viewers
    assert figures["chunks"]["logged"] > 0
    assert figures["chunks"]["received"] >= figures["chunks"]["logged"]
