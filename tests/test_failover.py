"""Failover (Redis mode): a live stream whose provider can resume survives the death, the
freeze or the restart of the process that runs it. Real processes, a real Redis; the demo
provider regenerates its answer deterministically, so every test knows the exact text an
undisturbed run gives. (OpenAI background mode: tests/test_failover_openai.py.)"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import socketio

from providers.demo import demo_tokens
from server.cluster.redis_store import RedisStore
from tests.cluster_nodes import Node, assert_contiguous, create, start, status_of
from tests.helpers import WAIT, Recorder, record_events, wait_until
from tests.redis_server import RedisServer

PROMPT = "Explain streaming"
#: A failover takes about one lease (1 s here); a viewer waits for the whole answer.
FINISH = WAIT + 30


def expected_text(max_tokens: int, prompt: str = PROMPT) -> str:
    return "".join(demo_tokens(prompt, max_tokens))


def assert_whole(recorder: Recorder, final: dict[str, Any], max_tokens: int) -> None:
    """The viewer saw the undisturbed answer: every chunk once, in order, no error."""
    assert recorder.errors == []
    assert len(recorder.completes) == 1
    assert final["state"] == "completed"
    assert_contiguous(recorder, final["chunks"])
    assert recorder.text == final["text"] == expected_text(max_tokens)


async def test_killed_owner_another_process_continues_the_stream(nodes, http, viewers):
    a, b, c = await nodes(3)
    session_id = await create(http, a, maxTokens=400, tokensPerSecond=100)
    _, on_b = await viewers(b, session_id)
    _, on_c = await viewers(c, session_id)
    await start(http, a, session_id)
    await on_b.wait_for(lambda: len(on_b.chunks) >= 10)
    a.kill()
    for viewer in (on_b, on_c):
        await viewer.wait_finished(timeout=FINISH)
    final = await status_of(http, b, session_id)
    assert final == await status_of(http, c, session_id)
    assert_whole(on_b, final, 400)
    assert on_c.seqs == on_b.seqs
    # Two processes were left to race for it: exactly one continued it, and the usage
    # counts the whole answer.
    takers = [node for node in (b, c) if f"session {session_id[:8]}: took it over" in node.process.output]
    assert len(takers) == 1
    assert final["usage"]["completionTokens"] == 400


async def test_paused_stream_stays_paused_across_a_takeover(nodes, http, viewers, redis_server: RedisServer):
    a, b = await nodes(2)
    session_id = await create(http, a, maxTokens=300, tokensPerSecond=100)
    _, on_b = await viewers(b, session_id)
    await start(http, a, session_id)
    await on_b.wait_for(lambda: len(on_b.chunks) >= 5)
    assert (await command(b, "pause-stream", session_id))["ok"] is True
    paused_at = len(on_b.chunks)
    owner = await owner_of(redis_server.url, session_id)
    a.kill()
    await wait_taken_over(redis_server.url, session_id, owner)
    final_before = await status_of(http, b, session_id)
    assert final_before["state"] == "paused"
    assert len(on_b.chunks) == paused_at, "nothing flows while paused, whoever runs it"
    ack = await command(b, "resume-stream", session_id)
    assert ack["ok"] is True, ack
    await on_b.wait_finished(timeout=FINISH)
    assert_whole(on_b, await status_of(http, b, session_id), 300)


async def command(node: Node, event: str, session_id: str) -> dict[str, Any]:
    """Send ``pause-stream``/``resume-stream``/``cancel-stream`` to ``node``; its ack."""
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(node.url, namespaces=["/"], transports=["websocket"], wait_timeout=WAIT)
    try:
        ack: dict[str, Any] = await client.call(event, {"sessionId": session_id}, timeout=WAIT)
        return ack
    finally:
        await client.disconnect()


async def owner_of(redis_url: str, session_id: str) -> str | None:
    """The process that owns the session now."""
    store = RedisStore(redis_url, timeout=3)
    try:
        return await store.owner(session_id)
    finally:
        await store.close()


async def wait_taken_over(redis_url: str, session_id: str, old_owner: str | None) -> None:
    async with asyncio.timeout(WAIT):
        while await owner_of(redis_url, session_id) == old_owner:
            await asyncio.sleep(0.05)  # polled: a takeover has no event a client can see


async def test_frozen_owner_cannot_append_after_a_takeover(nodes, http, viewers, redis_server: RedisServer):
    a, b = await nodes(2)
    session_id = await create(http, a, maxTokens=400, tokensPerSecond=100)
    client_a, on_a = await viewers(a, session_id)
    _, on_b = await viewers(b, session_id)
    await start(http, a, session_id)
    await on_b.wait_for(lambda: len(on_b.chunks) >= 10)
    owner = await owner_of(redis_server.url, session_id)
    a.signal(signal.SIGSTOP)
    try:
        await wait_taken_over(redis_server.url, session_id, owner)
    finally:
        a.signal(signal.SIGCONT)
    await on_b.wait_finished(timeout=FINISH)
    final = await status_of(http, b, session_id)
    assert_whole(on_b, final, 400)
    # The old owner woke up with text it had not written: refused by the fence, it stops
    # and its viewers are sent away to come back (with lastSeq) where the stream runs now;
    # nothing they got contradicts the log.
    await wait_until(lambda: not client_a.connected)
    assert not on_a.finished
    assert on_a.seqs == list(range(len(on_a.seqs)))
    assert on_a.text == final["text"][: len(on_a.text)]
    async with http.get(f"{b.url}/api/streaming/{session_id}/chunks?after=-1&limit=1000") as resp:
        log = await resp.json()
    assert [c["seq"] for c in log["chunks"]] == list(range(final["chunks"]))
    assert "".join(c["content"] for c in log["chunks"]) == expected_text(400)


async def test_sigterm_hands_live_streams_over_at_once(nodes, http, viewers):
    a, b = await nodes(2, SHUTDOWN_TIMEOUT="5")
    sessions = [await create(http, a, maxTokens=300, tokensPerSecond=60) for _ in range(5)]
    recorders = [(await viewers(b, session_id))[1] for session_id in sessions]
    for session_id in sessions:
        await start(http, a, session_id)
    await asyncio.gather(*(r.wait_for(lambda r=r: len(r.chunks) >= 3) for r in recorders))
    waiting = await create(http, a, maxTokens=30)
    a.signal(signal.SIGTERM)
    assert await asyncio.to_thread(a.wait_exit) == 0
    for session_id, recorder in zip(sessions, recorders, strict=True):
        await recorder.wait_finished(timeout=FINISH)
        assert_whole(recorder, await status_of(http, b, session_id), 300)
    # A session not started yet is adopted too, not ended.
    async with asyncio.timeout(WAIT):
        while (answer := await start(http, b, waiting))[0] != 200:
            assert answer[0] in (404, 503), answer
            await asyncio.sleep(0.05)  # polled: adopted as b hears a leave
    _, late = await viewers(b, waiting)
    await late.wait_finished()
    assert late.completes and late.errors == []


async def test_with_no_process_left_the_first_to_start_takes_over(nodes, http, viewers, redis_server):
    (a,) = await nodes(1)
    session_id = await create(http, a, maxTokens=200, tokensPerSecond=100)
    _, on_a = await viewers(a, session_id)
    await start(http, a, session_id)
    await on_a.wait_for(lambda: len(on_a.chunks) >= 5)
    a.signal(signal.SIGTERM)
    assert await asyncio.to_thread(a.wait_exit) == 0
    assert on_a.errors == [], "handed over, not failed"
    (b,) = await nodes(1)
    epoch = on_a.states[0]["epoch"]
    _, on_b = await viewers(b, session_id, auth={"lastSeq": on_a.seqs[-1], "epoch": epoch})
    await on_b.wait_finished(timeout=FINISH)
    final = await status_of(http, b, session_id)
    assert [c["seq"] for c in on_a.chunks + on_b.chunks] == list(range(final["chunks"]))
    assert on_a.text + on_b.text == final["text"] == expected_text(200)
    assert on_b.errors == [] and on_b.resets == []


async def test_a_stream_left_too_long_ends_in_owner_lost(nodes, http, viewers, redis_server):
    (a,) = await nodes(1)
    session_id = await create(http, a, maxTokens=200, tokensPerSecond=50)
    _, on_a = await viewers(a, session_id)
    await start(http, a, session_id)
    await on_a.wait_for(lambda: len(on_a.chunks) >= 3)
    a.kill()
    store = RedisStore(redis_server.url, timeout=3)
    try:
        async with asyncio.timeout(WAIT):
            while not await store.dead_processes():
                await asyncio.sleep(0.05)  # polled: a lease lapses without telling anyone
    finally:
        await store.close()
    (b,) = await nodes(1, OWNER_LOST_AFTER="0.001")
    _, on_b = await viewers(b, session_id)
    await on_b.wait_finished(timeout=FINISH)
    assert [e["code"] for e in on_b.errors] == ["owner_lost"]
    assert on_b.text.startswith(on_a.text)


class FollowingViewer:
    """A viewer that, when its process goes away, reconnects to a live one with ``lastSeq``
    and ``epoch``, as socket.io-client behind a load balancer does."""

    def __init__(self, session_id: str, pick: Any) -> None:
        self.session_id = session_id
        self.pick = pick
        self.chunks: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.completes: list[dict[str, Any]] = []
        self.resets: list[dict[str, Any]] = []
        self.epoch: str | None = None
        self.reconnects = 0
        self.done = asyncio.Event()

    async def run(self) -> None:
        namespace = f"/stream/{self.session_id}"
        while not self.done.is_set():
            client = socketio.AsyncClient(reconnection=False)
            recorder = record_events(client, namespace)
            gone = asyncio.Event()
            client.on("disconnect", gone.set, namespace=namespace)
            auth: dict[str, Any] = {}
            if self.chunks:
                auth = {"lastSeq": self.chunks[-1]["seq"], "epoch": self.epoch}
            try:
                await client.connect(
                    self.pick(), namespaces=[namespace], transports=["websocket"], auth=auth, wait_timeout=5
                )
            except socketio.exceptions.ConnectionError:
                continue  # that process was on its way out: pick again
            self.reconnects += 1
            seen = 0
            while True:
                recorder.changed.clear()
                self._take(recorder, seen)
                seen = len(recorder.chunks)
                if recorder.finished or gone.is_set():
                    break
                waiter = asyncio.ensure_future(recorder.changed.wait())
                stopper = asyncio.ensure_future(gone.wait())
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stopper.cancel()
            self._take(recorder, seen)
            self.errors += recorder.errors
            self.completes += recorder.completes
            self.resets += recorder.resets
            if recorder.finished:
                self.done.set()
            if client.connected:
                await client.disconnect()

    def _take(self, recorder: Recorder, seen: int) -> None:
        if recorder.states and self.epoch is None:
            self.epoch = recorder.states[0]["epoch"]
        self.chunks += recorder.chunks[seen:]

    @property
    def text(self) -> str:
        return "".join(c["content"] for c in self.chunks)


async def test_rolling_restart_of_three_processes_under_fifty_streams(nodes, http):
    started = await nodes(3, SHUTDOWN_TIMEOUT="5")
    live: list[Node] = list(started)
    turn = [0]

    def pick() -> str:
        turn[0] += 1
        return live[turn[0] % len(live)].url

    max_tokens = 300
    sessions = [
        await create(http, live[i % 3], f"user-{i}", maxTokens=max_tokens, tokensPerSecond=40)
        for i in range(50)
    ]
    followers = [FollowingViewer(session_id, pick) for session_id in sessions]
    tasks = [asyncio.create_task(f.run()) for f in followers]
    for i, session_id in enumerate(sessions):
        await start(http, live[i % 3], session_id)
    async with asyncio.timeout(WAIT):
        while any(len(f.chunks) < 3 for f in followers):
            await asyncio.sleep(0.05)  # polled: every stream is under way
    for old in list(started):
        live.remove(old)
        old.signal(signal.SIGTERM)
        assert await asyncio.to_thread(old.wait_exit) == 0
        (new,) = await nodes(1, SHUTDOWN_TIMEOUT="5")
        live.append(new)
    async with asyncio.timeout(FINISH + 30):
        await asyncio.gather(*tasks)
    failed = [f.session_id for f in followers if f.errors]
    lost = [f.session_id for f in followers if f.text != expected_text(max_tokens)]
    assert failed == [] and lost == []
    for follower in followers:
        assert [c["seq"] for c in follower.chunks] == list(range(len(follower.chunks)))
        assert follower.resets == [] and len(follower.completes) == 1
    print(
        f"rolling restart: 50 streams, 0 failed, 0 lost, {sum(f.reconnects for f in followers)} connections"
    )
