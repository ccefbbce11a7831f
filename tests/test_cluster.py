"""Several real server processes on one real Redis (``REDIS_URL``): any process serves any
request for any session, commands reach the owner, and a dead owner's streams that cannot
be resumed end with ``owner_lost`` on every other process, their logged chunks intact
(failover of resumable streams: tests/test_failover.py)."""

from __future__ import annotations

import asyncio
import os

import pytest

from server.cluster.redis_store import RedisStore
from tests.cluster_nodes import OPENAI_KEY, assert_contiguous, create, post, start, status_of
from tests.fake_upstream import FakeUpstream, Script
from tests.helpers import WAIT


async def test_create_on_a_start_on_b_view_on_c(nodes, http, viewers):
    a, b, c = await nodes(3)
    session_id = await create(http, a, maxTokens=120)
    _, on_c = await viewers(c, session_id)
    _, polling_on_b = await viewers(b, session_id, transport="polling")
    assert await start(http, b, session_id) == (200, {"status": "started"})
    await on_c.wait_finished()
    await polling_on_b.wait_finished()
    everywhere = [await status_of(http, node, session_id) for node in (a, b, c)]
    assert everywhere[0] == everywhere[1] == everywhere[2], "GET answers the same on every process"
    final = everywhere[0]
    assert final["state"] == "completed"
    assert_contiguous(on_c, final["chunks"])
    assert_contiguous(polling_on_b, final["chunks"])
    assert on_c.text == polling_on_b.text == final["text"]
    assert on_c.completes[0]["totalChunks"] == final["chunks"]
    again, _ = await start(http, c, session_id)
    assert again == 409, "started once, wherever it is asked"


async def test_pause_from_a_process_that_does_not_own_the_stream(nodes, http, viewers):
    a, b = await nodes(2)
    session_id = await create(http, a, maxTokens=400, tokensPerSecond=150)
    _, on_a = await viewers(a, session_id)
    client_b, on_b = await viewers(b, session_id)
    namespace = f"/stream/{session_id}"
    await start(http, a, session_id)
    await on_b.wait_for(lambda: len(on_b.chunks) >= 5)

    ack = await client_b.call("pause-stream", namespace=namespace, timeout=WAIT)
    assert ack["ok"] is True and ack["state"] == "paused"
    last_seq = ack["lastSeq"]
    assert (await status_of(http, b, session_id))["state"] == "paused", "the ack follows the effect"
    for viewer in (on_a, on_b):
        await viewer.wait_for(lambda v=viewer: any(s["state"] == "paused" for s in v.states))
        with pytest.raises(TimeoutError):
            await viewer.wait_for(lambda v=viewer: bool(v.seqs) and v.seqs[-1] > last_seq, timeout=0.5)
    assert (await status_of(http, a, session_id))["chunks"] == last_seq + 1

    ack = await client_b.call("resume-stream", namespace=namespace, timeout=WAIT)
    assert ack == {"ok": True, "state": "streaming"}
    await on_a.wait_finished()
    await on_b.wait_finished()
    final = await status_of(http, a, session_id)
    assert_contiguous(on_a, final["chunks"])
    assert_contiguous(on_b, final["chunks"])


async def test_cancel_from_another_process_closes_the_upstream(nodes, http, viewers):
    async with FakeUpstream() as fake:
        fake.script = Script(tokens=[f"t{i} " for i in range(200)], token_delay=0.02)
        a, b = await nodes(2, OPENAI_API_KEY=OPENAI_KEY, OPENAI_BASE_URL=fake.openai_base_url)
        session_id = await create(http, a, provider="openai")
        _, on_b = await viewers(b, session_id)
        await start(http, a, session_id)
        await on_b.wait_for(lambda: len(on_b.chunks) >= 3)
        status, body = await post(http, f"{b.url}/api/streaming/{session_id}/cancel")
        assert (status, body) == (200, {"status": "cancelled"})
        (request,) = fake.requests
        await request.wait_disconnected()
        await on_b.wait_finished()
        assert on_b.completes[0]["finishReason"] == "cancelled"
        assert (await status_of(http, a, session_id))["state"] == "cancelled"


async def test_reconnect_to_another_process_loses_and_doubles_nothing(nodes, http, viewers):
    a, b = await nodes(2)
    session_id = await create(http, a, maxTokens=300, tokensPerSecond=200)
    client, first = await viewers(a, session_id)
    await start(http, a, session_id)
    await first.wait_for(lambda: len(first.chunks) >= 10)
    await client.disconnect()
    epoch = first.states[0]["epoch"]
    _, second = await viewers(b, session_id, auth={"lastSeq": first.seqs[-1], "epoch": epoch})
    await second.wait_finished()
    final = await status_of(http, b, session_id)
    combined = first.chunks + second.chunks
    assert [c["seq"] for c in combined] == list(range(final["chunks"]))
    assert "".join(c["content"] for c in combined) == final["text"]
    assert second.resets == []


