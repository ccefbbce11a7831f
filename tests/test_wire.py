"""The wire codecs (``server.transports.wire``) byte by byte: frames and packets in, frames and packets
out, with no socket, as aiohttp's ``test_websocket_parser.py`` tests its reader."""

from __future__ import annotations

import json
import os
import struct

import pytest

from server.guards.auth import OriginPolicy
from server.transports.sio_direct_handshake import websocket_accept
from server.transports.wire import socketio as sio_wire
from server.transports.wire import websocket as ws_wire
from server.transports.wire.websocket import Frame, FrameReader, Violation

TEXT, BINARY, CLOSE, PING, PONG, CONT = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0


def client_frame(
    opcode: int, payload: bytes = b"", *, final: bool = True, masked: bool = True, rsv: int = 0
) -> bytes:
    """A frame as a client sends it (masked unless told otherwise)."""
    first = (0x80 if final else 0) | rsv | opcode
    mask_bit = 0x80 if masked else 0
    size = len(payload)
    if size < 126:
        head = bytes((first, mask_bit | size))
    elif size < 1 << 16:
        head = struct.pack("!BBH", first, mask_bit | 126, size)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, size)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def server_frame_payload(frame: bytes) -> tuple[int, bytes]:
    """Opcode and payload of an unmasked server frame."""
    length, head = frame[1] & 0x7F, 2
    if length == 126:
        length, head = struct.unpack("!H", frame[2:4])[0], 4
    elif length == 127:
        length, head = struct.unpack("!Q", frame[2:10])[0], 10
    assert frame[1] & 0x80 == 0, "server frames are not masked"
    assert len(frame) == head + length
    return frame[0], frame[head:]


# -- writing -----------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_text_frames_use_the_shortest_length_form(size: int) -> None:
    frame = ws_wire.websocket_text_frame("a" * size)
    first, payload = server_frame_payload(frame)
    assert first == 0x81, "final text frame"
    assert payload == b"a" * size
    header = len(frame) - size
    assert header == (2 if size < 126 else 4 if size < 65536 else 10)


def test_text_frames_carry_utf8() -> None:
    assert server_frame_payload(ws_wire.websocket_text_frame("héllo ✓"))[1] == "héllo ✓".encode()


def test_control_and_close_frames() -> None:
    assert ws_wire.control_frame(PONG, b"hi") == b"\x8a\x02hi"
    assert ws_wire.close_frame(1001) == b"\x88\x02\x03\xe9"


@pytest.mark.parametrize(
    ("payload", "reply"),
    [
        (b"", 1000),
        (b"\x03", 1002),
        (struct.pack("!H", 1000), 1000),
        (struct.pack("!H", 1001) + b"bye", 1001),
        (struct.pack("!H", 1005), 1002),
        (struct.pack("!H", 1006), 1002),
        (struct.pack("!H", 2999), 1002),
        (struct.pack("!H", 3000), 3000),
        (struct.pack("!H", 4999), 4999),
        (struct.pack("!H", 5000), 1002),
        (struct.pack("!H", 1000) + b"\xff", 1007),
    ],
)
def test_close_reply(payload: bytes, reply: int) -> None:
    assert ws_wire.close_reply(payload) == reply


def test_unmask_is_its_own_inverse() -> None:
    data, mask = os.urandom(1000), os.urandom(4)
    masked = ws_wire.unmask(data, mask)
    assert masked == bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    assert ws_wire.unmask(masked, mask) == data
    assert ws_wire.unmask(b"", mask) == b""


# -- the opening handshake ---------------------------------------------------

RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def test_accept_key_is_the_rfc_example() -> None:
    assert ws_wire.accept_key(RFC_KEY) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert ws_wire.switching_protocols("abc").startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert ws_wire.switching_protocols("abc").endswith(b"Sec-WebSocket-Accept: abc\r\n\r\n")


def head(
    target: str = "/socket.io/?EIO=4&transport=websocket",
    *,
    method: str = "GET",
    version: str = "HTTP/1.1",
    **over: str,
) -> bytes:
    headers = {
        "Host": "localhost",
        "Upgrade": "websocket",
        "Connection": "keep-alive, Upgrade",
        "Sec-WebSocket-Key": RFC_KEY,
        "Sec-WebSocket-Version": "13",
    }
    headers.update({k.replace("_", "-"): v for k, v in over.items()})
    lines = [f"{method} {target} {version}"] + [f"{k}: {v}" for k, v in headers.items() if v]
    return "\r\n".join(lines).encode()


