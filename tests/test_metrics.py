"""``GET /metrics``: scraped with a real HTTP client from the real server, after real viewers
(Socket.IO over every transport, the plain WebSocket, SSE) watched real sessions.

Counters are process-wide (several apps run in this one process), so the tests compare
them before and after; gauges belong to one app and are compared exactly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
import socketio
from prometheus_client.parser import text_string_to_metric_families

from providers.base import ProviderError
from tests.cluster_nodes import create as create_on
from tests.cluster_nodes import start as start_on
from tests.fake_providers import ScriptedProvider
from tests.helpers import (
    WAIT,
    LiveServer,
    ServerFactory,
    create_session,
    get_session,
    record_events,
    start_stream,
    stream_viewer,
    wait_until,
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(http: aiohttp.ClientSession, url: str) -> Samples:
    async with http.get(f"{url}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def wait_for_metrics(
    http: aiohttp.ClientSession, url: str, predicate: Callable[[Samples], bool], timeout: float = WAIT
) -> Samples:
    """Scrape until ``predicate`` holds (what it waits for has no event a client sees)."""
    async with asyncio.timeout(timeout):
        while True:
            samples = await scrape(http, url)
            if predicate(samples):
                return samples
            await asyncio.sleep(0.02)


async def socketio_viewer(server: LiveServer, session_id: str, transports: list[str]) -> socketio.AsyncClient:
    client = socketio.AsyncClient(reconnection=False)
    namespace = f"/stream/{session_id}"
    record_events(client, namespace)
    await client.connect(server.url, namespaces=[namespace], transports=transports, wait_timeout=WAIT)
    return client


async def test_a_session_watched_over_every_transport_moves_the_metrics(
    start_server: ServerFactory, http: aiohttp.ClientSession, sio_clients: Callable[[], socketio.AsyncClient]
) -> None:
    server = await start_server()
    before = await scrape(http, server.url)
    session_id = await create_session(http, server, user_id="user-metrics", maxTokens=60)
    session = server.manager.get_session(session_id)
    assert session is not None

    _, direct = await stream_viewer(sio_clients, server, session_id)
    polling = await socketio_viewer(server, session_id, ["polling"])
    upgraded = await socketio_viewer(server, session_id, ["polling", "websocket"])
    async with (
        http.ws_connect(f"{server.url}/ws/stream/{session_id}") as plain,
        http.get(f"{server.url}/api/streaming/{session_id}/events") as sse,
    ):
        assert sse.status == 200
        await wait_until(lambda: len(session.viewers) == 5)
        watching = await wait_for_metrics(
            http,
            server.url,
            lambda s: value(s, "streaming_viewers", transport="socketio_websocket", via="local") == 1,
        )
        for transport in ("direct", "socketio_websocket", "socketio_polling", "websocket", "sse"):
            assert value(watching, "streaming_viewers", transport=transport, via="local") == 1, transport
        assert value(watching, "streaming_viewers", transport="other", via="local") == 0
        assert value(watching, "streaming_sessions", state="created") == 1

        await start_stream(http, server, session_id, prompt="Explain metrics")
        await direct.wait_finished()
        after = await scrape(http, server.url)
        await plain.close()
    for client in (polling, upgraded):
        await client.eio.disconnect(abort=True)

    chunks = direct.chunks
    assert direct.completes and chunks
    assert value(after, "streaming_sessions", state="completed") == 1
    assert value(after, "streaming_sessions", state="streaming") == 0
    assert delta(before, after, "streaming_chunks_total") == len(chunks)
    assert delta(before, after, "streaming_chunk_bytes_total") == sum(
        len(c["content"].encode()) for c in chunks
    )
    # Every viewer joined before the start: each got every chunk live.
    assert delta(before, after, "streaming_chunk_sends_total") == 5 * len(chunks)
    assert delta(before, after, "streaming_chunk_latency_seconds_count") == len(chunks)
    assert delta(before, after, "streaming_chunk_latency_seconds_bucket", le="+Inf") == len(chunks)
    assert delta(before, after, "streaming_time_to_first_token_seconds_count", provider="demo") == 1
    assert delta(before, after, "streaming_viewer_joins_total", kind="new") == 5
    assert value(after, "streaming_event_loop_lag_seconds") >= 0
    assert value(after, "process_resident_memory_bytes") > 0

    async with http.get(f"{server.url}/metrics") as resp:
        text = await resp.text()
    for secret in (session_id, session_id[:8], "user-metrics", "Explain metrics"):
        assert secret not in text, "no session id, user id or prompt in a label"


async def test_joins_are_counted_by_how_the_viewer_is_caught_up(
    server: LiveServer, http: aiohttp.ClientSession, sio_clients: Callable[[], socketio.AsyncClient]
) -> None:
    session_id = await create_session(http, server, maxTokens=20)
    await start_stream(http, server, session_id)
    await wait_until(lambda: (s := server.manager.get_session(session_id)) is not None and not s.is_live)
    epoch = (await get_session(http, server, session_id))["epoch"]
    before = await scrape(http, server.url)
    for auth in (
        None,
        {"lastSeq": 1, "epoch": epoch},
        {"lastSeq": 1, "epoch": "0badf00d"},
        {"snapshot": True},
    ):
        _, viewer = await stream_viewer(sio_clients, server, session_id, auth=auth)
        await viewer.wait_finished()
    after = await scrape(http, server.url)
    for kind in ("new", "resume", "reset", "snapshot"):
        assert delta(before, after, "streaming_viewer_joins_total", kind=kind) == 1, kind


async def test_stream_errors_by_code_and_quota_refusals(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    provider = ScriptedProvider(["a", "b"], error=ProviderError("rate_limited", "Slow down"))
    server = await start_server({"demo": provider}, max_sessions_per_user=1)
    before = await scrape(http, server.url)
    session_id = await create_session(http, server, user_id="quota")
    await start_stream(http, server, session_id)
    await wait_until(lambda: (s := server.manager.get_session(session_id)) is not None and not s.is_live)
    async with http.post(f"{server.url}/api/streaming/session", json={"userId": "someone"}) as resp:
        assert resp.status == 200
    async with http.post(f"{server.url}/api/streaming/session", json={"userId": "someone"}) as resp:
        assert resp.status == 429
    after = await scrape(http, server.url)
    assert delta(before, after, "streaming_stream_errors_total", provider="demo", code="rate_limited") == 1
    assert delta(before, after, "streaming_rate_limited_total", scope="sessions_per_user") == 1
    assert value(after, "streaming_sessions", state="failed") == 1


@pytest.mark.parametrize("store", ["redis"], indirect=True)
async def test_viewers_of_a_session_run_by_another_process_count_as_relayed(
    start_server: ServerFactory, http: aiohttp.ClientSession, sio_clients: Callable[[], socketio.AsyncClient]
) -> None:
    owner, other = await start_server(), await start_server()
    session_id = await create_session(http, owner)
    await stream_viewer(sio_clients, other, session_id)
    on_other = await scrape(http, other.url)
    assert value(on_other, "streaming_viewers", transport="direct", via="relay") == 1
    assert value(on_other, "streaming_viewers", transport="direct", via="local") == 0
    assert value(on_other, "streaming_sessions", state="created") == 0, "owned by the other process"
    on_owner = await scrape(http, owner.url)
    assert value(on_owner, "streaming_viewers", transport="direct", via="relay") == 0
    assert value(on_owner, "streaming_sessions", state="created") == 1


async def test_takeovers_are_counted_by_outcome(
    nodes: Any, http: aiohttp.ClientSession, viewers: Any
) -> None:
    a, b = await nodes(2)
    before = await scrape(http, b.url)
    waiting = await create_on(http, a)
    streaming = await create_on(http, a, maxTokens=400, tokensPerSecond=50)
    _, on_b = await viewers(b, streaming)
    status, _ = await start_on(http, a, streaming)
    assert status == 200
    await on_b.wait_for(lambda: len(on_b.chunks) >= 10)
    a.kill()  # b claims both once a's lease lapses (a SIGTERM would end the idle one)
    after = await wait_for_metrics(
        http,
        b.url,
        lambda s: (
            delta(before, s, "streaming_takeovers_total", outcome="resumed") == 1
            and delta(before, s, "streaming_takeovers_total", outcome="adopted") == 1
        ),
    )
    assert delta(before, after, "streaming_takeovers_total", outcome="owner_lost") == 0
    assert value(after, "streaming_sessions", state="created") == 1, waiting
