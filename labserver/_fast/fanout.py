"""Per-client work a write: how the event log puts an event's ready-made bytes on one socket.

One rule bounds a slow client, for every transport that writes to a socket this way
(:func:`too_slow`): SSE's :class:`SocketWriter`, a WebSocket's ``send_event``
(:mod:`labserver.ws`, where it is written out inline) and the Socket.IO fan-out's direct write
(:mod:`labserver._fast.socketio`).

A push transport frames each event once (:meth:`Event.encoded`) and, after a client's replay,
hands the event log a write function for that client (:meth:`Subscription.forward`): SSE this
:class:`SocketWriter`, a WebSocket its connection's own ``send_event``, which follows the same
rule on its bare socket (:mod:`labserver.ws`). The log calls it for every client of every
event, inside ``publish``, so it does as little as it can: one ``transport.write`` of the
shared bytes — asyncio hands them to the kernel at once when nothing is waiting, as Node's
``socket.write`` does, and keeps the rest in order until the client reads — counted at the
socket like every other byte. A client whose unsent bytes pass ``queue_size`` events' worth is
too slow: the writer answers ``False``, the subscription overflows, and the transport drops
that client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from ..counters import TransportCounters
from ..events import Event


def too_slow(unsent: int, allowance: int, queue_size: int, frame_bytes: int) -> bool:
    """The one slow-client rule: more than ``queue_size`` events' worth of bytes unsent (an
    event's frame being ``frame_bytes``), beyond the ``allowance`` it had when it was handed
    to the fan-out (what its replay left unsent)."""
    return unsent > allowance + queue_size * frame_bytes


class SocketWriter:
    """One client's writer: ``writer(event)`` writes ``wire(event)``; ``False`` = too slow."""

    __slots__ = ("wire", "counters", "limit", "write", "is_closing", "unsent", "wrote",
                 "allowance")

    def __init__(
        self, transport: asyncio.Transport, wire: Callable[[Event], bytes], queue_size: int,
        counters: TransportCounters,
    ) -> None:
        self.wire = wire  # a module-level function: the cache key of Event.encoded
        self.counters = counters
        self.limit = queue_size
        self.write = transport.write  # bound once: this runs for every client of every event
        self.is_closing = transport.is_closing
        self.unsent = transport.get_write_buffer_size
        self.wrote = False  # set on every write; SSE's heartbeat clears it
        self.allowance = transport.get_write_buffer_size()  # what the replay left unsent

    def __call__(self, event: Event) -> bool:
        if self.is_closing():
            return True  # the connection is ending: its handler unsubscribes it
        data = event.encoded(self.wire)
        self.write(data)
        self.counters.messages_out += 1
        self.wrote = True
        return not too_slow(self.unsent(), self.allowance, self.limit, len(data))


def stream_writer(response: web.StreamResponse, transport: asyncio.Transport,
                  block: Callable[[Event], bytes], queue_size: int,
                  counters: TransportCounters) -> SocketWriter:
    """SSE's writer, behind aiohttp's ``StreamResponse``: each event's ``block`` written to
    the socket as the bytes ``response.write(block)`` would put there — on HTTP/1.1, where
    aiohttp chunks a response without a length, framed as one chunk
    (:func:`chunked`). This assumes that aiohttp's writer keeps nothing back between two
    writes, which :func:`labserver._fast.problems` checks."""
    wire = chunked(block) if response.headers.get("Transfer-Encoding") == "chunked" else block
    return SocketWriter(transport, wire, queue_size, counters)


_chunked: dict[Callable[[Event], bytes], Callable[[Event], bytes]] = {}


def chunked(block: Callable[[Event], bytes]) -> Callable[[Event], bytes]:
    """``block`` as one HTTP/1.1 chunk (RFC 9112 §7.1: size in hex, CRLF, data, CRLF), made
    once per event: one function per ``block``, the cache key of ``Event.encoded``."""
    wire = _chunked.get(block)
    if wire is None:

        def wire(event: Event) -> bytes:
            data = event.encoded(block)
            return f"{len(data):x}\r\n".encode() + data + b"\r\n"

        wire = _chunked[block] = wire
    return wire