def test_handshake_is_parsed() -> None:
    parsed = ws_wire.parse_handshake(head(Origin="http://a.example"))
    assert parsed is not None
    assert parsed.path == "/socket.io/"
    assert parsed.query == {"EIO": ["4"], "transport": ["websocket"]}
    assert parsed.headers["origin"] == "http://a.example"


@pytest.mark.parametrize(
    "request_head",
    [
        head(method="POST"),
        head(version="HTTP/1.0"),
        head(Upgrade=""),
        head(Upgrade="h2c"),
        head(Connection="keep-alive"),
        head(Sec_WebSocket_Version="8"),
        head(Sec_WebSocket_Key=""),
        head(Sec_WebSocket_Key="not base64!"),
        head(Sec_WebSocket_Key="c2hvcnQ="),
        head() + b"\r\nno colon here",
        b"GET /socket.io/",
    ],
)
def test_handshakes_that_are_not_websocket_upgrades(request_head: bytes) -> None:
    assert ws_wire.parse_handshake(request_head) is None


@pytest.mark.parametrize(
    ("request_head", "origins", "accepted"),
    [
        (head(), None, True),
        (head("/socket.io?EIO=4&transport=websocket"), None, True),
        (head("/socket.io/?EIO=3&transport=websocket"), None, False),
        (head("/socket.io/?EIO=4&transport=polling"), None, False),
        (head("/socket.io/?EIO=4&transport=websocket&sid=abc"), None, False),
        (head("/other/?EIO=4&transport=websocket"), None, False),
        (head(Origin="http://a.example"), ["http://a.example"], True),
        (head(Origin="http://evil.example"), ["http://a.example"], False),
        (head(), ["http://a.example"], True),
        (head(Origin="http://localhost"), ["http://a.example"], True),  # its own origin
        (head(Origin="https://localhost:8443"), ["http://a.example"], False),
    ],
)
def test_direct_socketio_handshakes(request_head: bytes, origins: list[str] | None, accepted: bool) -> None:
    accept = websocket_accept(request_head, None if origins is None else OriginPolicy(origins).allows)
    assert (accept == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") is accepted
    assert accept is None or accepted


# -- reading frames ----------------------------------------------------------


def test_one_text_frame() -> None:
    reader = FrameReader(1024)
    assert reader.feed(client_frame(TEXT, b"40")) == [Frame(TEXT, b"40")]
    assert reader.frames == 1


def test_frames_split_anywhere_are_joined() -> None:
    data = client_frame(TEXT, b"hello") + client_frame(BINARY, b"\x00\x01") + client_frame(TEXT, b"x" * 300)
    reader = FrameReader(1024)
    out: list[Frame | Violation] = []
    for i in range(len(data)):
        out += reader.feed(data[i : i + 1])
    assert out == [Frame(TEXT, b"hello"), Frame(BINARY, b"\x00\x01"), Frame(TEXT, b"x" * 300)]


@pytest.mark.parametrize("size", [126, 65535, 65536])
def test_extended_lengths(size: int) -> None:
    reader = FrameReader(1 << 20)
    assert reader.feed(client_frame(TEXT, b"a" * size)) == [Frame(TEXT, b"a" * size)]


def test_fragments_with_a_ping_between_them() -> None:
    reader = FrameReader(1024)
    data = (
        client_frame(TEXT, b"42[", final=False)
        + client_frame(PING, b"p")
        + client_frame(CONT, b'"a"', final=False)
        + client_frame(CONT, b"", final=False)
        + client_frame(CONT, b"]")
    )
    assert reader.feed(data) == [Frame(PING, b"p"), Frame(TEXT, b'42["a"]')]
    assert reader.frames == 5
    assert not reader.in_message


def test_control_frames_pass_through() -> None:
    reader = FrameReader(1024)
    data = client_frame(PONG, b"x") + client_frame(CLOSE, struct.pack("!H", 1000))
    assert reader.feed(data) == [Frame(PONG, b"x"), Frame(CLOSE, b"\x03\xe8")]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        pytest.param(client_frame(TEXT, b"40", masked=False), 1002, id="unmasked"),
        pytest.param(client_frame(TEXT, b"40", rsv=0x40), 1002, id="rsv1-without-extension"),
        pytest.param(client_frame(TEXT, b"4" * 2000), 1009, id="too-big"),
        pytest.param(client_frame(0x3, b""), 1002, id="unknown-opcode"),
        pytest.param(client_frame(0xB, b""), 1002, id="unknown-control-opcode"),
        pytest.param(client_frame(CONT, b"x"), 1002, id="stray-continuation"),
        pytest.param(client_frame(PING, b"x", final=False), 1002, id="fragmented-ping"),
        pytest.param(client_frame(PING, b"x" * 126), 1002, id="oversized-ping"),
        pytest.param(
            client_frame(TEXT, b"4", final=False) + client_frame(TEXT, b"4"),
            1002,
            id="message-inside-message",
        ),
        pytest.param(
            client_frame(TEXT, b"4" * 1000, final=False) + client_frame(CONT, b"4" * 100),
            1009,
            id="fragments-too-big",
        ),
        pytest.param(
            client_frame(TEXT, b"4", final=False)
            + client_frame(CONT, b"", final=False) * ws_wire.MAX_FRAGMENTS,
            1009,
            id="endless-empty-fragments",
        ),
    ],
)
def test_violations_carry_the_rfc_close_code(data: bytes, code: int) -> None:
    reader = FrameReader(1024)
    out = reader.feed(client_frame(TEXT, b"before") + data + client_frame(TEXT, b"after"))
    assert out[0] == Frame(TEXT, b"before"), "what came before the violation is read"
    assert isinstance(out[-1], Violation)
    assert out[-1].code == code
    assert len(out) == 2
    assert reader.feed(client_frame(TEXT, b"more")) == [], "nothing is read after a violation"


