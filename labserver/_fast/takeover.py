"""Taking a TCP connection from aiohttp, and giving it back.

aiohttp serves every route, but it keeps a request object, a parser, a task and the
middlewares' frames alive for as long as a request lasts — for a WebSocket, hours. Node's
``ws`` and ``http`` modules keep little more than the socket. So a route may take the
connection once aiohttp has routed and checked its request:

* :func:`take_over` gives the connection to a plain ``asyncio.Protocol`` of ours
  (:class:`labserver.ws.WebSocketConnection` after a WebSocket handshake,
  :class:`labserver._fast.keepalive.LongPollConnection` for a keep-alive long poll);
* :func:`hand_back` returns it to aiohttp with the bytes it has not read yet, when a request
  comes that only aiohttp should answer;
* :func:`unread_bytes` says what aiohttp has read past the request, so that the new owner
  gets it too: a client may send its next request in the same write as this one, and
  aiohttp's parser has then consumed its first bytes already.

Requests on a connection that was taken are parsed by :func:`parse_head` — aiohttp's own
parser (llhttp), with the limits of the connection it came from — never by hand: a head that
parser refuses, or that it reads differently from a hand-made split, goes back to aiohttp.

Both use public asyncio calls only: ``connect_accepted_socket`` on a copy of the socket's
file descriptor, ``set_protocol`` on a transport. What they must know of aiohttp's private
parts is read in :mod:`labserver._fast.aiohttp_private`, checked against the pinned version.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass

from aiohttp import hdrs, web
from aiohttp.http import RawRequestMessage
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import EMPTY_PAYLOAD

from ..counters import ConnectionFactory, connection_of
from . import aiohttp_private


def holds_more(request: web.Request) -> bool:
    """True when aiohttp holds requests of the connection parsed but not handled yet, or
    (after an upgrade request) data the client sent ahead of the answer."""
    return aiohttp_private.holds_more(request.protocol)


def can_take_over(request: web.Request) -> bool:
    """True when the connection can leave aiohttp and come back (:func:`hand_back`): made by
    labserver's server with the fast tier on (it keeps a copy of what it read), the request has
    no body for aiohttp to read, and aiohttp has nothing left to send on it."""
    connection = connection_of(request)
    transport = request.transport
    return (connection is not None and connection.received is not None
            and not request.can_read_body
            # aiohttp's transport closes after the takeover: bytes it still held would then
            # follow the new owner's first answer (a pipelining client that stopped reading)
            and transport is not None and transport.get_write_buffer_size() == 0)


@dataclass(frozen=True, slots=True)
class HeadLimits:
    """aiohttp's limits on a request head (its ``RequestHandler`` arguments)."""

    max_line_size: int = 8190
    max_field_size: int = 8190
    max_headers: int = 128

    @classmethod
    def of(cls, protocol: object) -> HeadLimits:
        return cls(protocol.max_line_size, protocol.max_field_size,  # type: ignore[attr-defined]
                   protocol.max_headers)  # type: ignore[attr-defined]


def head_end(data: bytes | bytearray, start: int = 0) -> int:
    """Where the head that starts at ``start`` ends: just after its first empty line; -1 while
    there is none. The parser decides the rest: a head it accepts has only CRLF line ends, so
    its first empty line is its end; a bare LF ends the candidate early, and the parser
    refuses it there."""
    ends = [i + n for i, n in ((data.find(b"\n\r\n", start), 3), (data.find(b"\n\n", start), 2))
            if i >= 0]
    return min(ends) if ends else -1


