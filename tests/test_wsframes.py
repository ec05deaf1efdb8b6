"""``labserver.wsframes`` without a server: the RFC 6455 / RFC 7692 pieces checked one by one.

Client frames are built by an independent encoder, the ``websockets`` library's
``Frame.serialize(mask=True)``; a frame it refuses to build (reserved bits, an oversized
control frame) is one of its frames with the first byte changed by hand. Where the RFCs print
examples (the handshake key, "Hello" compressed), the test uses their bytes.
"""

from __future__ import annotations

import base64
import zlib

import pytest
from websockets.frames import Frame as ClientFrame
from websockets.frames import Opcode

from labserver import wsframes
from labserver.wsframes import (
    BINARY,
    CLOSE,
    CONTINUATION,
    FRAGMENT_COST_BYTES,
    PING,
    TEXT,
    Deflate,
    DeflateParams,
    Frame,
    FrameReader,
    MessageAssembler,
    ProtocolFailure,
)

RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3's example key …
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # … and the Sec-WebSocket-Accept it must get
# RFC 7692 §7.2.3.1-2: "Hello" compressed, then "Hello" again using the first as its window
RFC_HELLO = bytes.fromhex("f248cdc9c90700")
RFC_HELLO_AGAIN = bytes.fromhex("f200110000")
RFC_HELLO_BFINAL = bytes.fromhex("f348cdc9c9070000")  # §7.2.3.4: a block with BFINAL set


def client_frame(opcode: Opcode, payload: bytes, fin: bool = True, first_byte: int | None = None,
                 mask: bool = True) -> bytes:
    """A client frame as ``websockets`` encodes it; ``first_byte`` replaces its FIN/RSV/opcode."""
    data = bytearray(ClientFrame(opcode, payload, fin=fin).serialize(mask=mask))
    if first_byte is not None:
        data[0] = first_byte
    return bytes(data)


def refused(reader: FrameReader, data: bytes) -> ProtocolFailure:
    with pytest.raises(ProtocolFailure) as failure:
        list(reader.feed(data))
    return failure.value


# --- the handshake (§4) -----------------------------------------------------------------------


def test_accept_key_is_the_rfc_example() -> None:
    assert wsframes.accept_key(RFC_KEY) == RFC_ACCEPT


def test_handshake_response_carries_the_accept_key_and_the_extension() -> None:
    plain = wsframes.handshake_response(RFC_KEY)
    assert plain.startswith(b"HTTP/1.1 101 Switching Protocols\r\n") and plain.endswith(b"\r\n\r\n")
    assert f"Sec-WebSocket-Accept: {RFC_ACCEPT}\r\n".encode() in plain
    assert b"Sec-WebSocket-Extensions" not in plain
    deflate = wsframes.handshake_response(RFC_KEY, "permessage-deflate")
    assert b"\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n" in deflate


@pytest.mark.parametrize(
    ("key", "valid"),
    [
        (RFC_KEY, True),
        (base64.b64encode(bytes(range(16))).decode(), True),
        (base64.b64encode(bytes(15)).decode(), False),  # 15 bytes
        (base64.b64encode(bytes(17)).decode(), False),  # 17 bytes
        ("dGhlIHNhbXBsZSBub25jZQ", False),  # padding missing
        ("dGhlIHNhbXBsZSBub25jZ!==", False),  # not base64
        ("", False),
        ("é" * 24, False),  # not ASCII
    ],
)
def test_valid_key(key: str, valid: bool) -> None:
    assert wsframes.valid_key(key) is valid


# --- server frames (§5.2) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "header"),
    [
        (0, bytes((0x81, 0))),
        (125, bytes((0x81, 125))),  # the 7-bit length's largest value
        (126, bytes((0x81, 126, 0, 126))),  # 126: a 16-bit length follows
        (65535, bytes((0x81, 126, 0xFF, 0xFF))),
        (65536, bytes((0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0))),  # 127: a 64-bit length follows
    ],
)
def test_frame_header_sizes(size: int, header: bytes) -> None:
    payload = b"x" * size
    assert wsframes.frame(TEXT, payload) == header + payload


def test_frame_rsv1_marks_a_compressed_message() -> None:
    assert wsframes.frame(TEXT, b"ab", rsv1=True) == bytes((0xC1, 2)) + b"ab"
    assert wsframes.frame(BINARY, b"") == bytes((0x82, 0))
    assert wsframes.frame(PING, b"hi") == bytes((0x89, 2)) + b"hi"


