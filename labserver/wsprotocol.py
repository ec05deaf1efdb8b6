"""RFC 6455's server side as a state machine: bytes in, messages and bytes out, no I/O.

This is the design of ``websockets``' ``Protocol`` (and of h11 and wsproto): everything the
RFC says a server does with the bytes of one connection lives in one object that never touches
a socket, so that it can be read next to the RFC and tested by feeding it bytes.
:class:`labserver.ws.WebSocketConnection` is the asyncio shell around it (the transport, the
timers, backpressure, byte counting); what a route does with the messages is a handler
(:class:`labserver.ws.LabSocket` for ``/ws``, an echo for the Autobahn suite).

How it is driven::

    protocol = ServerProtocol(max_message_bytes=65536)
    protocol.receive_data(bytes_from_the_socket)
    for message in protocol.events_received():   # whole messages, inflated and decoded
        protocol.send_text(b'{"echo": 1}')        # or close(1003, "...") ...
    for data in protocol.data_to_send():          # Pongs, answers, Close frames, in order
        socket.write(data)
    if protocol.state is State.CLOSED:            # the server closes TCP first (§7.1.1)
        socket.close()

The states (§4.1, §7), and what moves between them:

=========  ===========================================  ===================================
state      what it means                                 how it is left
=========  ===========================================  ===================================
OPEN       messages both ways; a Ping gets its Pong      :meth:`close` → CLOSING;
                                                         a client Close (answered) → CLOSED;
                                                         a broken frame (:meth:`fail`) → CLOSED
CLOSING    our Close is sent; nothing more is sent, not  the client's Close → CLOSED;
           even a Pong; what the client sends is read    a broken frame → CLOSED
           (and checked) but not delivered
CLOSED     the closing handshake is over, or the         — (the shell closes the TCP
           connection failed (§7.1.7): close TCP         connection; a timer stands in for
                                                         a client that never answers)
=========  ===========================================  ===================================

Frames are parsed as the caller iterates :meth:`ServerProtocol.events_received`, one at a
time, so what the caller sends in answer to a message goes out before what the protocol sends
in answer to the frames after it (a Pong, a Close for a broken frame) — the order in which a
server that handles each frame in turn would write them.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass

from . import wsframes
from .wsframes import (
    BINARY,
    CLOSE,
    NO_STATUS,
    PING,
    PONG,
    TEXT,
    Deflate,
    Frame,
    FrameReader,
    MessageAssembler,
    ProtocolFailure,
)


class State(enum.Enum):
    """RFC 6455's states of a connection after the opening handshake (§4.1, §7.1)."""

    OPEN = 1
    CLOSING = 2
    CLOSED = 3


OPEN, CLOSING, CLOSED = State.OPEN, State.CLOSING, State.CLOSED


@dataclass(frozen=True, slots=True)
class Message:
    """One whole data message from the client (§5.4, §6.2): inflated, and decoded if text."""

    opcode: int  # TEXT or BINARY
    payload: bytes
    text: str | None  # the payload as UTF-8, for a text message


