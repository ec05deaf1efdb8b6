"""RFC 6455's server side in-process: bytes into a ServerProtocol, messages and bytes out.

The states and close codes that tests/test_ws.py checks over a socket, checked here against
the protocol object alone (as websockets and wsproto test theirs): no server, no event loop.
Client frames are made by ``websockets`` (masked, as a client's must be).
"""

from __future__ import annotations

import zlib

import pytest
from websockets.frames import Frame, Opcode

from labserver import wsframes
from labserver.wsframes import Deflate, DeflateParams
from labserver.wsprotocol import CLOSED, CLOSING, OPEN, Message, ServerProtocol

MAX = 1024


MASK = b"\x1f\x2e\x3d\x4c"  # one fixed mask: the same bytes (and test ids) in every process


def client(opcode: Opcode, payload: bytes = b"", fin: bool = True, rsv1: bool = False) -> bytes:
    """A client's frame, masked (§5.3) with :data:`MASK`."""
    header = Frame(opcode, payload, fin=fin).serialize(mask=False)[:-len(payload) or None]
    header = bytes([header[0] | (0x40 if rsv1 else 0), header[1] | 0x80]) + header[2:]
    return header + MASK + wsframes.unmask(MASK, payload)


def close_payload(code: int, reason: str = "") -> bytes:
    return code.to_bytes(2, "big") + reason.encode()


def feed(protocol: ServerProtocol, data: bytes) -> list[Message]:
    protocol.receive_data(data)
    return list(protocol.events_received())


def sent(protocol: ServerProtocol) -> list[tuple[int, bytes]]:
    """The server's frames since the last call, as (opcode, payload)."""
    reader = wsframes.FrameReader(1 << 20)
    frames = []
    for data in protocol.data_to_send():
        reader.buffer += data
        while len(reader.buffer) >= 2:  # server frames are unmasked: read them by hand
            n, start = reader.buffer[1] & 0x7F, 2
            if n >= 126:
                start += 2 if n == 126 else 8
                n = int.from_bytes(reader.buffer[2:start], "big")
            frames.append((reader.buffer[0] & 0x0F, bytes(reader.buffer[start:start + n])))
            del reader.buffer[:start + n]
    return frames


def test_a_text_message_comes_out_decoded_and_a_binary_one_as_bytes() -> None:
    protocol = ServerProtocol(MAX)
    messages = feed(protocol, client(Opcode.TEXT, "héllo".encode()) + client(Opcode.BINARY,
                                                                                b"\x00\xff"))
    assert messages == [Message(wsframes.TEXT, "héllo".encode(), "héllo"),
                        Message(wsframes.BINARY, b"\x00\xff", None)]
    assert protocol.state is OPEN and sent(protocol) == []


def test_fragments_make_one_message_and_a_ping_between_them_gets_its_pong() -> None:
    protocol = ServerProtocol(MAX)
    data = (client(Opcode.TEXT, b"frag", fin=False) + client(Opcode.PING, b"in between")
            + client(Opcode.CONT, b"ments"))
    assert [m.text for m in feed(protocol, data)] == ["fragments"]
    assert sent(protocol) == [(wsframes.PONG, b"in between")]


def test_bytes_split_anywhere_make_the_same_messages() -> None:
    data = client(Opcode.TEXT, b"x" * 300) + client(Opcode.PING, b"p")
    for cut in range(len(data) + 1):
        protocol = ServerProtocol(MAX)
        messages = feed(protocol, data[:cut]) + feed(protocol, data[cut:])
        assert [m.payload for m in messages] == [b"x" * 300]
        assert sent(protocol) == [(wsframes.PONG, b"p")]


def test_the_server_closes_first_close_then_the_clients_close() -> None:
    """§7.1.2: OPEN → CLOSING (our Close sent) → CLOSED (the client's came back)."""
    protocol = ServerProtocol(MAX)
    protocol.close(1001, "going away")
    assert protocol.state is CLOSING and protocol.close_expected()
    assert sent(protocol) == [(wsframes.CLOSE, close_payload(1001, "going away"))]
    protocol.send_text(b"late")  # nothing follows a Close frame
    protocol.close(1000)  # a second close does nothing
    assert sent(protocol) == []
    assert feed(protocol, client(Opcode.CLOSE, close_payload(1000))) == []
    assert protocol.state is CLOSED and protocol.close_code == 1001
    assert sent(protocol) == []  # our Close was the answer already


def test_in_closing_messages_are_read_not_delivered_and_pings_get_no_pong() -> None:
    protocol = ServerProtocol(MAX)
    protocol.close(1003, "binary messages are not accepted")
    sent(protocol)
    assert feed(protocol, client(Opcode.TEXT, b"late") + client(Opcode.PING, b"late")) == []
    assert sent(protocol) == [] and protocol.state is CLOSING