def test_close_frame_carries_code_and_reason() -> None:
    assert wsframes.close_frame(1000, "bye") == bytes((0x88, 5, 0x03, 0xE8)) + b"bye"


def test_close_frame_reason_is_cut_to_fit_and_stays_utf8() -> None:
    """§5.5: 125 payload bytes at most; §5.5.1: the reason is UTF-8, so a cut must not split a
    character (a client fails the connection on invalid UTF-8, §8.1)."""
    for reason in ("x" * 200, "é" * 100, "€" * 50):
        data = wsframes.close_frame(1011, reason)
        assert len(data) <= 2 + 125
        text = data[4:].decode()  # raises if a character was split
        assert reason.startswith(text) and len(text.encode()) > 120


# --- unmasking (§5.3) -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 125, 126, 1000, 65536])
def test_unmask_undoes_a_client_mask(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    data = ClientFrame(Opcode.BINARY, payload).serialize(mask=True)
    header_size = 2 + (2 if 126 <= size < 65536 else 8 if size >= 65536 else 0)
    mask = data[header_size:header_size + 4]
    masked = data[header_size + 4:]
    assert wsframes.unmask(mask, masked) == payload
    assert wsframes.unmask(mask, wsframes.unmask(mask, payload)) == payload  # XOR twice: identity


# --- FrameReader: client frames in ------------------------------------------------------------

SAMPLES = [
    client_frame(Opcode.TEXT, b'{"echo": 1}'),
    client_frame(Opcode.PING, b"ping payload"),
    client_frame(Opcode.TEXT, b"a" * 126, fin=False),  # 16-bit length
    client_frame(Opcode.CONT, b"b" * 70_000),  # 64-bit length
    client_frame(Opcode.BINARY, b""),
    client_frame(Opcode.CLOSE, (1000).to_bytes(2, "big") + b"bye"),
]
EXPECTED = [
    Frame(True, False, TEXT, b'{"echo": 1}'),
    Frame(True, False, PING, b"ping payload"),
    Frame(False, False, TEXT, b"a" * 126),
    Frame(True, False, CONTINUATION, b"b" * 70_000),
    Frame(True, False, BINARY, b""),
    Frame(True, False, CLOSE, b"\x03\xe8bye"),
]


def test_frame_reader_reads_several_frames_from_one_feed() -> None:
    reader = FrameReader(max_payload=100_000)
    assert list(reader.feed(b"".join(SAMPLES))) == EXPECTED
    assert reader.buffer == b""


def test_frame_reader_gives_the_same_frames_fed_one_byte_at_a_time() -> None:
    """TCP may split a frame anywhere: in the header, the extended length, the mask, the
    payload. Every boundary must give the same frames."""
    reader = FrameReader(max_payload=100_000)
    data = b"".join(SAMPLES[:3]) + SAMPLES[4] + SAMPLES[5]  # the 70 kB one fed whole below
    frames = [f for i in range(len(data)) for f in reader.feed(data[i:i + 1])]
    assert frames == EXPECTED[:3] + EXPECTED[4:]
    split = SAMPLES[3]
    frames = [f for i in range(0, 20) for f in reader.feed(split[i:i + 1])]
    frames += list(reader.feed(split[20:]))
    assert frames == [EXPECTED[3]]


def test_frame_reader_keeps_a_partial_frame_for_the_next_feed() -> None:
    reader = FrameReader(max_payload=1000)
    data = b"".join(SAMPLES[:2])
    cut = len(SAMPLES[0]) + 5  # the first whole, the second mid-mask
    assert list(reader.feed(data[:cut])) == EXPECTED[:1]
    assert list(reader.feed(data[cut:])) == EXPECTED[1:2]


def test_unmasked_client_frame_is_1002() -> None:
    failure = refused(FrameReader(1000), client_frame(Opcode.TEXT, b"hi", mask=False))
    assert failure.code == 1002 and "masked" in failure.reason


@pytest.mark.parametrize(
    ("first_byte", "rsv1_allowed"),
    [
        (0x80 | 0x40 | TEXT, False),  # RSV1 without permessage-deflate
        (0x80 | 0x20 | TEXT, False),  # RSV2: no extension defines it
        (0x80 | 0x10 | TEXT, False),  # RSV3
        (0x80 | 0x20 | TEXT, True),  # RSV2 even with deflate
        (0x80 | 0x10 | TEXT, True),
        (0x80 | 0x40 | PING, True),  # RFC 7692 §6.1: never on a control frame …
        (0x80 | 0x40 | CONTINUATION, True),  # … nor on a message's later fragments
    ],
)
def test_reserved_bits_are_1002(first_byte: int, rsv1_allowed: bool) -> None:
    data = client_frame(Opcode.TEXT, b"x", first_byte=first_byte)
    assert refused(FrameReader(1000, rsv1_allowed), data).code == 1002


def test_rsv1_on_a_first_data_frame_with_deflate_is_read() -> None:
    data = client_frame(Opcode.TEXT, b"x", fin=False, first_byte=0x40 | TEXT)
    assert list(FrameReader(1000, rsv1_allowed=True).feed(data)) == [Frame(False, True, TEXT, b"x")]


@pytest.mark.parametrize("opcode", [0x3, 0x7, 0xB, 0xF])
def test_unknown_opcode_is_1002(opcode: int) -> None:
    data = client_frame(Opcode.TEXT, b"x", first_byte=0x80 | opcode)
    failure = refused(FrameReader(1000), data)
    assert failure.code == 1002 and "opcode" in failure.reason


@pytest.mark.parametrize("opcode", [PING, 0xA, CLOSE])
def test_control_frame_over_125_bytes_is_1002(opcode: int) -> None:
    data = client_frame(Opcode.BINARY, b"x" * 126, first_byte=0x80 | opcode)
    assert refused(FrameReader(1000), data[:2]).code == 1002  # refused on its header alone


@pytest.mark.parametrize("opcode", [PING, 0xA, CLOSE])
def test_fragmented_control_frame_is_1002(opcode: int) -> None:
    data = client_frame(Opcode.BINARY, b"x", first_byte=opcode)  # FIN clear
    assert refused(FrameReader(1000), data).code == 1002


@pytest.mark.parametrize("size", [1001, 70_000])
def test_declared_length_over_max_payload_is_1009_before_the_payload(size: int) -> None:
    data = client_frame(Opcode.TEXT, b"x" * size)
    header = data[:2 + (2 if size < 65536 else 8)]  # the length is known, no payload yet
    failure = refused(FrameReader(max_payload=1000), header)
    assert failure.code == 1009 and "1000" in failure.reason


def test_payload_of_exactly_max_payload_is_read() -> None:
    data = client_frame(Opcode.TEXT, b"x" * 1000)
    assert [len(f.payload) for f in FrameReader(max_payload=1000).feed(data)] == [1000]


# --- MessageAssembler: fragments make a message (§5.4) -----------------------------------------


def test_fragments_are_joined_into_one_message() -> None:
    assembler = MessageAssembler(max_bytes=200)  # 6 bytes and two continuations (2 x 64)
    assert assembler.add(Frame(False, True, TEXT, b"ab")) is None
    assert assembler.add(Frame(False, False, CONTINUATION, b"cd")) is None
    assert assembler.add(Frame(True, False, CONTINUATION, b"ef")) == (TEXT, True, b"abcdef")
    assert assembler.add(Frame(True, False, BINARY, b"next")) == (BINARY, False, b"next")


def test_continuation_without_a_message_is_1002() -> None:
    with pytest.raises(ProtocolFailure) as failure:
        MessageAssembler(100).add(Frame(True, False, CONTINUATION, b"x"))
    assert failure.value.code == 1002


def test_new_data_frame_in_the_middle_of_a_message_is_1002() -> None:
    assembler = MessageAssembler(100)
    assembler.add(Frame(False, False, TEXT, b"x"))
    with pytest.raises(ProtocolFailure) as failure:
        assembler.add(Frame(True, False, TEXT, b"y"))
    assert failure.value.code == 1002


def test_message_over_max_bytes_in_total_is_1009() -> None:
    assembler = MessageAssembler(max_bytes=10)
    assembler.add(Frame(False, False, TEXT, b"x" * 6))
    with pytest.raises(ProtocolFailure) as failure:
        assembler.add(Frame(True, False, CONTINUATION, b"y" * 5))  # 11 bytes in all
    assert failure.value.code == 1009


def test_empty_continuation_frames_are_bounded_by_their_count() -> None:
    """Issue 14, finding 6: empty continuation frames add nothing to a message's bytes, yet
    each costs memory; each counts FRAGMENT_COST_BYTES, so a flood closes with 1009."""
    assembler = MessageAssembler(max_bytes=64 * 1024)
    assembler.add(Frame(False, False, TEXT, b"x"))
    allowed = (64 * 1024 - 1) // FRAGMENT_COST_BYTES
    for _ in range(allowed):
        assert assembler.add(Frame(False, False, CONTINUATION, b"")) is None
    with pytest.raises(ProtocolFailure) as failure:
        assembler.add(Frame(False, False, CONTINUATION, b""))
    assert failure.value.code == 1009
    assert "each continuation frame counting 64 more" in failure.value.reason
    assert len(wsframes.close_frame(1009, failure.value.reason)) <= 2 + 125  # one Close frame
    assert len(assembler.parts) == allowed + 1  # what it kept: bounded


def test_a_message_in_many_small_fragments_within_the_bound_is_whole() -> None:
    assembler = MessageAssembler(max_bytes=65 * 100)
    assembler.add(Frame(False, False, TEXT, b"a"))
    for _ in range(98):
        assert assembler.add(Frame(False, False, CONTINUATION, b"a")) is None
    assert assembler.add(Frame(True, False, CONTINUATION, b"a")) == (TEXT, False, b"a" * 100)


# --- a client's Close frame (§5.5.1, §7.4) ---------------------------------------------------


def code_bytes(code: int, reason: bytes = b"") -> bytes:
    return code.to_bytes(2, "big") + reason


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"", 1005),  # no code: NO_STATUS, which is never sent
        (code_bytes(1000), 1000),
        (code_bytes(1001, b"going"), 1001),
        (code_bytes(1011), 1011),
        (code_bytes(3000), 3000),
        (code_bytes(4999, "é".encode()), 4999),
    ],
)
def test_closing_code_accepts(payload: bytes, code: int) -> None:
    assert wsframes.closing_code(payload) == code


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\x03", 1002),  # one byte: half a code
        (code_bytes(1005), 1002),  # "no code": never on the wire
        (code_bytes(1006), 1002),  # "abnormal closure": never on the wire
        (code_bytes(1015), 1002),  # "TLS failure": never on the wire
        (code_bytes(1004), 1002),  # reserved
        (code_bytes(999), 1002),
        (code_bytes(0), 1002),
        (code_bytes(2000), 1002),  # reserved for extensions
        (code_bytes(5000), 1002),
        (code_bytes(1000, b"\xff\xfe"), 1007),  # the reason is not UTF-8
    ],
)
def test_closing_code_refuses(payload: bytes, code: int) -> None:
    with pytest.raises(ProtocolFailure) as failure:
        wsframes.closing_code(payload)
    assert failure.value.code == code