def parse_head(head: bytes, limits: HeadLimits) -> tuple[RawRequestMessage, int | None] | None:
    """One request head, parsed by aiohttp's own parser: its message and the length of the
    body that follows (``None``: chunked, or an upgrade: not known from the head). ``None``
    when the parser refuses it or does not find exactly one request in it."""
    parser = aiohttp_private.new_parser(limits.max_line_size, limits.max_field_size,
                                        limits.max_headers)
    try:
        messages, upgraded, _ = parser.feed_data(head)
    except (HttpProcessingError, ValueError):
        return None
    if len(messages) != 1:
        return None
    message, payload = messages[0]
    if upgraded or message.upgrade or message.chunked:
        return message, None
    if payload is EMPTY_PAYLOAD:
        return message, 0
    return message, int(message.headers[hdrs.CONTENT_LENGTH])


def refuses(data: bytes, limits: HeadLimits) -> bool:
    """Would aiohttp's parser refuse ``data``, read in one piece by a fresh connection?
    Then aiohttp answers only its 400: the requests parsed before the error in the same read
    are lost with it, so a connection that was taken must hand such a read back whole, not
    answer its first requests."""
    parser = aiohttp_private.new_parser(limits.max_line_size, limits.max_field_size,
                                        limits.max_headers, as_connection=True)
    try:
        parser.feed_data(data)
    except (HttpProcessingError, ValueError):
        return True
    return False


def request_ends(data: bytes, limits: HeadLimits) -> Iterator[tuple[int, RawRequestMessage]]:
    """The requests that ``data`` holds whole, in order: where each ends (its head and its
    body) and its message. Stops at the first that is incomplete, refused, or of a length the
    head does not tell (a chunked body, an upgrade)."""
    start = 0
    while (end := head_end(data, start)) >= 0:
        parsed = parse_head(data[start:end], limits)
        if parsed is None or parsed[1] is None or end + parsed[1] > len(data):
            return
        start = end + parsed[1]
        yield start, parsed[0]


def unread_bytes(request: web.Request) -> bytes | None:
    """The bytes aiohttp has read from the connection past ``request`` (its head, and its
    body), which the connection's next owner must parse first; ``None`` when they cannot be
    known (the copy was dropped, a chunked body came before): then the connection stays.

    The connection's copy of what it received is parsed again, request by request, up to
    this one, which must be the same request aiohttp handed to the route.
    """
    connection = connection_of(request)
    if connection is None or connection.received is None:
        return None
    received = bytes(connection.received)
    limits = HeadLimits.of(request.protocol)
    for count, (end, message) in enumerate(request_ends(received, limits), 1):
        if count == connection.handled:
            if (message.method, message.path, message.raw_headers) != (
                    request.method, request.raw_path, request.raw_headers):
                return None
            return received[end:]
    return None


async def take_over(request: web.Request, protocol: asyncio.Protocol) -> None:
    """Hand the request's TCP connection from aiohttp to ``protocol``.

    asyncio gives a new transport to a *copy* of the socket's file descriptor
    (``connect_accepted_socket``); aiohttp's own transport is then closed, which closes its
    descriptor only — the connection stays open through the copy. aiohttp stops reading
    first, so no byte can go to the wrong side, and handles nothing more of the connection
    (``force_close``: requests it had parsed past this one are the new owner's, as bytes).
    ``protocol.connection_made`` writes the answer to the request.
    """
    old = request.transport
    assert old is not None
    old.pause_reading()
    sock = socket.socket(fileno=os.dup(old.get_extra_info("socket").fileno()))
    try:
        await asyncio.get_running_loop().connect_accepted_socket(lambda: protocol, sock)
    except BaseException:
        sock.close()
        raise
    finally:
        request.protocol.force_close()  # closes aiohttp's transport: its descriptor only


def hand_back(factory: ConnectionFactory, transport: asyncio.Transport, *reads: bytes) -> None:
    """Give ``transport`` to a new aiohttp connection made by ``factory``; it parses ``reads``
    first, each as one read — aiohttp answers per read (a read its parser refuses gets its
    400 alone), so bytes read apart must go back apart. The bytes written so far stay ahead
    of its answers: it is the same transport."""
    protocol = factory()
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    for data in reads:
        if data:
            protocol.data_received(data)
    transport.resume_reading()  # in case a slow reader had paused it