class ServerProtocol:
    """One WebSocket connection's protocol state, server side, after the ``101``.

    ``max_message_bytes`` bounds a message (over it: 1009); ``deflate`` is the connection's
    permessage-deflate context when the client offered it and the handshake agreed to it.
    """

    __slots__ = ("state", "close_code", "deflate", "frames", "assembler", "outgoing")

    def __init__(self, max_message_bytes: int, deflate: Deflate | None = None) -> None:
        self.state = OPEN
        self.close_code: int | None = None  # the code of the Close we sent, or of the client's
        self.deflate = deflate
        self.frames = FrameReader(max_message_bytes, rsv1_allowed=deflate is not None)
        self.assembler = MessageAssembler(max_message_bytes)
        self.outgoing: list[bytes] = []

    # --- bytes in -------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes from the client, in the order they came; parsed by :meth:`events_received`.
        Once CLOSED nothing more is read."""
        if self.state is not CLOSED:
            self.frames.receive(data)

    def events_received(self) -> Iterator[Message]:
        """The messages the bytes received so far complete, parsed as they are asked for.

        Control frames are answered here (a Ping with its Pong, a Close with a Close); a frame
        the RFC says a server must refuse fails the connection (:meth:`fail`) with the close
        code the failure carries, and nothing after it is read.
        """
        try:
            for f in self.frames.frames():
                message = self.frame_received(f)
                if message is not None:
                    yield message
                if self.state is CLOSED:
                    self.frames.discard()
                    return
        except ProtocolFailure as failure:
            self.fail(failure.code, failure.reason)

    def frame_received(self, f: Frame) -> Message | None:
        if f.opcode == CLOSE:
            self.close_received(f.payload)
            return None
        if f.opcode == PING:
            if self.state is OPEN:  # §5.5.1: nothing follows a Close frame, not even a Pong
                self.outgoing.append(wsframes.frame(PONG, f.payload))
            return None
        if f.opcode == PONG:  # §5.5.3: an unsolicited Pong needs no answer
            return None
        whole = self.assembler.add(f)
        if whole is None or self.state is not OPEN:
            return None  # in CLOSING a message is read (and checked), not delivered
        opcode, compressed, payload = whole
        if compressed:
            assert self.deflate is not None  # RSV1 is refused without it
            payload = self.deflate.decompress(payload, self.assembler.max_bytes)
        text = None
        if opcode == TEXT:
            try:
                text = payload.decode()
            except UnicodeDecodeError:  # §8.1
                raise ProtocolFailure(wsframes.INVALID_TEXT,
                                      "text messages must be UTF-8") from None
        return Message(opcode, payload, text)

    def close_received(self, payload: bytes) -> None:
        """The client's Close (§5.5.1): answered with its code if we had not sent ours; either
        way the closing handshake is over."""
        code = wsframes.closing_code(payload)  # a code a client may not send: ProtocolFailure
        if self.state is OPEN:
            self.close_code = code
            self.outgoing.append(wsframes.frame(CLOSE, payload[:2] if code != NO_STATUS
                                                else b""))
        self.state = CLOSED

    # --- what the server sends ------------------------------------------------------------

    def send_text(self, payload: bytes) -> None:
        """A text message (UTF-8 bytes); compressed when the connection agreed to deflate.
        Nothing is sent once the connection is not OPEN."""
        self.send(TEXT, payload)

    def send_binary(self, payload: bytes) -> None:
        self.send(BINARY, payload)

    def send(self, opcode: int, payload: bytes) -> None:
        if self.state is not OPEN:
            return
        if self.deflate is None:
            self.outgoing.append(wsframes.frame(opcode, payload))
        else:
            self.outgoing.append(wsframes.frame(opcode, self.deflate.compress(payload),
                                                rsv1=True))

    def send_ping(self, payload: bytes = b"") -> None:
        if self.state is OPEN:
            self.outgoing.append(wsframes.frame(PING, payload))

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake (§7.1.2): our Close frame, then CLOSING until the
        client's comes back. Only from OPEN."""
        if self.state is not OPEN:
            return
        self.close_code = code
        self.outgoing.append(wsframes.close_frame(code, reason))
        self.state = CLOSING

    def fail(self, code: int, reason: str) -> None:
        """Fail the connection (§7.1.7): a Close frame saying why, if none was sent yet, and
        CLOSED at once — the client's bytes are no longer read."""
        if self.state is OPEN:
            self.close_code = code
            self.outgoing.append(wsframes.close_frame(code, reason))
        self.state = CLOSED
        self.frames.discard()

    def data_to_send(self) -> list[bytes]:
        """The bytes to write, in order, since the last call."""
        outgoing, self.outgoing = self.outgoing, []
        return outgoing

    def close_expected(self) -> bool:
        """Is the TCP connection about to end? (CLOSING: the shell times the client's
        answer; CLOSED: it closes the connection.)"""
        return self.state is not OPEN