# --- permessage-deflate negotiation (RFC 7692 §5, §7.1) --------------------------------------


@pytest.mark.parametrize(
    ("header", "response"),
    [
        ("permessage-deflate", "permessage-deflate"),
        ("permessage-deflate; client_max_window_bits", "permessage-deflate"),
        ("permessage-deflate; client_max_window_bits=10", "permessage-deflate"),
        ("permessage-deflate; client_no_context_takeover", "permessage-deflate"),
        ("Permessage-Deflate", "permessage-deflate"),
        ("permessage-deflate; server_no_context_takeover",
         "permessage-deflate; server_no_context_takeover"),
        ("permessage-deflate; server_max_window_bits=10",
         "permessage-deflate; server_max_window_bits=10"),
        ('permessage-deflate; server_max_window_bits="12"',
         "permessage-deflate; server_max_window_bits=12"),
        ("permessage-deflate; server_max_window_bits=8", None),  # zlib can't: declined
        ("permessage-deflate; server_max_window_bits=8, permessage-deflate",
         "permessage-deflate"),  # … so the next offer is taken
        ("permessage-deflate; server_max_window_bits=16", None),
        ("permessage-deflate; server_max_window_bits", None),  # the value is required
        ("permessage-deflate; server_max_window_bits=²", None),  # DIGIT is ASCII (RFC 5234)
        ("permessage-deflate; client_max_window_bits=7", None),
        ("permessage-deflate; client_max_window_bits=١٠", None),
        ("permessage-deflate; server_no_context_takeover=1", None),  # takes no value
        ("permessage-deflate; server_no_context_takeover; server_no_context_takeover", None),
        ("permessage-deflate; client_max_window_bits; client_max_window_bits=10", None),
        ("permessage-deflate; x-unknown", None),
        ("permessage-deflate; x-unknown, permessage-deflate; client_max_window_bits",
         "permessage-deflate"),
        ("x-webkit-deflate-frame", None),  # another extension: ignored
        ("x-webkit-deflate-frame, permessage-deflate; server_no_context_takeover",
         "permessage-deflate; server_no_context_takeover"),
        ("", None),
        (None, None),
    ],
)
def test_negotiate_deflate(header: str | None, response: str | None) -> None:
    agreed = wsframes.negotiate_deflate(header)
    assert (agreed.response if agreed else None) == response


