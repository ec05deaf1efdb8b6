"""Counters that make the comparison honest: requests, events, and bytes *at the socket*.

A lesson compares transports by what they cost on the wire, so bytes are counted where they
cross the socket, headers, handshakes, chunk-size lines and frame headers included — not by
adding up payload lengths. Each HTTP request says which transport it belongs to (``/poll`` →
``poll``, ``/ws`` → ``ws`` …, as each transport declared its routes:
:mod:`labserver.transports`; :func:`counting_middleware`); the bytes of a connection are
charged to the transport of the request it is serving, by a protocol in front of aiohttp's
own (:class:`CountingConnection`: every byte read, every byte handed to ``write``; public
APIs only). Bytes of routes that are no transport (``/``, ``/stats``, ``/publish``) are not
charged to any. A connection taken from
aiohttp after its first request (a WebSocket, kept-alive long polls) counts its own bytes
from then on, the same way: every byte read, every byte handed to ``write``.

``GET /stats`` and ``srv.stats()`` return :meth:`Counters.snapshot`; a lesson takes the
counters of one experiment with :func:`stats_diff` (``after - before``)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web

from .keys import COUNTERS


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


class Counted:
    """What a request of a counted route is charged to: its transport's counters, and whether
    the transport streams (its connection is then never taken over for long polling, and its
    copy of what it received is dropped: :class:`CountingConnection`)."""

    __slots__ = ("counters", "streaming")

    def __init__(self, counters: TransportCounters, streaming: bool) -> None:
        self.counters = counters
        self.streaming = streaming


class Counters:
    """One :class:`TransportCounters` per transport, in the order the transports registered
    (:func:`labserver.transports.register`: the order of ``/stats``), and the transport each
    counted route belongs to (:attr:`of_route`, the counting middleware's one lookup)."""

    def __init__(self) -> None:
        self.transports: dict[str, TransportCounters] = {}
        #: Route (aiohttp's canonical path, ``/long-poll``) → what its requests are charged to.
        self.of_route: dict[str, Counted] = {}

    def add(self, transport: str, routes: Iterable[str], streaming: bool) -> TransportCounters:
        """Counters for a new transport, charged with the requests of ``routes``."""
        counters = self.transports[transport] = TransportCounters()
        counted = Counted(counters, streaming)
        for path in routes:
            self.of_route[path] = counted
        return counters

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


def counted_of(request: web.Request) -> Counted | None:
    """What the request's route is charged to; ``None`` for a route that is no transport."""
    resource = request.match_info.route.resource
    if resource is None:
        return None
    return request.app[COUNTERS].of_route.get(resource.canonical)


@web.middleware
async def counting_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Counts the request for its transport and tells the connection whom to charge bytes to."""
    counted = counted_of(request)
    connection = connection_of(request)  # None outside serve(): nothing counts bytes then
    if connection is not None:
        connection.charge_to(counted)
    if counted is not None:
        counted.counters.requests += 1
    try:
        return await handler(request)
    finally:
        if connection is not None:
            connection.request_done()


# --- bytes at the socket ----------------------------------------------------------------

#: A connection keeps a copy of the bytes it received, up to this many, when the fast tier may
#: take it over after a request (:func:`labserver._fast.takeover.unread_bytes` hands over what
#: aiohttp read past it). Past this, or once the connection streams (SSE, WebSocket,
#: Socket.IO), the copy is dropped and the connection is no longer taken.
RECEIVED_KEPT_BYTES = 16384


class CountedTransport:
    """A connection's transport, as aiohttp sees it: every byte handed to it for writing is
    charged to the request's transport."""

    __slots__ = ("transport", "connection")

    def __init__(self, transport: asyncio.Transport, connection: CountingConnection) -> None:
        self.transport = transport
        self.connection = connection

    def write(self, data: bytes | bytearray | memoryview) -> None:
        # Inline: a fan-out calls this once per client per event.
        charged = self.connection.charged
        if charged is not None:
            charged.bytes_out += len(data)
        self.transport.write(data)

    def writelines(self, chunks: Any) -> None:
        chunks = list(chunks)
        charged = self.connection.charged
        if charged is not None:
            charged.bytes_out += sum(len(c) for c in chunks)
        self.transport.writelines(chunks)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class CountingConnection(asyncio.Protocol):
    """aiohttp's connection protocol behind a tap that counts the bytes at the socket.

    aiohttp's low-level ``web.Server`` makes its per-connection protocol (``server()``, what its
    documentation hands to ``loop.create_server``); this protocol stands in front of it: it
    counts what is read, hands aiohttp a :class:`CountedTransport` that counts what is
    written, and passes everything else on. Bytes that arrive before the request's route is
    known wait in ``pending_in`` and are charged when the middleware names the transport
    (:meth:`charge_to`); while a request of a transport is handled, or after an upgrade, bytes
    are charged to it as they come. With ``keep_received``, ``received`` keeps the bytes read
    so far (bounded: :data:`RECEIVED_KEPT_BYTES`) and ``handled`` counts the requests that
    reached the middleware, for a takeover.
    """

    __slots__ = ("inner", "factory", "charged", "in_request", "pending_in", "received",
                 "handled")

    def __init__(self, factory: ConnectionFactory) -> None:
        self.factory = factory  # makes this connection's successor after a hand-back
        self.inner: asyncio.Protocol = factory.server()
        self.charged: TransportCounters | None = None  # the current request's transport
        self.in_request = False
        self.pending_in = 0
        self.received: bytearray | None = bytearray() if factory.keep_received else None
        self.handled = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.inner.connection_made(CountedTransport(transport, self))  # type: ignore[arg-type]

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
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def charge_to(self, counted: Counted | None) -> None:
        """Called at the start of a request: its bytes belong to ``counted``'s transport (or
        to none)."""
        self.handled += 1
        if counted is None:
            self.charged = None
            self.in_request = False
        else:
            self.charged = counted.counters
            self.in_request = True
            if counted.streaming:
                self.received = None
            counted.counters.bytes_in += self.pending_in
        self.pending_in = 0

    def request_done(self) -> None:
        """Called when the handler returns; bytes of the next request wait for its route."""
        self.in_request = False


class ConnectionFactory:
    """Makes a :class:`CountingConnection` per TCP connection, in front of aiohttp's server:
    ``loop.create_server(ConnectionFactory(runner.server, keep_received), host, port)``."""

    __slots__ = ("server", "keep_received")

    def __init__(self, server: web.Server, keep_received: bool) -> None:
        self.server = server
        self.keep_received = keep_received

    def __call__(self) -> CountingConnection:
        return CountingConnection(self)


def connection_of(request: web.BaseRequest) -> CountingConnection | None:
    """The counting connection a request came on (``None`` outside :func:`labserver.app.serve`)."""
    transport = request.transport
    return transport.connection if isinstance(transport, CountedTransport) else None