@pytest.mark.parametrize(("payload", "answer", "code"), [
    (close_payload(1000, "bye"), close_payload(1000), 1000),  # the code echoed (§5.5.1)
    (close_payload(4000), close_payload(4000), 4000),
    (close_payload(1013, "try again later"), close_payload(1013), 1013),  # IANA-registered
    (b"", b"", wsframes.NO_STATUS),  # no code to echo
])
def test_a_clients_close_is_answered_and_the_handshake_is_over(payload: bytes, answer: bytes,
                                                               code: int) -> None:
    protocol = ServerProtocol(MAX)
    assert feed(protocol, client(Opcode.CLOSE, payload) + client(Opcode.TEXT, b"after")) == []
    assert protocol.state is CLOSED and protocol.close_code == code
    assert sent(protocol) == [(wsframes.CLOSE, answer)]
    protocol.receive_data(client(Opcode.PING))  # CLOSED: nothing more is read
    assert list(protocol.events_received()) == [] and sent(protocol) == []


@pytest.mark.parametrize(("data", "code"), [
    (client(Opcode.CLOSE, close_payload(1005)), 1002),  # "no status": never sent (§7.4.1)
    (client(Opcode.CLOSE, close_payload(999)), 1002),
    (client(Opcode.CLOSE, b"\x03"), 1002),  # a code takes two bytes
    (client(Opcode.CLOSE, close_payload(1000) + b"\xff"), 1007),  # the reason is UTF-8
    (client(Opcode.TEXT, b"\xff"), 1007),  # §8.1
    (client(Opcode.TEXT, b"\xce", fin=False) + client(Opcode.CONT, b"\xba\xff"), 1007),
    (client(Opcode.BINARY, b"x" * (MAX + 1)), 1009),
    (client(Opcode.TEXT, b"x", fin=False) + client(Opcode.CONT, b"", fin=False) * (MAX // 64),
     1009),  # empty continuations count 64 bytes each
    (client(Opcode.PING, b"p" * 125)[:1] + b"\xfe" + b"\x00" * 10, 1002),  # 126-byte control
    (bytes([0x09, 0x80]) + b"\x00" * 4, 1002),  # a fragmented control frame (a Ping)
    (Frame(Opcode.TEXT, b"unmasked").serialize(mask=False), 1002),  # §5.1
    (bytes([0xC1, 0x81]) + b"\x00" * 4 + b"x", 1002),  # RSV1 without deflate
    (client(Opcode.CONT, b"x"), 1002),  # a continuation of nothing
    (client(Opcode.TEXT, b"x", fin=False) + client(Opcode.TEXT, b"y"), 1002),
    (bytes([0x83, 0x80]) + b"\x00" * 4, 1002),  # a reserved opcode
])
def test_a_broken_frame_fails_the_connection_with_its_close_code(data: bytes, code: int) -> None:
    """§7.1.7: a Close saying why, then CLOSED at once: nothing after it is read."""
    protocol = ServerProtocol(MAX)
    assert feed(protocol, data + client(Opcode.PING, b"after")) == []
    assert protocol.state is CLOSED and protocol.close_code == code
    ((opcode, payload),) = sent(protocol)
    assert opcode == wsframes.CLOSE and int.from_bytes(payload[:2], "big") == code


def test_a_message_before_a_broken_frame_is_answered_before_the_close() -> None:
    """Frames are parsed as the caller iterates: its answer to a message goes out before the
    Close that fails the connection on the frame after it."""
    protocol = ServerProtocol(MAX)
    protocol.receive_data(client(Opcode.TEXT, b"first") + client(Opcode.TEXT, b"\xff"))
    for message in protocol.events_received():
        protocol.send_text(message.payload)
    assert sent(protocol) == [(wsframes.TEXT, b"first"), (wsframes.CLOSE, close_payload(
        1007, "text messages must be UTF-8"))]


def test_a_close_reason_is_cut_at_123_bytes_not_inside_a_character() -> None:
    protocol = ServerProtocol(MAX)
    protocol.close(1008, "é" * 100)
    ((_, payload),) = sent(protocol)
    assert len(payload) == 124 and payload[2:].decode() == "é" * 61


def test_a_failure_in_closing_ends_the_connection_with_no_second_close() -> None:
    protocol = ServerProtocol(MAX)
    protocol.close(1000)
    sent(protocol)
    feed(protocol, Frame(Opcode.TEXT, b"unmasked").serialize(mask=False))
    assert protocol.state is CLOSED and protocol.close_code == 1000 and sent(protocol) == []


def test_deflate_both_ways() -> None:
    """RFC 7692: a compressed message is inflated; what the server sends is compressed."""
    protocol = ServerProtocol(MAX, Deflate(DeflateParams()))
    compressor = zlib.compressobj(wbits=-15)
    body = compressor.compress(b"z" * 500) + compressor.flush(zlib.Z_SYNC_FLUSH)
    (message,) = feed(protocol, client(Opcode.TEXT, body[:-4], rsv1=True))
    assert message.text == "z" * 500
    protocol.send_text(b"y" * 500)
    ((opcode, payload),) = sent(protocol)
    assert opcode == wsframes.TEXT and len(payload) < 20
    assert zlib.decompressobj(wbits=-15).decompress(payload + wsframes.DEFLATE_TAIL) == b"y" * 500


def test_a_deflate_bomb_is_1009() -> None:
    protocol = ServerProtocol(MAX, Deflate(DeflateParams()))
    compressor = zlib.compressobj(wbits=-15)
    body = compressor.compress(b"\x00" * (MAX * 10)) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert feed(protocol, client(Opcode.BINARY, body[:-4], rsv1=True)) == []
    assert protocol.state is CLOSED and protocol.close_code == 1009
