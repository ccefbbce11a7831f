"""What one client may cost (issue 12): new sessions per user and per address, messages per
connection, open connections and Engine.IO handshakes per address, and the time an
Engine.IO session has to connect a namespace.

Real server, real clients: aiohttp for HTTP, SSE, the plain WebSocket and the long-polling
wire (raw requests: python-engineio's client would wait out a refusal), python-socketio's
AsyncClient on python-socketio's WebSocket path. Each test sets the small limits it
exercises; ordinary tests run with generous ones (``tests.helpers.make_settings``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
import socketio
from multidict import CIMultiDictProxy

from providers.base import StreamConfig
from server.app import sio_key, socket_api_key
from server.core.manager import LogsFull
from server.core.sessions import StreamingSession
from server.guards.ratelimit import limits_key
from server.transports.socket_api import TOO_MANY_MESSAGES
from tests.helpers import (
    WAIT,
    LiveServer,
    ServerFactory,
    assert_exactly_once,
    create_session,
    record_events,
    start_stream,
    stream_viewer,
    wait_until,
)
from tests.test_access import SECRET, bearer, token
from tests.test_metrics import delta, scrape

#: The address the test clients connect from.
LOCAL = "127.0.0.1"
#: A rate of 0: a bucket's burst is all there is, so that counts are exact.
NO_REFILL = 0.0


@pytest.fixture
def store() -> str:
    """The limits are per process, whatever holds the sessions: memory only."""
    return "memory"


async def post_session(
    http: aiohttp.ClientSession, server: LiveServer, user: str, headers: dict[str, str] | None = None
) -> tuple[int, CIMultiDictProxy[str], dict[str, Any]]:
    async with http.post(
        f"{server.url}/api/streaming/session", json={"userId": user}, headers=headers
    ) as resp:
        return resp.status, resp.headers, await resp.json()


async def engineio_handshake(
    http: aiohttp.ClientSession, server: LiveServer
) -> tuple[int, CIMultiDictProxy[str], str]:
    """A new Engine.IO session over long-polling, as a client's first request opens it."""
    async with http.get(f"{server.url}/socket.io/?EIO=4&transport=polling") as resp:
        return resp.status, resp.headers, await resp.text()


def open_packet(body: str) -> dict[str, Any]:
    """The Engine.IO OPEN packet a handshake answers with (``0{...}``)."""
    assert body.startswith("0"), body
    packet: dict[str, Any] = json.loads(body[1:])
    return packet


def assert_refused(status: int, headers: CIMultiDictProxy[str], body: dict[str, Any], names: str) -> None:
    """429 with a whole ``Retry-After`` of at least a second and an error naming the limit."""
    assert status == 429, body
    assert int(headers["Retry-After"]) >= 1
    assert names in body["error"], body


# -- new sessions -----------------------------------------------------------