async def test_another_epoch_on_another_process_resets(nodes, http, viewers):
    a, b = await nodes(2)
    session_id = await create(http, a, maxTokens=60)
    await start(http, a, session_id)
    _, done = await viewers(a, session_id)
    await done.wait_finished()
    final = await status_of(http, b, session_id)
    _, late = await viewers(b, session_id, auth={"lastSeq": 3, "epoch": "another"})
    await late.wait_finished()
    assert late.resets == [{"sessionId": session_id, "epoch": final["epoch"], "lastSeq": final["chunks"] - 1}]
    assert_contiguous(late, final["chunks"])


async def test_killed_owner_of_a_stream_that_cannot_resume_ends_in_owner_lost(nodes, http, viewers):
    # Chat Completions cannot be resumed elsewhere (the demo and OpenAI background mode can:
    # tests/test_failover.py).
    async with FakeUpstream() as fake:
        fake.script = Script(tokens=[f"t{i} " for i in range(2000)], token_delay=0.02)
        a, b, c = await nodes(3, OPENAI_API_KEY=OPENAI_KEY, OPENAI_BASE_URL=fake.openai_base_url)
        session_id = await create(http, a, provider="openai")
        _, on_b = await viewers(b, session_id)
        _, on_c = await viewers(c, session_id)
        await start(http, a, session_id)
        await on_b.wait_for(lambda: len(on_b.chunks) >= 5)
        a.kill()
        for viewer in (on_b, on_c):
            await viewer.wait_finished(timeout=WAIT + 10)
            assert [e["code"] for e in viewer.errors] == ["owner_lost"], (
                "exactly one ending, from one process"
            )
        final = await status_of(http, b, session_id)
        assert final["state"] == "failed" and final["error"]["code"] == "owner_lost"
        assert final == await status_of(http, c, session_id)
        assert_contiguous(on_b, final["chunks"])
        assert on_b.text == on_c.text == final["text"], "what was logged stays readable"
        _, late = await viewers(c, session_id)
        await late.wait_finished()
        assert late.text == final["text"] and late.errors[0]["code"] == "owner_lost"


async def test_a_session_not_started_survives_its_process(nodes, http, viewers):
    a, b = await nodes(2)
    session_id = await create(http, a, maxTokens=40)
    a.kill()
    async with asyncio.timeout(WAIT):
        while (await start(http, b, session_id))[0] != 200:
            await asyncio.sleep(0.1)  # adopted once the lease lapses
    _, viewer = await viewers(b, session_id)
    await viewer.wait_finished()
    assert viewer.completes


async def test_quota_holds_across_processes(nodes, http):
    a, b = await nodes(2, MAX_SESSIONS_PER_USER="2")
    first = await create(http, a, "alice")
    await create(http, b, "alice")
    status, body = await post(http, f"{b.url}/api/streaming/session", {"userId": "alice"})
    assert status == 429 and "limit 2" in body["error"]
    await post(http, f"{b.url}/api/streaming/{first}/cancel")
    await create(http, b, "alice")


async def test_two_processes_racing_for_one_session_one_wins(redis_server):
    redis_server.flush()
    store = RedisStore(redis_server.url, timeout=3)
    try:
        await store.put_session("s" * 36, {"userId": "u", "state": "streaming"}, "dead", 60_000)
        claims = await asyncio.gather(*(store.claim("s" * 36, "dead", "1", f"p{i}") for i in range(8)))
        winners = [c for c in claims if c is not None]
        # The fence after "1": the counter and a random part (no two owners share one, even
        # after a failover rolled the counter back).
        assert len(winners) == 1 and winners[0].startswith("2:"), claims
        assert (await store.redis.hget("stream:{" + "s" * 36 + "}:meta", "owner")) in {
            f"p{i}" for i in range(8)
        }
    finally:
        await store.close()


async def test_redis_killed_and_restarted_under_running_servers(nodes, http, viewers, redis_server):
    a, b = await nodes(2, REDIS_TIMEOUT="1")
    session_id = await create(http, a, maxTokens=300, tokensPerSecond=60)
    _, on_a = await viewers(a, session_id)
    _, on_b = await viewers(b, session_id)
    await start(http, a, session_id)
    await on_a.wait_for(lambda: len(on_a.chunks) >= 3)
    redis_server.kill()
    try:
        status, body = await post(http, f"{b.url}/api/streaming/session", {"userId": "u"})
        assert status == 503 and "error" in body
    finally:
        await asyncio.to_thread(redis_server.start)
    async with asyncio.timeout(WAIT):
        while (await post(http, f"{b.url}/api/streaming/session", {"userId": "v"}))[0] != 200:
            await asyncio.sleep(0.1)  # each process reconnects by itself
    await on_a.wait_finished(timeout=WAIT + 10)
    await on_b.wait_finished(timeout=WAIT + 10)
    final = await status_of(http, b, session_id)
    assert final["state"] == "completed", final
    assert_contiguous(on_a, final["chunks"])
    assert_contiguous(on_b, final["chunks"])
    assert on_a.text == on_b.text == final["text"], "continued without loss"


def test_nothing_of_redis_is_loaded_in_memory_mode():
    """Without REDIS_URL none of our Redis code is imported (so redis-py is not needed)."""
    import subprocess
    import sys

    code = (
        "import sys, server.app; server.app.create_app(); "
        "print(any(m in sys.modules for m in ('server.cluster.coordinator', 'server.cluster.redis_store', 'server.cluster.relay')))"
    )
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False"
