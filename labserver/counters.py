"""Counters that make the comparison honest: requests, events, and bytes *at the socket*.

A lesson compares transports by what they cost on the wire, so bytes are counted where they
cross the socket, headers, handshakes, chunk-size lines and frame headers included — not by
adding up payload lengths. Each HTTP request says which transport it belongs to (``/poll`` →
``poll``, ``/ws`` → ``ws`` …; :func:`counting_middleware`); the bytes of a connection are
charged to the transport of the request it is serving, by a connection protocol that taps
aiohttp's reads and writes (:mod:`labserver._fast.counting`). Bytes of routes that are no
transport (``/``, ``/stats``, ``/publish``) are not charged to any. A connection taken from
aiohttp after its first request (a WebSocket, kept-alive long polls) counts its own bytes
from then on, the same way: every byte read, every byte handed to ``write``.

``GET /stats`` and ``srv.stats()`` return :meth:`Counters.snapshot`; a lesson takes the
counters of one experiment with :func:`stats_diff` (``after - before``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web

from .keys import COUNTERS

TRANSPORTS = ("poll", "long_poll", "sse", "ws", "socketio")

#: Transports whose connections are never taken for long polling: their copy is dropped.
STREAMING = frozenset(("sse", "ws", "socketio"))

#: Route path → transport: the counting middleware looks the request's route up in it.
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
    charge_to = getattr(protocol, "charge_to", None)  # a counting connection (serve())
    if charge_to is not None:
        charge_to(transport)
    if transport is not None:
        request.app[COUNTERS][transport].requests += 1
    try:
        return await handler(request)
    finally:
        if charge_to is not None:
            protocol.request_done()  # type: ignore[attr-defined]
