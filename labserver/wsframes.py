"""RFC 6455 by hand: the handshake's answer, frames in and out, close codes, permessage-deflate.

What :mod:`labserver.ws` needs to speak WebSocket on a bare socket, written to be read next to
the RFC:

* **the handshake** (§4.2.2): :func:`accept_key` is ``base64(SHA-1(key + GUID))``;
  :func:`handshake_response` the whole ``101 Switching Protocols`` answer;
* **frames** (§5.2): :func:`frame` builds a server frame (never masked); :class:`FrameReader`
  takes client bytes as they arrive and yields whole frames, refusing what the RFC says a
  server must refuse — an unmasked frame (§5.1), reserved bits or opcodes, a fragmented or
  oversized control frame (§5.5) — with :class:`ProtocolFailure`, which carries the close code
  (§7.4.1) to fail the connection with;
* **messages** (§5.4): data frames and their continuations make one message; control frames
  may come between them;
* **permessage-deflate** (RFC 7692): :func:`negotiate_deflate` picks an offer from
  ``Sec-WebSocket-Extensions``; :class:`Deflate` compresses a message (RSV1 set) and
  decompresses one, bounded.

Nothing here does I/O, and nothing here keeps a connection's state: that is
:class:`labserver.wsprotocol.ServerProtocol` (OPEN, CLOSING, CLOSED), which uses these pieces;
:class:`labserver.ws.WebSocketConnection` feeds it bytes and writes what comes out.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3

# Opcodes (§5.2)
CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
DATA_OPCODES = (TEXT, BINARY)
CONTROL_OPCODES = (CLOSE, PING, PONG)

# Close codes (§7.4.1)
NORMAL, GOING_AWAY, PROTOCOL_ERROR, UNSUPPORTED_DATA = 1000, 1001, 1002, 1003
NO_STATUS = 1005  # never sent: "the Close frame had no code"
INVALID_TEXT, POLICY_VIOLATION, MESSAGE_TOO_BIG = 1007, 1008, 1009

#: The codes below 3000 a peer may send (§7.4.1 and IANA's registry: 1012 service restart,
#: 1013 try again later, 1014 bad gateway), as websockets' ``EXTERNAL_CLOSE_CODES``; 3000–4999
#: are for libraries and applications.
CLIENT_CLOSE_CODES = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012,
                                1013, 1014))

#: A permessage-deflate message ends with these four bytes, which the sender strips (RFC 7692
#: §7.2.1) and the receiver appends again before inflating.
DEFLATE_TAIL = b"\x00\x00\xff\xff"


class ProtocolFailure(Exception):
    """The client broke the protocol: fail the connection with ``code`` (§7.1.7)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def accept_key(key: str) -> str:
    """§4.2.2: the ``Sec-WebSocket-Accept`` that proves the server read ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def valid_key(key: str) -> bool:
    """§4.1: the key is 16 random bytes, base64-encoded (24 characters)."""
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        return False


def handshake_response(key: str, extensions: str | None = None) -> bytes:
    """The server's whole opening handshake: ``101 Switching Protocols`` and its headers."""
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {accept_key(key)}",
    ]
    if extensions:
        lines.append(f"Sec-WebSocket-Extensions: {extensions}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def frame(opcode: int, payload: bytes, rsv1: bool = False) -> bytes:
    """§5.2: one final frame from the server, unmasked.

    Byte 0 is FIN + (RSV1: compressed) + the opcode; then the payload length in 7 bits, or 126
    and 16 bits, or 127 and 64 bits; then the payload.
    """
    first = 0x80 | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    if n < 126:
        header = bytes((first, n))
    elif n < 1 << 16:
        header = bytes((first, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((first, 127)) + n.to_bytes(8, "big")
    return header + payload


def close_frame(code: int, reason: str = "") -> bytes:
    """A Close frame: the code in two bytes, then a UTF-8 reason (125 bytes in all, §5.5).

    A longer reason is cut at 123 bytes, but not inside a character: a client fails the
    connection on a reason that is not valid UTF-8 (§8.1).
    """
    cut = reason.encode()[:123].decode(errors="ignore").encode()
    return frame(CLOSE, code.to_bytes(2, "big") + cut)


def unmask(mask: bytes, payload: bytes) -> bytes:
    """§5.3: XOR the payload with the 4-byte key, repeated (one big-integer XOR, no loop)."""
    n = len(payload)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def closing_code(payload: bytes) -> int:
    """The code of a client's Close frame (§5.5.1, §7.4); :data:`NO_STATUS` if it has none."""
    if not payload:
        return NO_STATUS
    if len(payload) == 1:
        raise ProtocolFailure(PROTOCOL_ERROR, "a Close frame's code takes two bytes")
    code = int.from_bytes(payload[:2], "big")
    if not (code in CLIENT_CLOSE_CODES or 3000 <= code <= 4999):
        raise ProtocolFailure(PROTOCOL_ERROR, f"{code} is not a close code a client may send")
    try:
        payload[2:].decode()
    except UnicodeDecodeError:
        raise ProtocolFailure(INVALID_TEXT, "a Close frame's reason must be UTF-8") from None
    return code


@dataclass(slots=True)
class Frame:
    fin: bool
    rsv1: bool  # with permessage-deflate: this message is compressed
    opcode: int
    payload: bytes


class FrameReader:
    """Client bytes in, whole frames out; at most ``max_payload`` bytes buffered per frame.

    ``feed(data)`` yields every frame the bytes complete and keeps a partial one for the next
    call (``receive(data)`` then ``frames()`` do the same in two steps). The header is checked
    as soon as it is complete, so an oversized or unmasked frame is refused before its payload
    is read.
    """

    __slots__ = ("buffer", "max_payload", "rsv1_allowed")

    def __init__(self, max_payload: int, rsv1_allowed: bool = False) -> None:
        self.buffer = bytearray()
        self.max_payload = max_payload
        self.rsv1_allowed = rsv1_allowed  # permessage-deflate was negotiated

    def feed(self, data: bytes) -> Iterator[Frame]:
        self.receive(data)
        return self.frames()

    def receive(self, data: bytes) -> None:
        self.buffer += data

    def discard(self) -> None:
        """Forget what is buffered: the connection reads no more (it failed, or closed)."""
        self.buffer.clear()

    def frames(self) -> Iterator[Frame]:
        """The whole frames buffered, each taken from the buffer as it is yielded."""
        buffer = self.buffer
        while len(buffer) >= 2:
            b0, b1 = buffer[0], buffer[1]
            fin, rsv1, opcode = bool(b0 & 0x80), bool(b0 & 0x40), b0 & 0x0F
            if b0 & 0x30 or (rsv1 and not self.rsv1_allowed):
                raise ProtocolFailure(PROTOCOL_ERROR, "reserved bits set without an extension")
            if rsv1 and opcode not in DATA_OPCODES:  # RFC 7692 §6.1
                raise ProtocolFailure(PROTOCOL_ERROR, "RSV1 (compressed) is set only on the "
                                                      "first frame of a data message")
            if opcode not in DATA_OPCODES + CONTROL_OPCODES + (CONTINUATION,):
                raise ProtocolFailure(PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
            if not b1 & 0x80:
                raise ProtocolFailure(PROTOCOL_ERROR, "client frames must be masked (§5.1)")
            length, start = b1 & 0x7F, 2
            if opcode in CONTROL_OPCODES and (length > 125 or not fin):
                raise ProtocolFailure(PROTOCOL_ERROR, "control frames are short and unfragmented")
            if length >= 126:
                start += 2 if length == 126 else 8
                if len(buffer) < start:
                    return
                length = int.from_bytes(buffer[2:start], "big")
            if length > self.max_payload:
                raise ProtocolFailure(MESSAGE_TOO_BIG,
                                      f"a message may have at most {self.max_payload} bytes")
            end = start + 4 + length
            if len(buffer) < end:
                return
            mask, payload = bytes(buffer[start:start + 4]), bytes(buffer[start + 4:end])
            del buffer[:end]
            yield Frame(fin, rsv1, opcode, unmask(mask, payload))


#: What one continuation frame costs while its message is assembled, beyond its payload (a
#: ``bytes`` object's header and its slot in the list of parts), charged against the message's
#: size limit. Without it, empty continuation frames would grow a message without bound and
#: never reach the limit (a 6-byte frame, 8 bytes kept); with it, at most max_bytes / 64 of
#: them (1024 at the default 64 KiB), then close 1009, as ``websockets`` bounds fragments.
FRAGMENT_COST_BYTES = 64


class MessageAssembler:
    """§5.4: data frames and their continuations make one message, bounded in size: its
    payload plus :data:`FRAGMENT_COST_BYTES` per continuation frame."""

    __slots__ = ("opcode", "compressed", "parts", "size", "max_bytes")

    def __init__(self, max_bytes: int) -> None:
        self.opcode: int | None = None  # of the message being assembled
        self.compressed = False
        self.parts: list[bytes] = []
        self.size = 0
        self.max_bytes = max_bytes

    def add(self, f: Frame) -> tuple[int, bool, bytes] | None:
        """A data frame in; ``(opcode, compressed, payload)`` once the message is whole."""
        if f.opcode == CONTINUATION:
            if self.opcode is None:
                raise ProtocolFailure(PROTOCOL_ERROR, "a continuation frame with no message")
            self.size += FRAGMENT_COST_BYTES
        elif self.opcode is not None:
            raise ProtocolFailure(PROTOCOL_ERROR, "a new message before the last one ended")
        else:
            self.opcode, self.compressed = f.opcode, f.rsv1
        self.size += len(f.payload)
        if self.size > self.max_bytes:
            raise ProtocolFailure(MESSAGE_TOO_BIG, (
                f"a message may have at most {self.max_bytes} bytes, each continuation frame "
                f"counting {FRAGMENT_COST_BYTES} more") if f.opcode == CONTINUATION else
                f"a message may have at most {self.max_bytes} bytes")
        self.parts.append(f.payload)
        if not f.fin:
            return None
        message = (self.opcode, self.compressed, b"".join(self.parts))
        self.opcode, self.compressed, self.parts, self.size = None, False, [], 0
        return message


# --- permessage-deflate (RFC 7692) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeflateParams:
    """What was agreed: the server's window, and whether it resets its window per message."""

    server_max_window_bits: int = 15
    server_no_context_takeover: bool = False
    response: str = "permessage-deflate"  # the Sec-WebSocket-Extensions answer


def negotiate_deflate(header: str | None) -> DeflateParams | None:
    """RFC 7692 §5–7: accept the first permessage-deflate offer this server can honour.

    An offer is ``permessage-deflate`` with parameters after ``;``; offers are separated by
    ``,``. The server honours ``server_no_context_takeover`` and ``server_max_window_bits``
    (9–15; zlib cannot make an 8-bit window, so such an offer is declined) and repeats them in
    its answer. ``client_max_window_bits`` and ``client_no_context_takeover`` need nothing of
    it: a 15-bit inflater reads any client window. ``None``: no extension.
    """
    for offer in (header or "").split(","):
        name, *params = (part.strip() for part in offer.split(";"))
        if name.lower() != "permessage-deflate":
            continue
        agreed = parse_deflate_offer(params)
        if agreed is not None:
            return agreed
    return None


def parse_deflate_offer(params: list[str]) -> DeflateParams | None:
    seen: dict[str, str | None] = {}
    for param in params:
        key, _, value = param.partition("=")
        key, value = key.strip().lower(), value.strip().strip('"') or None
        if key in seen:
            return None  # §7: a parameter given twice declines the offer
        seen[key] = value
    bits, no_takeover, answer = 15, False, ["permessage-deflate"]
    for key, value in seen.items():
        if key == "server_no_context_takeover" and value is None:
            no_takeover = True
            answer.append(key)
        elif key == "server_max_window_bits" and is_digits(value):
            bits = int(value)
            if not 9 <= bits <= 15:
                return None
            answer.append(f"{key}={bits}")
        elif key == "client_max_window_bits" and (value is None or is_digits(value)):
            if value is not None and not 8 <= int(value) <= 15:
                return None
        elif key == "client_no_context_takeover" and value is None:
            pass
        else:
            return None  # unknown or malformed parameter: decline this offer
    return DeflateParams(bits, no_takeover, "; ".join(answer))


def is_digits(value: str | None) -> bool:
    """A window size is ASCII digits (RFC 7692 §7.1.2); ``str.isdigit`` also takes "²"."""
    return value is not None and value.isascii() and value.isdigit()


class Deflate:
    """One connection's compressor and inflater (each keeps its window between messages).

    A client may end a message's DEFLATE stream with a BFINAL block (RFC 7692 §7.2.3.4); its
    next message then starts a new stream, so the inflater starts afresh.
    """

    __slots__ = ("params", "_compressor", "_inflater")

    def __init__(self, params: DeflateParams) -> None:
        self.params = params
        self._compressor = self._new_compressor()
        self._inflater = zlib.decompressobj(wbits=-15)

    def _new_compressor(self) -> zlib._Compress:
        return zlib.compressobj(wbits=-self.params.server_max_window_bits)

    def compress(self, payload: bytes) -> bytes:
        """RFC 7692 §7.2.1: deflate, sync-flush, drop the trailing ``00 00 ff ff``."""
        if self.params.server_no_context_takeover:
            self._compressor = self._new_compressor()
        data = self._compressor.compress(payload) + self._compressor.flush(zlib.Z_SYNC_FLUSH)
        return data[:-4] if data.endswith(DEFLATE_TAIL) else data

    def decompress(self, payload: bytes, max_bytes: int) -> bytes:
        """§7.2.2: append ``00 00 ff ff`` and inflate at most ``max_bytes`` (more: 1009)."""
        try:
            data = self._inflater.decompress(payload + DEFLATE_TAIL, max_bytes + 1)
        except zlib.error:
            raise ProtocolFailure(PROTOCOL_ERROR, "the compressed message is corrupt") from None
        if len(data) > max_bytes or self._inflater.unconsumed_tail:
            raise ProtocolFailure(MESSAGE_TOO_BIG, f"a message may have at most {max_bytes} bytes")
        if self._inflater.eof:  # a BFINAL block ended the stream: the next message starts one
            self._inflater = zlib.decompressobj(wbits=-15)
        return data
