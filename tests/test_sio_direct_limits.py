"""What one client may cost on the direct Socket.IO WebSocket path (``server.transports.sio_direct``,
issue 12): liveness, the budget of unfinished messages, ``HANDSHAKE_TIMEOUT``, messages
that are no packet, the heartbeat's spread, event floods and connections per address.

Most tests talk to a real server over a raw socket (``tests.test_sio_direct.RawSocket``);
the heartbeat's schedule and the per-turn bound are checked on a connection object fed
bytes directly, with a fake clock and a fake transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import struct
from collections import Counter
from typing import Any, cast
from urllib.parse import urlsplit

import pytest

from server.app import direct_hub_key
from server.guards.ratelimit import Limits, limits_key
from server.transports.sio_direct import DirectHub, SioConnection
from server.transports.sio_direct_limits import CONNECTION_RETRY_AFTER, too_many_connections
from server.transports.socket_api import TOO_MANY_MESSAGES, SocketAPI
from server.transports.wire import websocket as ws_wire
from server.transports.wire.socketio import error_ack
from tests.helpers import (
    WAIT,
    LiveServer,
    ServerFactory,
    assert_exactly_once,
    create_session,
    get_session,
    make_settings,
    start_stream,
    stream_viewer,
    wait_until,
)
from tests.test_sio_direct import CLOSE, PING, TEXT, RawSocket, open_direct
from tests.test_wire import CONT, client_frame, server_frame_payload

# -- liveness: an Engine.IO pong, nothing else ---------------------------------


@pytest.mark.parametrize("keepalive", ["websocket-pings", "unfinished-message"])
async def test_only_an_engineio_pong_keeps_a_client_alive(
    start_server: ServerFactory, keepalive: str
) -> None:
    """A client that answers Engine.IO pings with WebSocket pings, or with one more
    fragment of a message it never finishes, is dropped like a silent one."""
    server = await start_server(socketio_ping_interval=0.2, socketio_ping_timeout=0.2)
    hub = server.app[direct_hub_key]
    raw = await open_direct(server)
    await raw.connect()
    if keepalive == "unfinished-message":
        raw.send(TEXT, b'42["nope","', final=False)
    pings = 0
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionResetError):
        while True:
            opcode, payload = await raw.recv()  # TimeoutError (a failure) if never dropped
            if (opcode, payload) == (TEXT, b"2"):
                pings += 1
                raw.send(PING, b"still here")
                if keepalive == "unfinished-message":
                    raw.send(CONT, b"x", final=False)
    assert pings >= 1
    await wait_until(lambda: not hub.connections)
    assert hub.partial_bytes == 0


# -- unfinished messages: one budget for all direct connections ---------------


async def test_unfinished_messages_share_one_budget(start_server: ServerFactory) -> None:
    server = await start_server(max_partial_message_bytes_total=4096)
    hub = server.app[direct_hub_key]
    first, second, third = [await open_direct(server) for _ in range(3)]
    for raw in (first, second, third):
        await raw.connect()
    start = b'421["nope","'
    first.send(TEXT, start + b"x" * 3000, final=False)
    await wait_until(lambda: hub.partial_bytes == len(start) + 3000)
    # The second would take the total past the budget: it is closed, its bytes released.
    second.send(TEXT, start + b"y" * 2000, final=False)
    assert await second.recv_close() == ws_wire.CLOSE_TOO_BIG
    await wait_until(lambda: hub.partial_bytes == len(start) + 3000)
    # The first finishes its message: answered, and its bytes released.
    first.send(CONT, b'"]')
    assert json.loads((await first.recv_text())[3:]) == [error_ack("Unknown event 'nope'")]
    assert hub.partial_bytes == 0
    # So there is room again.
    third.send(TEXT, start + b"z" * 3000, final=False)
    third.send(CONT, b'"]')
    assert json.loads((await third.recv_text())[3:]) == [error_ack("Unknown event 'nope'")]
    # A connection that goes away in the middle of a message gives its bytes back.
    first.send(TEXT, start + b"x" * 3000, final=False)
    await wait_until(lambda: hub.partial_bytes == len(start) + 3000)
    first.close()
    await wait_until(lambda: hub.partial_bytes == 0)
    third.close()


# -- HANDSHAKE_TIMEOUT ------------------------------------------------------------


async def test_a_socket_that_connects_no_namespace_in_time_is_closed(start_server: ServerFactory) -> None:
    server = await start_server(handshake_timeout=0.5)
    connected = await open_direct(server)
    await connected.connect()
    # A refused CONNECT does not end the handshake (as on python-socketio's path): one that
    # connects afterwards is served, one that does not is closed like a silent one.
    retried = await open_direct(server)
    assert await retried.connect("/stream/not-a-session") == (
        '44/stream/not-a-session,{"message":"Session not found"}'
    )
    retried.send_text("40")
    assert (await retried.recv_text()).startswith('40{"sid":')
    refused = await open_direct(server)
    assert await refused.connect("/stream/not-a-session") == (
        '44/stream/not-a-session,{"message":"Session not found"}'
    )
    silent = await open_direct(server)
    for closed in (silent, refused):
        # Engine.IO's close, then the WebSocket's.
        assert await closed.recv_text() == "1"
        assert await closed.recv_close() == ws_wire.CLOSE_NORMAL
    # Answered in time: still served.
    for served in (connected, retried):
        served.send_text('421["nope"]')
        assert (await served.recv_text()).startswith("431[")
        served.close()


async def test_a_request_head_has_the_handshake_timeout_to_arrive(start_server: ServerFactory) -> None:
    server = await start_server(handshake_timeout=0.3)  # KEEPALIVE_TIMEOUT stays 75 s
    parts = urlsplit(server.url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n")
    assert await asyncio.wait_for(reader.read(), WAIT) == b""
    writer.close()


# -- messages that are no packet: as python-socketio's path answers them ----------


async def _after(raw: RawSocket) -> tuple[list[str], bool]:
    """What a client sees next: the Engine.IO packets up to the ack of event 1 or to the
    end of the connection (pings left out, not answered), and whether it ended.

    On python-socketio's path a message python-engineio cannot decode ends its reader
    with an exception: aiohttp then writes an HTTP 500 response into the WebSocket (its
    first byte reads as a close frame, with reserved bits a client fails the connection
    on) and the session ends at the next unanswered ping.
    """
    packets: list[str] = []
    try:
        while True:
            opcode, payload = await raw.recv()
            if opcode == CLOSE:
                return packets, True
            if payload == b"2":
                continue
            packets.append(payload.decode())
            if packets[-1].startswith("431["):
                return packets, False
    except (asyncio.IncompleteReadError, ConnectionResetError):
        return packets, True


@pytest.mark.parametrize("message", ["abc", ""])
async def test_a_message_that_is_no_engineio_packet_ends_the_connection(
    start_server: ServerFactory, sio_path: str, message: str
) -> None:
    server = await start_server(socketio_ping_interval=0.2, socketio_ping_timeout=0.2)
    raw = await open_direct(server)
    await raw.connect()
    raw.send_text(message)
    raw.send_text('421["nope"]')
    # Nothing answered after it, not even Engine.IO's close: the connection ends.
    assert await _after(raw) == ([], True)
    raw.close()


#: Engine.IO packets a direct WebSocket has no use for, and malformed Socket.IO packets:
#: what python-socketio's path answers each with.
NO_USE = [
    ("5", ["6"]),  # upgrade: a noop, as python-engineio answers it
    ("6", []),
    ("0", []),
    ("2probe", []),
    ("7", []),
    ("9", []),
    ("b", []),
    ("bAAEC", []),
    ("4", []),
    ("4x", []),
    ("49", []),
    ("42", []),
    ("42[", []),
    ("42/nowhere,1[]", []),
    ('42{"a":1}', []),
    ('42-["a"]', []),
    ("4318[]", []),
    # An event whose name is no string: python-socketio hands it to the handler as is.
    ("427[1]", ['437[{"ok":false,"error":"Malformed event"}]']),
    ('427[null,"x"]', ['437[{"ok":false,"error":"Malformed event"}]']),
]


async def test_packets_of_no_use_are_answered_as_python_socketio_does(
    start_server: ServerFactory, sio_path: str
) -> None:
    server = await start_server()
    raw = await open_direct(server)
    await raw.connect()
    for message, answer in NO_USE:
        raw.send_text(message)
        raw.send_text('421["nope"]')
        assert await _after(raw) == (
            [*answer, '431[{"ok":false,"error":"Unknown event \'nope\'"}]'],
            False,
        ), message
    raw.close()


# -- the heartbeat: pings spread over the interval -----------------------------------


class FakeTransport:
    """What a connection writes, and whether it reads (a stand-in for uvloop's transport)."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.reading = True
        self.resumed = asyncio.Event()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True
        self.resumed.set()

    def close(self) -> None:
        self.closed = True

    abort = close

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def packets(self) -> list[str]:
        """The Engine.IO packets written (the 101 answer left out)."""
        return [server_frame_payload(data)[1].decode() for data in self.written if data[:1] == b"\x81"]


class FakeAPI:
    """The one ``SocketAPI`` call these connections make: namespace ``/`` accepts all."""

    def connect_root(self, sid: str, auth: object) -> None:
        pass


def direct_hub(**options: Any) -> DirectHub:
    options = {"ping_interval": 1.0, "ping_timeout": 100.0, "handshake_timeout": 1000.0, **options}
    return DirectHub(cast(SocketAPI, FakeAPI()), max_payload=1 << 20, origins=None, **options)


def open_connection(hub: DirectHub, now: float) -> tuple[SioConnection, FakeTransport]:
    transport = FakeTransport()
    connection = SioConnection(hub, cast(asyncio.Transport, transport))
    connection.open("accept", b"", now)
    return connection, transport


def test_pings_of_sockets_opened_together_are_spread_over_the_interval() -> None:
    hub = direct_hub()
    phases = round(hub.ping_interval / hub.tick)
    assert phases > 1
    start = 1000.0
    transports = [open_connection(hub, start)[1] for _ in range(1000)]
    pinged: dict[int, list[float]] = {id(t): [] for t in transports}
    per_tick: list[int] = []
    for step in range(1, 4 * phases + 1):
        now = start + step * hub.tick
        for transport in transports:
            transport.written.clear()
        hub.heartbeat(now)
        count = 0
        for transport in transports:
            if "2" in transport.packets():
                pinged[id(transport)].append(now)
                count += 1
        per_tick.append(count)
    # Each tick pings its share, not all of them in one.
    assert max(per_tick) == math.ceil(len(transports) / phases)
    for times in pinged.values():
        # The first ping within an interval, then one every interval exactly.
        assert start < times[0] <= start + hub.ping_interval
        assert all(b - a == hub.ping_interval for a, b in itertools.pairwise(times))
        assert len(times) == 4


def test_an_irregular_heartbeat_pings_each_socket_at_most_a_tick_late() -> None:
    hub = direct_hub(ping_timeout=1.0)
    start = 1000.0
    sockets = [open_connection(hub, start) for _ in range(100)]
    last = {id(transport): start for _, transport in sockets}
    now = start
    for step in range(200):
        now += hub.tick * (0.4 if step % 3 else 1.0)
        for _, transport in sockets:
            transport.written.clear()
        hub.heartbeat(now)
        for connection, transport in sockets:
            if "2" in transport.packets():
                assert now - last[id(transport)] <= hub.ping_interval + hub.tick
                last[id(transport)] = now
                connection.data_received(client_frame(TEXT, b"3"))  # the pong
    assert len(hub.connections) == len(sockets), "every ping answered: no one dropped"


# -- event floods: a few packets per loop turn, and a rate per connection ------------


async def test_one_read_is_handled_a_few_packets_per_loop_turn() -> None:
    limits = Limits.from_settings(make_settings(socket_message_rate=0, socket_message_burst=1))
    hub = direct_hub(limits=limits, max_packets_per_turn=8)
    connection, transport = open_connection(hub, asyncio.get_running_loop().time())
    events = [client_frame(TEXT, f'42{i}["pause-stream","s"]'.encode()) for i in range(100)]
    connection.data_received(client_frame(TEXT, b"40") + b"".join(events))
    # This turn: the CONNECT (the one message the burst allows) and 7 events, each
    # refused at once; reading waits for the rest.
    assert not transport.reading
    assert len(transport.packets()) == 2 + 7  # the open packet, the CONNECT answered, 7 acks
    async with asyncio.timeout(WAIT):
        await transport.resumed.wait()
    acks = transport.packets()[2:]
    assert acks == [
        f"43{i}" + json.dumps([error_ack(TOO_MANY_MESSAGES)], separators=(",", ":")) for i in range(100)
    ]
    assert not hub.tasks, "no task for a refused event"


async def test_a_flood_of_events_is_refused_and_stalls_no_other_stream(
    start_server: ServerFactory, http: Any, sio_clients: Any
) -> None:
    server = await start_server(socket_message_rate=50, socket_message_burst=200)
    watched = await create_session(http, server, maxTokens=300, tokensPerSecond=600)
    _, viewer = await stream_viewer(sio_clients, server, watched)
    flooded = await create_session(http, server)
    flooder = await open_direct(server)
    await flooder.connect()
    count = 10_000
    events = ("pause-stream", "resume-stream")
    flooder.writer.write(
        b"".join(client_frame(TEXT, f'42{i}["{events[i % 2]}","{flooded}"]'.encode()) for i in range(count))
    )
    await start_stream(http, server, watched)
    acks: dict[int, dict[str, Any]] = {}
    while len(acks) < count:
        text = await flooder.recv_text()
        ack_id, _, body = text[2:].partition("[")
        acks[int(ack_id)] = json.loads("[" + body)[0]
    outcomes = Counter(ack.get("error") == TOO_MANY_MESSAGES for ack in acks.values())
    assert outcomes[True] >= count - 200 - 50 * 60, "over the burst, refused"
    assert outcomes[False] >= 200, "the burst is served"
    # The other stream went on meanwhile, every chunk once and in order.
    await viewer.wait_finished()
    assert_exactly_once(viewer, (await get_session(http, server, watched))["chunks"])
    # The server serves others, and the flooder too once within the rate.
    other = await open_direct(server)
    await other.connect()
    other.send_text('421["nope"]')
    assert json.loads((await other.recv_text())[3:]) == [error_ack("Unknown event 'nope'")]
    flooder.close()
    other.close()


# -- connections per address -----------------------------------------------------


async def _refusal(server: LiveServer, headers: str = "") -> tuple[bytes, dict[str, Any]]:
    raw, head = await RawSocket.open(server, headers=headers)
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    body = json.loads(await raw.reader.readexactly(length))
    assert await asyncio.wait_for(raw.reader.read(), WAIT) == b"", "closed after the answer"
    return head, body


async def test_connections_per_address_are_limited(start_server: ServerFactory) -> None:
    server = await start_server(max_connections_per_address=2)
    counter = server.app[limits_key].connections
    first, second = await open_direct(server), await open_direct(server)
    head, body = await _refusal(server)
    assert head.startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
    assert b"\r\nRetry-After: 1\r\n" in head
    assert b"\r\nContent-Type: application/json\r\n" in head
    assert body == {"error": too_many_connections(2, CONNECTION_RETRY_AFTER)}
    assert counter.count("127.0.0.1") == 2
    # Released once when a connection ends, whichever side ends it.
    first.close()
    await wait_until(lambda: counter.count("127.0.0.1") == 1)
    third = await open_direct(server)
    second.send(CLOSE, struct.pack("!H", 1000))
    assert await second.recv_close() == 1000
    await wait_until(lambda: counter.count("127.0.0.1") == 1)
    third.close()
    await wait_until(lambda: counter.count("127.0.0.1") == 0)


async def test_a_trusted_proxy_names_the_address_that_is_counted(start_server: ServerFactory) -> None:
    server = await start_server(max_connections_per_address=1, trusted_proxies="127.0.0.1")
    raw, head = await RawSocket.open(server, headers="X-Forwarded-For: 203.0.113.7\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    head, _ = await _refusal(server, headers="X-Forwarded-For: 203.0.113.7\r\n")
    assert head.startswith(b"HTTP/1.1 429"), head
    other, head = await RawSocket.open(server, headers="X-Forwarded-For: 198.51.100.1, 203.0.113.8\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    assert server.app[limits_key].connections.count("203.0.113.8") == 1
    raw.close()
    other.close()


async def test_new_sockets_per_address_are_limited_in_rate(start_server: ServerFactory) -> None:
    server = await start_server(handshake_rate_per_address=0, handshake_burst_per_address=2)
    for _ in range(2):
        (await open_direct(server)).close()
    head, body = await _refusal(server)
    assert head.startswith(b"HTTP/1.1 429"), head
    assert "HANDSHAKE_RATE_PER_ADDRESS" in body["error"]