def test_negotiated_parameters() -> None:
    agreed = wsframes.negotiate_deflate(
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=10")
    assert agreed == DeflateParams(10, True, "permessage-deflate; server_no_context_takeover; "
                                             "server_max_window_bits=10")


# --- Deflate: compress out, decompress in (RFC 7692 §7.2) ------------------------------------


def inflate(inflater: zlib._Decompress, payload: bytes) -> bytes:
    """What a client does with a compressed message (§7.2.2): add the tail, inflate."""
    return inflater.decompress(payload + b"\x00\x00\xff\xff")


@pytest.mark.parametrize("bits", [9, 12, 15])
def test_compressed_messages_inflate_back(bits: int) -> None:
    deflate = Deflate(DeflateParams(server_max_window_bits=bits))
    client = zlib.decompressobj(wbits=-bits)  # the client's window is what was agreed
    messages = [b'{"id":1,"data":"' + b"x" * 3000 + b'"}', b"", "é€".encode() * 500]
    for message in messages * 2:
        compressed = deflate.compress(message)
        assert not compressed.endswith(b"\x00\x00\xff\xff")  # §7.2.1: the sender drops it
        assert inflate(client, compressed) == message


def test_context_takeover_makes_a_repeated_message_smaller() -> None:
    message = b'{"data": "a message long enough to be worth a back-reference, said twice"}'
    deflate = Deflate(DeflateParams())
    first, second = deflate.compress(message), deflate.compress(message)
    assert len(second) < len(first) / 2


def test_server_no_context_takeover_compresses_each_message_alone() -> None:
    message = b'{"data": "a message long enough to be worth a back-reference, said twice"}'
    deflate = Deflate(DeflateParams(server_no_context_takeover=True))
    first, second = deflate.compress(message), deflate.compress(message)
    assert first == second
    assert zlib.decompressobj(wbits=-15).decompress(second + b"\x00\x00\xff\xff") == message


def test_decompress_the_rfc_examples() -> None:
    deflate = Deflate(DeflateParams())
    assert deflate.decompress(RFC_HELLO, 100) == b"Hello"
    assert deflate.decompress(RFC_HELLO_AGAIN, 100) == b"Hello"  # uses the kept window


def test_decompress_after_a_message_that_ended_its_deflate_stream() -> None:
    """§7.2.3.4: a client may end a message with a BFINAL block; its next message then starts
    a new DEFLATE stream, which must be read, not silently taken for an empty message."""
    deflate = Deflate(DeflateParams())
    assert deflate.decompress(RFC_HELLO_BFINAL, 100) == b"Hello"
    assert deflate.decompress(RFC_HELLO, 100) == b"Hello"
    assert deflate.decompress(RFC_HELLO_BFINAL, 100) == b"Hello"


def compressed(data: bytes) -> bytes:
    """A client's compressed message: deflate, sync flush, tail dropped."""
    compressor = zlib.compressobj(wbits=-15)
    return (compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


def test_decompress_a_zip_bomb_is_1009() -> None:
    bomb = compressed(bytes(1 << 20))  # 1 MB of zeros in about 1 kB
    assert len(bomb) < 2000
    with pytest.raises(ProtocolFailure) as failure:
        Deflate(DeflateParams()).decompress(bomb, max_bytes=64 * 1024)
    assert failure.value.code == 1009


@pytest.mark.parametrize("size", [0, 1, 1000])
def test_decompress_up_to_exactly_max_bytes(size: int) -> None:
    assert Deflate(DeflateParams()).decompress(compressed(b"z" * size), 1000) == b"z" * size
    with pytest.raises(ProtocolFailure):
        Deflate(DeflateParams()).decompress(compressed(b"z" * (size + 1)), size)


def test_decompress_corrupt_data_is_1002() -> None:
    with pytest.raises(ProtocolFailure) as failure:
        Deflate(DeflateParams()).decompress(b"\xff\xff\xff\xff not deflate", 1000)
    assert failure.value.code == 1002
