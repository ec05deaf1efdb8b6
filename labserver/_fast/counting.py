"""Bytes counted at the socket: aiohttp's connection protocol with two taps.

:class:`CountingRequestHandler` is aiohttp's own per-connection protocol with a tap on
``data_received`` (bytes in) and one on the transport's ``write`` (bytes out), charged to the
transport of the request being served (:func:`labserver.counters.counting_middleware` names
it). :class:`CountingAppRunner` makes aiohttp's server build these connections. aiohttp does
not promise the hooks this needs (its runner's ``_make_server``, ``Server``'s constructor
arguments, a ``Server`` whose class may be swapped): they are read in
:mod:`labserver._fast.aiohttp_private` and checked by :func:`labserver._fast.problems`.

A connection also keeps a bounded copy of what it received, and counts the requests it
handled, so that :mod:`labserver._fast.takeover` can take it over after a request.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

from ..counters import STREAMING, Counters, TransportCounters
from ..keys import COUNTERS
from . import aiohttp_private

#: A connection keeps a copy of the bytes it received, up to this many, so that a takeover
#: (:func:`labserver._fast.takeover.unread_bytes`) can hand over what aiohttp read past the request
#: it is serving. Past this, or once the connection streams (SSE, WebSocket, Socket.IO), the
#: copy is dropped and the connection is no longer taken.
RECEIVED_KEPT_BYTES = 16384


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
    factory: CountingServer | None = None  # the server that made it (labserver._fast.takeover)

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


class CountingAppRunner(aiohttp_private.ServerHook):
    """An ``AppRunner`` whose connections count their bytes at the socket."""

    def made(self, server: Server) -> Server:
        server.__class__ = CountingServer  # aiohttp builds a plain Server; ours makes the protocol
        server.counters = self.app[COUNTERS]  # type: ignore[attr-defined]
        return server