def test_a_too_big_frame_is_refused_from_its_header_alone() -> None:
    reader = FrameReader(1024)
    out = reader.feed(client_frame(TEXT, b"x" * 70000)[:10])
    assert [type(item) for item in out] == [Violation]


# -- Engine.IO and Socket.IO packets -----------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "namespace", "ack_id", "data", "attachments"),
    [
        ("0", "0", "/", None, None, 0),
        ('0{"lastSeq":3}', "0", "/", None, {"lastSeq": 3}, 0),
        ('0/stream/abc,{"lastSeq":3}', "0", "/stream/abc", None, {"lastSeq": 3}, 0),
        ("1/stream/abc,", "1", "/stream/abc", None, None, 0),
        ('2["join-stream","x"]', "2", "/", None, ["join-stream", "x"], 0),
        ('212["pause-stream","x"]', "2", "/", 12, ["pause-stream", "x"], 0),
        ('2/stream/abc,7["pause-stream"]', "2", "/stream/abc", 7, ["pause-stream"], 0),
        ('51-3["a",{"_placeholder":true,"num":0}]', "5", "/", 3, ["a", {"_placeholder": True, "num": 0}], 1),
        ("2/nowhere,1[]", "2", "/nowhere", 1, [], 0),
    ],
)
def test_packets_are_decoded(
    text: str, kind: str, namespace: str, ack_id: int | None, data: object, attachments: int
) -> None:
    assert sio_wire.parse_packet(text) == sio_wire.SioPacket(kind, namespace, ack_id, data, attachments)


@pytest.mark.parametrize("text", ["", "x", "7", "9[]", "2[", '2{"a":', "2/x,abc"])
def test_malformed_packets_raise_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        sio_wire.parse_packet(text)


def test_packets_are_encoded_with_the_namespace_prefix() -> None:
    assert sio_wire.namespace_prefix("/") == ""
    assert sio_wire.namespace_prefix("/stream/a") == "/stream/a,"
    assert sio_wire.event_prefix("/") == "2"
    assert sio_wire.event_prefix("/stream/a") == "2/stream/a,"
    assert (
        sio_wire.encode_packet(sio_wire.SIO_CONNECT, "/stream/a", '{"sid":"s"}') == '40/stream/a,{"sid":"s"}'
    )
    assert sio_wire.encode_packet(sio_wire.SIO_DISCONNECT, "/") == "41"
    assert sio_wire.ack_packet("/", 5, sio_wire.error_ack("no")) == '435[{"ok":false,"error":"no"}]'
    assert sio_wire.ack_packet("/stream/a", 0, {"ok": True}) == '43/stream/a,0[{"ok":true}]'


def test_encoded_packets_decode_to_what_was_sent() -> None:
    text = sio_wire.ack_packet("/stream/a", 9, {"ok": True, "lastSeq": 4})
    assert text[0] == sio_wire.EIO_MESSAGE
    assert sio_wire.parse_packet(text[1:]) == sio_wire.SioPacket(
        sio_wire.SIO_ACK, "/stream/a", 9, [{"ok": True, "lastSeq": 4}]
    )


def test_open_packet() -> None:
    fields = sio_wire.open_fields(25, 20, 1000)
    text = sio_wire.open_packet("abc", fields)
    assert text[0] == sio_wire.EIO_OPEN
    assert json.loads(text[1:]) == {
        "sid": "abc",
        "upgrades": [],
        "pingInterval": 25000,
        "pingTimeout": 20000,
        "maxPayload": 1000,
    }
