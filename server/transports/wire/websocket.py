"""RFC 6455 for the server side: the opening handshake, a frame reader and frame writers.

:class:`FrameReader` turns the bytes a client sends into whole messages and control
frames, enforcing the rules a server must (masking, no extension bits, control frames
short and final, fragmentation in order, size limits). A violation is returned as a
:class:`Violation` carrying the close code to answer with; the caller closes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# Opcodes (section 5.2).
OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
# Close codes (section 7.4.1).
CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_PROTOCOL_ERROR = 1000, 1001, 1002
CLOSE_INVALID_DATA, CLOSE_TOO_BIG = 1007, 1009
#: Close codes a peer may send (section 7.4); others are answered with 1002.
VALID_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})
#: Most frames one fragmented message may have (empty fragments would cost nothing otherwise).
MAX_FRAGMENTS = 1024


@dataclass(frozen=True, slots=True)
class Frame:
    """A whole data message (fragments joined) or one control frame."""

    opcode: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Violation:
    """The client broke the protocol: close with ``code``; ``reason`` is for the log."""

    code: int
    reason: str


def websocket_text_frame(text: str) -> bytes:
    """One unmasked, final, uncompressed text frame, server to client."""
    payload = text.encode()
    return text_frame_header(len(payload)) + payload


def text_frame_header(size: int) -> bytes:
    """The header of an unmasked, final, uncompressed text frame of ``size`` bytes, server
    to client (the UTF-8 payload follows it)."""
    if size < 126:
        return _SHORT_HEADERS[size]
    if size < 1 << 16:
        return _pack_medium(0x81, 126, size)
    return _pack_long(0x81, 127, size)


_SHORT_HEADERS = tuple(bytes((0x81, size)) for size in range(126))
_pack_medium = struct.Struct("!BBH").pack
_pack_long = struct.Struct("!BBQ").pack


def control_frame(opcode: int, payload: bytes = b"") -> bytes:
    """A control frame (ping, pong, close); ``payload`` is at most 125 bytes."""
    return bytes((0x80 | opcode, len(payload))) + payload


def close_frame(code: int) -> bytes:
    return control_frame(OP_CLOSE, struct.pack("!H", code))


def close_reply(payload: bytes) -> int:
    """The code to answer a client's close frame with (sections 5.5.1 and 7.4)."""
    if not payload:
        return CLOSE_NORMAL
    if len(payload) < 2:
        return CLOSE_PROTOCOL_ERROR
    code: int = struct.unpack("!H", payload[:2])[0]
    if code not in VALID_CLOSE_CODES and not 3000 <= code < 5000:
        return CLOSE_PROTOCOL_ERROR
    try:
        payload[2:].decode()
    except UnicodeDecodeError:
        return CLOSE_INVALID_DATA
    return code


