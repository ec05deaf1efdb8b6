"""Per-client work a write: how the event log puts an event's ready-made bytes on one socket.

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

from ..counters import TransportCounters
from ..events import Event


class SocketWriter:
    """One client's writer: ``writer(event)`` writes ``wire(event)``; ``False`` = too slow."""

    __slots__ = ("wire", "counters", "limit", "write", "is_closing", "unsent", "wrote")

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

    def __call__(self, event: Event) -> bool:
        if self.is_closing():
            return True  # the connection is ending: its handler unsubscribes it
        data = event.encoded(self.wire)
        self.write(data)
        self.counters.messages_out += 1
        self.wrote = True
        return self.unsent() <= self.limit * len(data)
