"""Transports declare themselves: the one place the rest of the server learns of a transport.

Each transport module's ``setup(app)`` says once what the shared pieces need to know of it::

    register(app, Transport(name="long_poll", routes=[web.get("/long-poll", long_poll)],
                            streaming=False, droppable=False))

* ``name`` — its counters: a key of ``/stats``'s ``"transports"``, in the order the
  transports registered (:class:`labserver.counters.Counters`);
* ``routes`` — aiohttp's route definitions (``web.get``, ``web.route``); every request of these
  routes, and the bytes of its connection, count for this transport (the counting middleware
  looks the request's route up: one dict lookup). A route of the module that carries none of
  the transport's traffic (Socket.IO's client script) is added with ``app.router`` as any
  other route, and counts for nothing;
* ``streaming`` — its connections stay open and carry many messages (SSE, WebSocket,
  Socket.IO): such a connection is never taken over for long polling
  (:class:`labserver.counters.CountingConnection`);
* ``droppable`` — ``POST /drop`` may close its open connections, which the transport
  registers with ``app[CONNECTIONS]`` under its ``name``.

``/stats``, ``/drop`` and the counters derive from these declarations, so adding a transport is
one module whose ``setup`` registers it, plus one line in :func:`labserver.app.create_app`
(and, for the lessons, its client in ``labserver.clients.CLIENTS``: a test fails without it).
Two transports cannot claim the same name or the same route: :func:`register` refuses with a
``ValueError`` before anything is added.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web

from .keys import COUNTERS, TRANSPORTS

#: ``POST /drop {"transport": "all"}`` closes every droppable transport's connections: no
#: transport may take the name.
ALL = "all"


@dataclass(frozen=True)
class Transport:
    """What a transport declares: see the module's docstring."""

    name: str
    routes: Sequence[web.RouteDef]
    streaming: bool = False
    droppable: bool = False


class Transports:
    """The transports of one app, in the order they registered (``app[TRANSPORTS]``)."""

    def __init__(self) -> None:
        self.declared: dict[str, Transport] = {}
        self.owner_of_route: dict[str, str] = {}  # route path → the transport that claimed it

    def add(self, transport: Transport) -> None:
        """Record a declaration; ``ValueError`` if its name or a route is another's."""
        if transport.name == ALL or transport.name in self.declared:
            raise ValueError(f"a transport named {transport.name!r} is already registered")
        for route in transport.routes:
            owner = self.owner_of_route.get(route.path)
            if owner is not None:
                raise ValueError(f"{transport.name}: route {route.path} is already {owner}'s")
        self.declared[transport.name] = transport
        for route in transport.routes:
            self.owner_of_route[route.path] = transport.name

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.declared)

    @property
    def streaming(self) -> frozenset[str]:
        return frozenset(name for name, t in self.declared.items() if t.streaming)

    @property
    def droppable(self) -> tuple[str, ...]:
        """What ``POST /drop`` accepts: each droppable transport, then ``"all"``."""
        return (*(name for name, t in self.declared.items() if t.droppable), ALL)


def register(app: web.Application, transport: Transport) -> None:
    """Add ``transport``'s routes to ``app``, with its counters (``app[COUNTERS]``)."""
    app[TRANSPORTS].add(transport)
    paths = [route.resource.canonical
             for definition in transport.routes
             for route in definition.register(app.router)
             if route.resource is not None]
    app[COUNTERS].add(transport.name, dict.fromkeys(paths), transport.streaming)