def unmask(data: bytes, mask: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``mask`` (one big-integer operation, not a byte loop)."""
    size = len(data)
    if not size:
        return data
    key = (mask * (size // 4 + 1))[:size]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(size, "big")


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key`` (section 4.2.2)."""
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def refusal(status: int, reason: str, body: bytes, headers: Mapping[str, str]) -> bytes:
    """An HTTP answer that refuses an opening handshake (``body`` is JSON); the
    connection is closed after it."""
    lines = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines += [f"Content-Length: {len(body)}", "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def switching_protocols(accept: str) -> bytes:
    """The server's 101 answer to an accepted opening handshake."""
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept.encode() + b"\r\n\r\n"
    )


@dataclass(frozen=True, slots=True)
class Handshake:
    """An opening handshake's request line and headers (names lower-cased)."""

    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


def parse_handshake(head: bytes) -> Handshake | None:
    """A ``GET`` WebSocket upgrade request head (without the blank line), or ``None`` when
    it is anything else or malformed in any way (a caller then leaves it to aiohttp)."""
    lines = head.decode("latin-1").split("\r\n")
    request = lines[0].split(" ")
    if len(request) != 3 or request[0] != "GET" or request[2] != "HTTP/1.1":
        return None
    path, _, query = request[1].partition("?")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            return None
        name, value = name.strip().lower(), value.strip()
        # A header sent twice is one comma-separated list (RFC 9110, section 5.3), as an
        # ``X-Forwarded-For`` that two proxies each added a line to.
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    connection = {token.strip().lower() for token in headers.get("connection", "").split(",")}
    if (
        headers.get("upgrade", "").lower() != "websocket"
        or "upgrade" not in connection
        or headers.get("sec-websocket-version") != "13"
    ):
        return None
    try:
        if len(base64.b64decode(headers.get("sec-websocket-key", ""), validate=True)) != 16:
            return None
    except (binascii.Error, ValueError):
        return None
    return Handshake(path, parse_qs(query), headers)


#: Whether a browser ``Origin`` may open a connection to the server at ``Host``.
OriginCheck = Callable[[str | None, str | None], bool]


def origin_allowed(handshake: Handshake, allows: OriginCheck | None) -> bool:
    """``allows`` ``None`` allows any origin."""
    return allows is None or allows(handshake.headers.get("origin"), handshake.headers.get("host"))


class FrameReader:
    """Bytes from a client in, :class:`Frame` and :class:`Violation` out.

    Feed it whatever arrives; it keeps an incomplete frame for the next call. After a
    violation it reads nothing more. ``frames`` counts every complete frame read,
    fragments and control frames included.
    """

    __slots__ = (
        "_broken",
        "_buffer",
        "_fragment_opcode",
        "_fragment_size",
        "_fragments",
        "frames",
        "max_payload",
    )

    def __init__(self, max_payload: int) -> None:
        self.max_payload = max_payload
        self.frames = 0
        self._buffer = bytearray()
        self._fragments: list[bytes] | None = None
        self._fragment_opcode = OP_TEXT
        self._fragment_size = 0
        self._broken = False

    @property
    def in_message(self) -> bool:
        """A fragmented message has begun and not ended."""
        return self._fragments is not None

    @property
    def partial_bytes(self) -> int:
        """Bytes held for messages not complete yet: the fragments read so far and the
        frame that has only partly arrived."""
        return len(self._buffer) + (self._fragment_size if self._fragments is not None else 0)

    def feed(self, data: bytes) -> list[Frame | Violation]:
        """Everything complete in what has arrived so far, in order; a :class:`Violation`
        is always the last item."""
        if self._broken:
            return []
        buffer = self._buffer
        buffer += data
        out: list[Frame | Violation] = []
        pos, size = 0, len(buffer)
        while size - pos >= 2:
            first, second = buffer[pos], buffer[pos + 1]
            length, head = second & 0x7F, 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(buffer[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(buffer[pos + 2 : pos + 10], "big"), 10
            if first & 0x70 or not second & 0x80:
                return self._break(out, Violation(CLOSE_PROTOCOL_ERROR, "unmasked frame or extension bits"))
            if length > self.max_payload:
                return self._break(out, Violation(CLOSE_TOO_BIG, f"frame of {length} bytes"))
            end = pos + head + 4 + length
            if end > size:
                break
            mask = bytes(buffer[pos + head : pos + head + 4])
            payload = unmask(bytes(buffer[pos + head + 4 : end]), mask)
            pos = end
            self.frames += 1
            item = self._frame(bool(first & 0x80), first & 0x0F, payload)
            if item is None:
                continue
            out.append(item)
            if isinstance(item, Violation):
                self._broken = True
                buffer.clear()
                return out
        del buffer[:pos]
        return out

    def _break(self, out: list[Frame | Violation], violation: Violation) -> list[Frame | Violation]:
        self._broken = True
        self._buffer.clear()
        out.append(violation)
        return out

    def _frame(self, final: bool, opcode: int, payload: bytes) -> Frame | Violation | None:
        if opcode >= OP_CLOSE:
            if not final or len(payload) > 125:
                return Violation(CLOSE_PROTOCOL_ERROR, "fragmented or oversized control frame")
            if opcode not in (OP_CLOSE, OP_PING, OP_PONG):
                return Violation(CLOSE_PROTOCOL_ERROR, f"unknown control opcode {opcode}")
            return Frame(opcode, payload)
        if opcode == OP_CONTINUATION:
            fragments = self._fragments
            if fragments is None:
                return Violation(CLOSE_PROTOCOL_ERROR, "continuation without a first frame")
            fragments.append(payload)
            self._fragment_size += len(payload)
            if self._fragment_size > self.max_payload or len(fragments) > MAX_FRAGMENTS:
                return Violation(CLOSE_TOO_BIG, "fragmented message too big")
            if not final:
                return None
            self._fragments = None
            return Frame(self._fragment_opcode, b"".join(fragments))
        if opcode not in (OP_TEXT, OP_BINARY):
            return Violation(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")
        if self._fragments is not None:
            return Violation(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
        if not final:
            self._fragments, self._fragment_opcode = [payload], opcode
            self._fragment_size = len(payload)
            return None
        return Frame(opcode, payload)
