"""The event log and its cursors: the one tricky part every transport shares.

Theory of operation
-------------------
Every transport in this series delivers the *same* events. An event is published once
(``POST /publish`` or ``srv.publish()``), gets the next id (1, 2, 3 …) and a timestamp, is
serialised to JSON once, and is then handed to every transport:

* **pull** transports (short polling, long polling) keep a *cursor*: "give me every event
  whose id is greater than ``after``". They read the log: :meth:`EventLog.read` answers at
  once, :meth:`EventLog.wait` holds until an event newer than the cursor exists
  (:meth:`EventLog.hold` does the same with a callback, for a connection with no coroutine).
* **push** transports (SSE, WebSocket, Socket.IO) hold a :class:`Subscription`: a bounded
  queue that :meth:`EventLog.publish` fills. A client that stops reading fills its queue; the
  subscription is then marked *overflowed* and the transport drops that client (it may resume
  with its last id). The publisher never waits for a slow client.

Per-event work is done once, per-client work is a write. An event is serialised once
(:attr:`Event.json`) and framed once per wire format (:meth:`Event.encoded`: a WebSocket text
frame, an SSE block …), and every client of that format gets the same bytes. A push transport
that has sent a client its replay calls :meth:`Subscription.forward`: from then on the log
hands each new event straight to the client's write function inside ``publish`` — no queue,
no task to wake per client — and the bound on a slow client is what its socket has not yet
taken (``queue_size`` events' worth). Many long polls that hold the same cursor share one
:class:`Page` and its JSON, built once per event.

The log keeps only the ``log_size`` most recent events. A cursor that points into the part
that was dropped, or beyond the last id (the server restarted and counts from 1 again), cannot
be answered without loss: :class:`Page` then says ``gap=True``, never silently.

Gap rules, with ``oldest`` the smallest id still in the log and ``last`` the newest id:

* ``after > last``: the cursor is from another life of the server → gap; the page holds the
  whole log so that the client can start again from ``page.last_id``.
* ``after < oldest - 1``: events ``after+1 … oldest-1`` were dropped → gap; the page holds
  the whole log.
* otherwise: no gap; the page holds the events with ``id > after``.

:class:`EventLog` is the whole interface the transports use, so that a Redis-backed log (for
scale-out) can replace :class:`MemoryLog` without touching them.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger("labserver.events")

#: Events kept for cursors and resume (``log_size``). 1000 events of a few hundred bytes is a
#: few hundred KiB: enough for a learner's client to be away for minutes at a tick of 1/s.
DEFAULT_LOG_SIZE = 1000
#: Events queued for one push client before it is dropped as too slow (``queue_size``).
DEFAULT_QUEUE_SIZE = 256


class LogUnavailable(Exception):
    """The log cannot take an event now (a cluster's Redis is away): publish later."""


@dataclass(frozen=True, slots=True)
class Event:
    """One published event: ``{"id": N, "data": ..., "ts": T}``, serialised once."""

    id: int
    data: Any
    ts: float
    json: str = field(repr=False)
    _encoded: dict[Callable[[Event], bytes], bytes] = field(
        default_factory=dict, repr=False, compare=False)

    @classmethod
    def create(cls, id: int, data: Any, ts: float | None = None) -> Event:
        ts = time.time() if ts is None else ts
        text = json.dumps({"id": id, "data": data, "ts": ts}, separators=(",", ":"))
        return cls(id=id, data=data, ts=ts, json=text)

    def encoded(self, encode: Callable[[Event], bytes]) -> bytes:
        """This event in one wire format, ``encode(event)``, computed once and kept.

        Every client of that format is then written the same bytes: ``encode`` is a module-level
        function of the transport (``ws.text_frame``, ``sse.encode_event`` …), the cache key.
        """
        wire = self._encoded.get(encode)
        if wire is None:
            wire = self._encoded[encode] = encode(self)
        return wire


@dataclass(frozen=True, slots=True)
class Page:
    """What a cursor read returns: the events after the cursor, the newest id, and the gap flag."""

    events: tuple[Event, ...]
    last_id: int
    gap: bool
    oldest_id: int  # smallest id still in the log (last_id + 1 when the log is empty)
    _body: list[bytes] = field(default_factory=list, repr=False, compare=False)

    def to_json(self) -> str:
        """The polling answer, built from each event's ready-made JSON."""
        body = ",".join(e.json for e in self.events)
        gap = "true" if self.gap else "false"
        return f'{{"events":[{body}],"last_id":{self.last_id},"gap":{gap}}}'

    def to_bytes(self) -> bytes:
        """:meth:`to_json` encoded, built once per page: the log hands one page to every long
        poll that waited with the same cursor."""
        if not self._body:
            self._body.append(self.to_json().encode())
        return self._body[0]


class Subscription:
    """A push client's bounded queue of events. ``overflowed`` is set when it filled up.

    One per open connection, so it stays small: a deque only while events wait in it, a
    future only while :meth:`get` waits, nothing at all once :meth:`forward` writes each
    event as it comes.
    """

    __slots__ = ("_log", "maxsize", "_queue", "_getter", "_write", "_overflowed", "_event")

    def __init__(self, log: EventLog, maxsize: int) -> None:
        self._log = log
        self.maxsize = maxsize
        self._queue: deque[Event] | None = None  # made by the first event that must wait
        self._getter: asyncio.Future[None] | None = None  # a get() waiting for an event
        self._write: Callable[[Event], bool] | None = None
        self._overflowed = False
        self._event: asyncio.Event | None = None  # made only for a handler that waits on it

    @property
    def overflowed(self) -> asyncio.Event:
        """Set once the client fell ``maxsize`` events behind: ``await sub.overflowed.wait()``."""
        if self._event is None:
            self._event = asyncio.Event()
            if self._overflowed:
                self._event.set()
        return self._event

    def qsize(self) -> int:
        """Events queued now."""
        return len(self._queue) if self._queue else 0

    def offer(self, event: Event) -> None:
        """Called by the log on publish; never blocks."""
        write = self._write  # forwarding: once per client per event, so the first test
        if write is not None:
            if not write(event):
                self._overflow()
            return
        if self._overflowed:
            return
        if self._queue is None:
            self._queue = deque()
        if len(self._queue) >= self.maxsize:
            self._overflow()
            return
        self._queue.append(event)
        self._wake()

    def forward(self, write: Callable[[Event], bool], sent_through: int = 0) -> None:
        """From now on, hand each event to ``write(event)`` as it is published: no queue.

        The events already queued with an id above ``sent_through`` (what the replay sent) are
        written first, in order, in this same step, so none is lost or sent twice. ``write``
        must not block: it writes the event's bytes to the client's socket and returns
        ``False`` when the client is too slow (its unsent bytes exceed ``queue_size`` events'
        worth); the subscription is then *overflowed*, as a full queue would be.
        """
        if self._overflowed:  # it filled up during the replay: the client goes
            return
        queued, self._queue = self._queue or (), None
        for event in queued:
            if event.id > sent_through and not write(event):
                self._overflow()
                return
        self._write = write

    async def get(self) -> Event | None:
        """The next event, or ``None`` once the queue overflowed (drop this client)."""
        while not self._overflowed:
            if self._queue:
                return self._queue.popleft()
            self._getter = asyncio.get_running_loop().create_future()
            try:
                await self._getter
            finally:
                self._getter = None
        return None

    def drop(self) -> None:
        """Drop this client, as if it had fallen behind (its write raised)."""
        self._overflow()

    def _overflow(self) -> None:
        self._overflowed = True
        if self._event is not None:
            self._event.set()
        self._queue = self._write = None
        self._wake()

    def _wake(self) -> None:
        if self._getter is not None and not self._getter.done():
            self._getter.set_result(None)

    def close(self) -> None:
        self._log.unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventLog(Protocol):
    """The interface every transport uses. :class:`MemoryLog` is the single-process one."""

    log_size: int
    queue_size: int

    async def publish(self, data: Any) -> Event: ...
    def read(self, after: int) -> Page: ...
    async def wait(self, after: int, timeout_s: float) -> Page: ...
    def hold(self, wake: Callable[[], None]) -> None: ...
    def unhold(self, wake: Callable[[], None]) -> None: ...
    def subscribe(self) -> Subscription: ...
    def unsubscribe(self, sub: Subscription) -> None: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def cluster_stats(self) -> dict[str, Any] | None: ...
    @property
    def published(self) -> int: ...
    @property
    def last_id(self) -> int: ...
    def __len__(self) -> int: ...


class MemoryLog:
    """The event log of one server process: a bounded deque plus the push subscriptions."""

    def __init__(
        self, log_size: int = DEFAULT_LOG_SIZE, queue_size: int = DEFAULT_QUEUE_SIZE
    ) -> None:
        if log_size < 1:
            raise ValueError("log_size must be at least 1")
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.log_size = log_size
        self.queue_size = queue_size
        self._events: deque[Event] = deque(maxlen=log_size)
        self._last_id = 0
        self._published = 0
        self._subscriptions: set[Subscription] = set()
        self._changed = asyncio.Event()
        self._held: set[Callable[[], None]] = set()  # long polls held: wait() and hold()
        self._pages: dict[int, Page] = {}  # read(after) for the current last id, by cursor

    @property
    def published(self) -> int:
        """Events published by this process."""
        return self._published

    @property
    def last_id(self) -> int:
        return self._last_id

    def __len__(self) -> int:
        return len(self._events)

    def __iter__(self) -> Iterator[Event]:
        return iter(self._events)

    async def publish(self, data: Any) -> Event:
        return self.append(Event.create(self._last_id + 1, data))

    def append(self, event: Event) -> Event:
        """Store an event that already has its id, and hand it to every subscriber."""
        self._events.append(event)
        self._last_id = event.id
        self._published += 1
        self._pages = {}
        # Each client is isolated, as websockets' broadcast() isolates each connection: one
        # whose write or wake-up raises is logged (and its subscription dropped); it neither
        # skips the clients after it nor fails the publisher.
        for sub in tuple(self._subscriptions):
            try:
                sub.offer(event)
            except Exception:
                log.exception("a subscriber's write raised: it is dropped")
                sub.drop()
        # Wake every held long poll, then arm a fresh Event for the next publish.
        held, self._held = self._held, set()
        for wake in held:
            try:
                wake()
            except Exception:
                log.exception("a held long poll's wake-up raised")
        self._changed.set()
        self._changed = asyncio.Event()
        return event

    def read(self, after: int) -> Page:
        """The events after the cursor; the same :class:`Page` for the same cursor until the
        next event (many long polls wait with one cursor)."""
        page = self._pages.get(after)
        if page is None:
            page = self._pages[after] = self._read(after)
        return page

    def _read(self, after: int) -> Page:
        last = self._last_id
        oldest = self._events[0].id if self._events else last + 1
        if after > last or after < oldest - 1:
            return Page(tuple(self._events), last, True, oldest)
        if after == last:
            return Page((), last, False, oldest)
        start = after - oldest + 1  # ids in the deque are consecutive
        events = tuple(self._events)[start:]
        return Page(events, last, False, oldest)

    async def wait(self, after: int, timeout_s: float) -> Page:
        page = self.read(after)
        if page.events or page.gap or timeout_s <= 0:
            return page
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return self.read(after)
            # One future per held request, resolved by the next append(): no task per waiter.
            woken: asyncio.Future[None] = loop.create_future()
            wake = functools.partial(_resolve, woken)
            self.hold(wake)
            timer = loop.call_later(remaining, wake)
            try:
                await woken
            finally:
                timer.cancel()
                self.unhold(wake)
            page = self.read(after)
            if page.events or page.gap:
                return page

    def get(self, event_id: int) -> Event | None:
        """The event with this id, if the log still keeps it."""
        for event in reversed(self._events):
            if event.id == event_id:
                return event
            if event.id < event_id:
                break
        return None

    async def wait_for_id(self, event_id: int, timeout_s: float) -> Event | None:
        """The event with this id once the log has it (a node of a cluster waits for its own
        publish to come back through Redis: :class:`labserver.cluster.RedisLog`); ``None`` if
        the log has not reached it within ``timeout_s``, or no longer keeps it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._last_id < event_id and loop.time() < deadline:
            try:
                await asyncio.wait_for(self._changed.wait(), deadline - loop.time())
            except TimeoutError:
                break
        return self.get(event_id)

    def clear(self) -> None:
        """Forget every event kept, not the last id: a cursor before the next event appended
        then reports a gap (a cluster node's mirror that missed trimmed entries starts
        afresh)."""
        self._events.clear()
        self._pages = {}

    def hold(self, wake: Callable[[], None]) -> None:
        """Call ``wake()`` once, at the next event (a long poll held by its connection, with
        no coroutine waiting: :mod:`labserver._fast.keepalive`)."""
        self._held.add(wake)

    def unhold(self, wake: Callable[[], None]) -> None:
        self._held.discard(wake)

    def subscribe(self) -> Subscription:
        sub = Subscription(self, self.queue_size)
        self._subscriptions.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscriptions.discard(sub)

    async def start(self) -> None:
        """Nothing to follow: a single process's log (a cluster's follows Redis)."""

    async def stop(self) -> None:
        """Nothing to stop."""

    def cluster_stats(self) -> dict[str, Any] | None:
        """``None``: not a node of a cluster (``/stats`` then has no ``cluster`` part)."""
        return None

    @property
    def subscribers(self) -> int:
        return len(self._subscriptions)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
