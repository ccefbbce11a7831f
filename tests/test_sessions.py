"""The session's state machine with no network: fake viewers, scripted providers."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from providers.base import ProviderError, StreamConfig
from providers.demo import demo_tokens
from server.core.manager import StreamingSessionManager
from server.core.registry import InMemorySessionRegistry
from server.core.session_view import SessionConflict, SessionState
from server.core.sessions import FlowLimits, Pacer, StreamingSession
from tests.fake_providers import CountingProvider, ScriptedProvider
from tests.helpers import make_settings, wait_until

CONFIG = StreamConfig(provider="demo", model="demo")


@dataclass
class FakeViewer:
    key: str = "fake"
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    held: int = 0
    closed: str | None = None

    def send(self, event: str, payload: dict[str, Any]) -> None:
        self.events.append((event, payload))

    def backlog(self) -> int:
        return self.held

    def close(self, reason: str) -> None:
        self.closed = reason

    def of(self, event: str) -> list[dict[str, Any]]:
        return [p for e, p in self.events if e == event]


def make_session(provider: Any, **limits: Any) -> StreamingSession:
    return StreamingSession(
        "00000000-0000-4000-8000-00000000000a", "u", CONFIG, provider, FlowLimits(**limits)
    )


async def finished(session: StreamingSession) -> None:
    await wait_until(lambda: not session.is_live)


async def test_tokens_held_back_by_a_lagging_viewer_are_coalesced():
    provider = ScriptedProvider([f"t{i} " for i in range(50)])
    session = make_session(provider, max_lag=4, stall_timeout=30)
    viewer = FakeViewer(held=10)
    session.add_viewer(viewer)
    session.start("p")
    await wait_until(lambda: provider.closed.is_set() or session.emitter.pending_chars > 100)
    assert viewer.of("chunk") == [], "nothing is emitted while the viewer lags"
    viewer.held = 0
    await finished(session)
    chunks = viewer.of("chunk")
    assert "".join(c["content"] for c in chunks) == "".join(f"t{i} " for i in range(50))
    assert len(chunks) < 50
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))


async def test_a_stalled_viewer_is_dropped_after_the_timeout():
    session = make_session(ScriptedProvider(["a", "b", "c"]), max_lag=1, stall_timeout=0.05)
    stalled, healthy = FakeViewer("stalled", held=5), FakeViewer("healthy")
    session.add_viewer(stalled)
    session.add_viewer(healthy)
    session.start("p")
    await finished(session)
    assert stalled.closed == "stalled"
    assert list(session.viewers) == ["healthy"]
    assert "".join(c["content"] for c in healthy.of("chunk")) == "abc"
    assert healthy.of("complete")


async def test_provider_error_mid_stream_keeps_sent_chunks():
    session = make_session(
        ScriptedProvider(["one ", "two "], error=ProviderError("upstream", "Upstream broke"))
    )
    viewer = FakeViewer()
    session.add_viewer(viewer)
    session.start("p")
    await finished(session)
    assert session.state is SessionState.FAILED
    assert session.text == "one two "
    assert viewer.of("stream-error") == [
        {"sessionId": session.id, "error": "Upstream broke", "code": "upstream"}
    ]
    assert viewer.of("stream-state")[-1]["state"] == "failed"
    assert session.status()["error"] == {"code": "upstream", "error": "Upstream broke"}


async def test_unexpected_exception_is_an_internal_error():
    session = make_session(ScriptedProvider(["x"], error=RuntimeError("secret details")))
    viewer = FakeViewer()
    session.add_viewer(viewer)
    session.start("p")
    await finished(session)
    (error,) = viewer.of("stream-error")
    assert error["code"] == "internal" and "secret" not in error["error"]


@pytest.mark.parametrize(("hang_after", "which"), [(0, "first token"), (2, "next token")])
async def test_silent_provider_times_out(hang_after, which):
    provider = ScriptedProvider(["a", "b", "c"], hang_after=hang_after)
    session = make_session(provider, first_token_timeout=0.1, token_idle_timeout=0.1)
    viewer = FakeViewer()
    session.add_viewer(viewer)
    session.start("p")
    await finished(session)
    (error,) = viewer.of("stream-error")
    assert error["code"] == "timeout" and which in error["error"]
    assert provider.closed.is_set()
    assert session.text == "ab"[:hang_after]


async def test_late_viewer_of_a_failed_session_gets_the_error():
    session = make_session(ScriptedProvider(["a"], error=ProviderError("rate_limited", "Slow down")))
    session.start("p")
    await finished(session)
    viewer = FakeViewer()
    position = session.add_viewer(viewer)
    assert position == {"state": "failed", "lastSeq": 0, "epoch": session.epoch}
    assert [e for e, _ in viewer.events] == ["chunk", "stream-error"]


async def test_commands_in_the_wrong_state_conflict():
    session = make_session(ScriptedProvider(["a"]))
    with pytest.raises(SessionConflict, match="not started"):
        session.pause()
    with pytest.raises(SessionConflict, match="not started"):
        session.resume()
    session.start("p")
    with pytest.raises(SessionConflict, match="already started"):
        session.start("p")
    await finished(session)
    with pytest.raises(SessionConflict, match="already completed"):
        await session.cancel()


async def test_pause_is_idempotent_and_resume_finishes():
    provider = CountingProvider(tokens_per_second=500)
    session = make_session(provider)
    viewer = FakeViewer()
    session.add_viewer(viewer)
    session.start("p")
    await wait_until(lambda: len(viewer.of("chunk")) >= 2)
    first = session.pause()
    assert session.pause() == first
    session.resume()
    session.resume()
    await finished(session)
    assert [s["state"] for s in viewer.of("stream-state")] == [
        "streaming",
        "paused",
        "streaming",
        "completed",
    ]


async def test_sweep_expires_finished_and_idle_sessions():
    settings = make_settings(session_ttl=60, session_idle_timeout=60)
    manager = StreamingSessionManager(settings, InMemorySessionRegistry())
    done = await manager.create_session("u", CONFIG)
    idle = await manager.create_session("u", CONFIG)
    done.start("p")
    await finished(done)
    await manager.sweep()
    assert manager.get_session(done.id) is done and idle.state is SessionState.CREATED
    await manager.sweep(time.monotonic() + 61)
    assert manager.get_session(done.id) is None, "finished sessions are released after the TTL"
    assert idle.state is SessionState.FAILED and idle.error == {
        "code": "idle",
        "error": "The session was idle for too long",
    }
    await manager.sweep(time.monotonic() + 122)
    assert len(manager.registry) == 0


async def test_shutdown_ends_live_sessions_with_shutdown_error():
    manager = StreamingSessionManager(make_settings(demo_tokens_per_second=50), InMemorySessionRegistry())
    session = await manager.create_session("u", CONFIG)
    viewer = FakeViewer()
    session.add_viewer(viewer)
    session.start("p")
    await wait_until(lambda: len(viewer.of("chunk")) >= 1)
    await manager.shutdown()
    assert viewer.of("stream-error")[0]["code"] == "shutdown"
    assert session.state is SessionState.FAILED


async def test_busy_server_pulls_a_batching_provider_once_per_chunk():
    """While the pacer is stretched, the demo is pulled once per chunk interval (each pull
    hands over every token already due) and every token still arrives, in order."""
    provider = CountingProvider(tokens_per_second=400)
    provider.batches_backlog = True
    busy = Pacer(base=0.005, ceiling=0.05, interval=0.05)
    session = StreamingSession(
        "00000000-0000-4000-8000-00000000000b",
        "u",
        replace(CONFIG, max_tokens=100),
        provider,
        FlowLimits(),
        busy,
    )
    viewer = FakeViewer()
    session.add_viewer(viewer)
    started = time.monotonic()
    session.start("p")
    await finished(session)
    chunks = viewer.of("chunk")
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    assert "".join(c["content"] for c in chunks) == "".join(demo_tokens("p", 100))
    # 100 tokens at 400/s take 0.25 s: about 6 chunks 50 ms apart, one pull each (+ the end).
    assert len(chunks) <= 8 and provider.pulled <= len(chunks) + 2
    assert time.monotonic() - started < 0.25 + 0.2, "pulling less often does not slow the stream"


async def test_idle_server_pulls_every_token_as_it_comes():
    provider = CountingProvider(tokens_per_second=400)
    provider.batches_backlog = True
    session = StreamingSession(
        "00000000-0000-4000-8000-00000000000c", "u", replace(CONFIG, max_tokens=40), provider, FlowLimits()
    )
    viewer = FakeViewer()
    session.add_viewer(viewer)
    session.start("p")
    await finished(session)
    assert provider.pulled >= 30, "an idle server does not batch"


async def test_a_session_handed_over_takes_no_start_or_resume_here():
    """Shutdown in Redis mode hands created and resumable sessions to the other processes
    while the listener still takes requests: a start or resume arriving then is refused
    (the client retries and reaches the new owner), not run here as well."""
    created = make_session(ScriptedProvider(["never"]))
    await created.hand_over()
    with pytest.raises(SessionConflict, match="moving to another process"):
        created.start("Explain streaming")
    assert created.state is SessionState.CREATED