async def test_new_sessions_are_limited_per_user(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(session_rate_per_user=0.2, session_burst_per_user=2)
    for _ in range(2):
        await create_session(http, server, "alice")
    status, headers, body = await post_session(http, server, "alice")
    assert_refused(status, headers, body, "SESSION_RATE_PER_USER")
    # One token comes back every 5 s: the wait (5 s less the time since) is rounded up.
    assert headers["Retry-After"] == "5"
    assert "retry in 5 s" in body["error"]
    # Another user is not affected; alice's refusal created nothing.
    await create_session(http, server, "bob")
    assert sorted(s.user_id for s in server.manager.registry) == ["alice", "alice", "bob"]


async def test_with_access_on_the_user_is_the_token_s_subject(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(
        auth_jwt_secret=SECRET, session_rate_per_user=NO_REFILL, session_burst_per_user=1
    )
    alice = bearer(token("alice"))
    assert (await post_session(http, server, "alice", alice))[0] == 200
    status, headers, body = await post_session(http, server, "alice", alice)
    assert_refused(status, headers, body, "SESSION_RATE_PER_USER")
    assert (await post_session(http, server, "bob", bearer(token("bob"))))[0] == 200


async def test_new_sessions_are_limited_per_address(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(session_rate_per_address=NO_REFILL, session_burst_per_address=3)
    for user in ("u1", "u2", "u3"):
        await create_session(http, server, user)
    status, headers, body = await post_session(http, server, "u4")
    assert_refused(status, headers, body, "SESSION_RATE_PER_ADDRESS")
    assert len(server.manager.registry) == 3


async def test_x_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    limits = {"session_rate_per_address": NO_REFILL, "session_burst_per_address": 1}

    async def create_from(server: LiveServer, client: str) -> int:
        headers = {"X-Forwarded-For": f"203.0.113.9, {client}"}
        return (await post_session(http, server, f"user-{client}", headers))[0]

    untrusted = await start_server(**limits)
    assert await create_from(untrusted, "198.51.100.1") == 200
    assert await create_from(untrusted, "198.51.100.2") == 429, "the peer is the client: one address"

    behind_proxy = await start_server(trusted_proxies=[LOCAL], **limits)
    assert await create_from(behind_proxy, "198.51.100.1") == 200
    assert await create_from(behind_proxy, "198.51.100.2") == 200, "the proxy's word: two addresses"
    assert await create_from(behind_proxy, "198.51.100.1") == 429


async def test_a_full_chunk_log_budget_is_503(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server()

    async def logs_full(user_id: str, config: StreamConfig) -> StreamingSession:
        raise LogsFull("The chunk logs are full (MAX_LOG_BYTES): try again later")

    server.manager.create_session = logs_full  # type: ignore[method-assign]
    status, _, body = await post_session(http, server, "u")
    assert (status, body) == (503, {"error": "The chunk logs are full (MAX_LOG_BYTES): try again later"})


# -- messages per connection ------------------------------------------------


async def test_a_socketio_flood_is_refused_and_other_viewers_miss_nothing(
    start_server: ServerFactory, http: aiohttp.ClientSession, sio_clients: Callable[[], socketio.AsyncClient]
) -> None:
    burst = 8
    server = await start_server(
        socketio_direct_websocket=False, socket_message_rate=NO_REFILL, socket_message_burst=burst
    )
    session_id = await create_session(http, server, maxTokens=400, tokensPerSecond=400)
    _, viewer = await stream_viewer(sio_clients, server, session_id)
    await start_stream(http, server, session_id)
    await viewer.wait_for(lambda: len(viewer.chunks) > 0)

    namespace = f"/stream/{session_id}"
    flooder = sio_clients()
    record_events(flooder, namespace)
    await flooder.connect(
        server.url, namespaces=["/", namespace], transports=["websocket"], wait_timeout=WAIT
    )
    api = server.app[socket_api_key]
    assert len(api._engineio) == 2, "one bucket per Engine.IO session"
    # Both namespaces share one bucket, whose two CONNECTs took two of its tokens.
    acks = await asyncio.gather(
        *(flooder.call("leave-stream", session_id, timeout=WAIT) for _ in range(20)),
        *(flooder.call("resume-stream", timeout=WAIT, namespace=namespace) for _ in range(20)),
    )
    refused = [ack for ack in acks if ack == {"ok": False, "error": TOO_MANY_MESSAGES}]
    assert len(refused) == len(acks) - (burst - 2)
    assert all(ack["ok"] for ack in acks[:20] if ack not in refused), "leave-stream within the rate"

    await viewer.wait_finished()
    session = server.manager.get_session(session_id)
    assert session is not None and viewer.completes
    assert_exactly_once(viewer, len(session.chunks))
    await flooder.disconnect()
    await wait_until(lambda: len(api._engineio) == 1)


async def test_a_plain_websocket_flood_gets_error_acks_and_the_socket_stays_open(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(socket_message_rate=NO_REFILL, socket_message_burst=3)
    session_id = await create_session(http, server)
    async with http.ws_connect(f"{server.ws_url}/ws/stream/{session_id}") as ws:
        for _ in range(10):
            await ws.send_json({"type": "rewind"})
        acks: list[dict[str, Any]] = []
        async with asyncio.timeout(WAIT):
            while len(acks) < 10:
                frame = await ws.receive_json()
                if frame["type"] == "ack":
                    acks.append(frame)
        errors = [ack["error"] for ack in acks]
        assert errors[:3] == ['Expected {"type": "pause" | "resume" | "cancel"}'] * 3
        assert errors[3:] == [TOO_MANY_MESSAGES] * 7
        assert {ack["action"] for ack in acks} == {"rewind"}
        assert not ws.closed
    assert server.manager.get_session(session_id) is not None


# -- connections per address ------------------------------------------------


async def test_connections_per_address_count_every_transport(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    # SSE notices a client that left at its next write: the keep-alive comes soon.
    server = await start_server(
        socketio_direct_websocket=False, max_connections_per_address=3, sse_keepalive_interval=0.1
    )
    limits = server.app[limits_key]
    session_id = await create_session(http, server)
    events_url = f"{server.url}/api/streaming/{session_id}/events"

    ws = await http.ws_connect(f"{server.ws_url}/ws/stream/{session_id}")
    sse = await http.get(events_url)
    assert sse.status == 200
    status, _, body = await engineio_handshake(http, server)
    assert status == 200
    eio_sid = open_packet(body)["sid"]
    assert limits.connections.count(LOCAL) == 3

    # Every transport is refused before it upgrades or streams.
    status, headers, text = await engineio_handshake(http, server)
    assert_refused(status, headers, json.loads(text), "MAX_CONNECTIONS_PER_ADDRESS")
    async with http.get(events_url) as refused:
        assert_refused(refused.status, refused.headers, await refused.json(), "MAX_CONNECTIONS_PER_ADDRESS")
    for path in (f"/ws/stream/{session_id}", "/socket.io/?EIO=4&transport=websocket"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refusal:
            await http.ws_connect(f"{server.ws_url}{path}")
        assert refusal.value.status == 429 and refusal.value.headers is not None
        assert refusal.value.headers["Retry-After"] == "1"
    # Requests of the open Engine.IO session are not new connections: it connects "/".
    polling = f"{server.url}/socket.io/?EIO=4&transport=polling&sid={eio_sid}"
    async with http.post(polling, data="40") as sent:
        assert sent.status == 200
    async with http.get(polling) as poll:
        assert poll.status == 200 and (await poll.text()).startswith("40")

    # Each one gives its place back when it ends, once.
    await ws.close()
    await wait_until(lambda: limits.connections.count(LOCAL) == 2)
    async with http.ws_connect(f"{server.ws_url}/ws/stream/{session_id}") as again:
        assert limits.connections.count(LOCAL) == 3
        await again.close()
    sse.close()
    async with http.post(polling, data="1") as sent:  # Engine.IO CLOSE
        assert sent.status == 200
    await wait_until(lambda: limits.connections.count(LOCAL) == 0)


# -- Engine.IO handshakes ---------------------------------------------------


async def test_a_polling_handshake_flood_is_refused_and_costs_nothing(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    burst = 20
    server = await start_server(
        handshake_rate_per_address=NO_REFILL, handshake_burst_per_address=burst, handshake_timeout=1.0
    )
    sio = server.app[sio_key]
    before = await scrape(http, server.url)
    results = await asyncio.gather(*(engineio_handshake(http, server) for _ in range(1000)))
    statuses = [status for status, _, _ in results]
    assert statuses.count(200) == burst and statuses.count(429) == 1000 - burst
    refused = next((headers, text) for status, headers, text in results if status == 429)
    assert_refused(429, refused[0], json.loads(refused[1]), "HANDSHAKE_RATE_PER_ADDRESS")
    assert len(sio.eio.sockets) <= burst
    after = await scrape(http, server.url)
    assert (
        delta(before, after, "streaming_rate_limited_total", scope="handshakes_per_address") == 1000 - burst
    )
    # None of them connected a namespace: HANDSHAKE_TIMEOUT closes them all.
    await wait_until(lambda: not sio.eio.sockets)
    assert server.app[limits_key].connections.count(LOCAL) == 0


async def test_a_blank_sid_is_a_handshake_and_counts(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    """python-engineio reads ``sid=`` (blank) as no sid: a new session, limited as one."""
    server = await start_server(handshake_rate_per_address=0, handshake_burst_per_address=2)
    url = f"{server.url}/socket.io/?EIO=4&transport=polling&sid="
    statuses = []
    for _ in range(4):
        async with http.get(url) as resp:
            statuses.append(resp.status)
    assert statuses == [200, 200, 429, 429]


async def test_every_x_forwarded_for_line_is_read(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    """A proxy that adds its own line: the client's line cannot name another address."""
    server = await start_server(
        trusted_proxies=["127.0.0.1"], session_rate_per_address=0, session_burst_per_address=1
    )
    statuses = []
    for spoof in ("1.1.1.1", "2.2.2.2"):
        headers = [("X-Forwarded-For", spoof), ("X-Forwarded-For", "9.9.9.9")]
        async with http.post(
            f"{server.url}/api/streaming/session", json={"userId": spoof}, headers=headers
        ) as resp:
            statuses.append(resp.status)
    assert statuses == [200, 429], "both count against 9.9.9.9, the hop the proxy added"


async def test_an_engineio_session_without_a_namespace_is_closed_after_the_handshake_timeout(
    start_server: ServerFactory, http: aiohttp.ClientSession, sio_clients: Callable[[], socketio.AsyncClient]
) -> None:
    server = await start_server(socketio_direct_websocket=False, handshake_timeout=0.5)
    sio = server.app[sio_key]
    connected = sio_clients()
    await connected.connect(server.url, transports=["websocket"], wait_timeout=WAIT)

    status, _, body = await engineio_handshake(http, server)
    assert status == 200
    idle = open_packet(body)["sid"]
    async with http.ws_connect(f"{server.ws_url}/socket.io/?EIO=4&transport=websocket") as ws:
        assert (await ws.receive_str()).startswith("0")
        async with asyncio.timeout(WAIT):
            assert await ws.receive_str() == "1", "Engine.IO CLOSE"
            assert (await ws.receive()).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    # A poll of the idle session is told it was closed (or that it is gone).
    async with http.get(f"{server.url}/socket.io/?EIO=4&transport=polling&sid={idle}") as poll:
        assert poll.status == 400 or await poll.text() == "1"
    await wait_until(lambda: idle not in sio.eio.sockets)
    # The client that connected a namespace, whose deadline passed first, is still there.
    assert connected.connected and len(sio.eio.sockets) == 1
    assert await connected.call("leave-stream", "not-a-session", timeout=WAIT) == {
        "ok": False,
        "error": "Expected a sessionId (a session UUID) or {sessionId, lastSeq}",
    }
