"""Counters that make the comparison honest: requests, events, and bytes *at the socket*.

A lesson compares transports by what they cost on the wire, so bytes are counted where they
cross the socket, headers, handshakes, chunk-size lines and frame headers included — not by
adding up payload lengths. :class:`CountingRequestHandler` does that: it is aiohttp's own
per-connection protocol with two taps, one on ``data_received`` (bytes in) and one on the
transport's ``write`` (bytes out). Each HTTP request says which transport it belongs to
(``/poll`` → ``poll``, ``/ws`` → ``ws`` …); the bytes of a connection are charged to the
transport of the request it is serving. Bytes of routes that are no transport (``/``,
``/stats``, ``/publish``) are not charged to any. A connection taken from aiohttp after its
first request (:mod:`labserver.takeover`: a WebSocket, kept-alive long polls) counts its own
bytes from then on, the same way: every byte read, every byte handed to ``write``.

``GET /stats`` and ``srv.stats()`` return :meth:`Counters.snapshot`; a lesson takes the
counters of one experiment with :func:`stats_diff` (``after - before``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

from ._fast import aiohttp_private
from .keys import COUNTERS

TRANSPORTS = ("poll", "long_poll", "sse", "ws", "socketio")

#: A connection keeps a copy of the bytes it received, up to this many, so that a takeover
#: (:func:`labserver.takeover.unread_bytes`) can hand over what aiohttp read past the request
#: it is serving. Past this, or once the connection streams (SSE, WebSocket, Socket.IO), the
#: copy is dropped and the connection is no longer taken.
RECEIVED_KEPT_BYTES = 16384
#: Transports whose connections are never taken for long polling: their copy is dropped.
STREAMING = frozenset(("sse", "ws", "socketio"))

#: Route path → transport. A transport module adds its paths here; the counting middleware
#: looks the request's route up in it.
TRANSPORT_OF_ROUTE: dict[str, str] = {
    "/poll": "poll",
    "/long-poll": "long_poll",
    "/sse": "sse",
    "/ws": "ws",
    "/socket.io/": "socketio",
}


@dataclass(slots=True)
class TransportCounters:
    requests: int = 0  # HTTP requests, upgrades and Socket.IO polling requests included
    empty: int = 0  # poll answers that carried no event
    messages_out: int = 0  # events delivered to clients
    messages_in: int = 0  # messages received from clients
    open: int = 0  # connections (or held requests) open now: a gauge, not a count
    bytes_in: int = 0  # bytes received at the socket
    bytes_out: int = 0  # bytes written to the socket


@contextmanager
def open_gauge(counters: TransportCounters) -> Iterator[None]:
    """``with open_gauge(counters):`` for the life of a connection or a held request."""
    counters.open += 1
    try:
        yield
    finally:
        counters.open -= 1


class Counters:
    """One :class:`TransportCounters` per transport."""

    def __init__(self) -> None:
        self.transports = {name: TransportCounters() for name in TRANSPORTS}

    def __getitem__(self, transport: str) -> TransportCounters:
        return self.transports[transport]

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {name: asdict(c) for name, c in self.transports.items()}


def stats_diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The counters of one experiment: ``after - before`` for every count.

    ``open`` is a gauge (connections open now), so it keeps its ``after`` value;
    ``events.last_id`` and ``events.log_size`` too.
    """
    gauges = {"open", "last_id", "log_size"}

    def sub(a: Any, b: Any, key: str = "") -> Any:
        if isinstance(b, dict):
            return {k: sub(a.get(k, 0) if isinstance(a, dict) else 0, v, k) for k, v in b.items()}
        if key in gauges or not isinstance(b, int | float):
            return b
        return b - a

    return sub(before, after)


class _CountingTransport:
    """Wraps an asyncio transport and counts every byte handed to it for writing."""

    __slots__ = ("_transport", "_protocol")

    def __init__(self, transport: asyncio.Transport, protocol: CountingRequestHandler) -> None:
        self._transport = transport
        self._protocol = protocol

    def write(self, data: bytes | bytearray | memoryview) -> None:
        # Inline: a fan-out calls this once per client per event.
        charged = self._protocol.charged
        if charged is not None:
            charged.bytes_out += len(data)
        self._transport.write(data)

    def writelines(self, chunks: Any) -> None:
        chunks = list(chunks)
        self._protocol.count_out(sum(len(c) for c in chunks))
        self._transport.writelines(chunks)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CountingRequestHandler(RequestHandler):
    """aiohttp's connection protocol, with bytes in and out charged to a transport.

    Bytes that arrive before the request's route is known wait in ``pending_in`` and are
    charged when the middleware names the transport (:meth:`charge_to`). While a request of a
    transport is being handled, or after an upgrade, bytes are charged to it as they come.
    ``received`` keeps the bytes read so far (bounded: :data:`RECEIVED_KEPT_BYTES`) and
    ``handled`` counts the requests that reached the middleware, for a takeover.
    """

    counters: Counters | None = None  # set by :class:`CountingServer` when it makes one
    factory: CountingServer | None = None  # the server that made it (labserver.takeover)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.charged: TransportCounters | None = None  # the current request's transport
        self.in_request = False
        self.pending_in = 0
        self.received: bytearray | None = bytearray()
        self.handled = 0
        super().connection_made(_CountingTransport(transport, self))  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        if self.in_request and self.charged is not None:
            self.charged.bytes_in += len(data)
        else:
            self.pending_in += len(data)
        received = self.received
        if received is not None:
            received += data
            if len(received) > RECEIVED_KEPT_BYTES:
                self.received = None
        super().data_received(data)

    def count_out(self, n: int) -> None:
        if self.charged is not None:
            self.charged.bytes_out += n

    def charge_to(self, transport: str | None) -> None:
        """Called at the start of a request: its bytes belong to ``transport`` (or none)."""
        self.charged = (self.counters[transport]
                        if transport is not None and self.counters is not None else None)
        self.in_request = transport is not None
        self.handled += 1
        if transport in STREAMING:
            self.received = None
        if self.charged is not None:
            self.charged.bytes_in += self.pending_in
        self.pending_in = 0

    def request_done(self) -> None:
        """Called when the handler returns; bytes of the next request wait for its route."""
        self.in_request = False


class CountingServer(Server):
    """aiohttp's protocol factory, making :class:`CountingRequestHandler` connections."""

    counters: Counters | None = None  # set by the runner (``labserver.app.CountingAppRunner``)

    def __call__(self) -> CountingRequestHandler:
        handler = aiohttp_private.make_handler(self, CountingRequestHandler)
        assert isinstance(handler, CountingRequestHandler)
        handler.counters = self.counters
        handler.factory = self  # a connection taken from aiohttp goes back through it
        return handler


def transport_of(request: web.Request) -> str | None:
    route = request.match_info.route
    resource = route.resource
    if resource is None:
        return None
    return TRANSPORT_OF_ROUTE.get(resource.canonical)


@web.middleware
async def counting_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Counts the request for its transport and tells the connection whom to charge bytes to."""
    transport = transport_of(request)
    protocol = request.protocol
    if isinstance(protocol, CountingRequestHandler):
        protocol.charge_to(transport)
    if transport is not None:
        request.app[COUNTERS][transport].requests += 1
    try:
        return await handler(request)
    finally:
        if isinstance(protocol, CountingRequestHandler):
            protocol.request_done()
