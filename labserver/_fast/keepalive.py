"""Long polls on a kept-alive connection, answered without the framework's cost per request.

Long polling costs one HTTP request per event per client (:mod:`labserver.polling`), and with
a thousand clients that cost is the server's whole load: aiohttp builds a request object,
routes it, runs the middlewares, builds a response, and does it again for the next poll —
about twice the CPU of Node's bare ``http`` module on the same work
(``benchmarks/README.md``). So once a client's first ``GET /long-poll`` has come through
aiohttp (routing, checks, counters), a keep-alive connection is taken from aiohttp and served
here, as :mod:`labserver.ws` does after a WebSocket handshake. :func:`taking_over` wraps the
route's handler (:func:`labserver.polling.long_poll`, which knows nothing of it):

* the connection is taken only after a plain ``GET`` over HTTP/1.1 that keeps it alive — a
  ``HEAD``, an HTTP/1.0 request or one with a body is answered by aiohttp as any other —
  and with the bytes aiohttp had already read past it
  (:func:`labserver._fast.takeover.unread_bytes`);
* each next request is parsed by aiohttp's own parser (llhttp, with the connection's limits:
  :func:`labserver._fast.takeover.parse_head`), its target read as aiohttp reads it (``yarl.URL``),
  and served here only when aiohttp would answer it with the long poll's page and keep the
  connection as it is (:func:`served_here`);
* a held request waits in the event log (``EventLog.hold``), not in a coroutine: ``publish``
  calls :meth:`LongPollConnection.wake`, which writes the page — the body built once per
  cursor, shared by every client that waited with it — after a ready-made head;
* pipelined requests are answered one after another **only while the client reads** its
  answers: when the transport's buffer of unsent bytes passes asyncio's high-water mark (64 KiB
  by default) it calls ``pause_writing``, and answering and reading stop until
  ``resume_writing`` — the same bound a WebSocket's socket has on what its client leaves
  unread, plus one answer;
* **anything else** (another route or method, a bad parameter, a body, HTTP/1.0,
  ``Connection: close``, a head the parser refuses) is handed back to aiohttp with its bytes
  (:func:`labserver._fast.takeover.hand_back`), which answers it exactly as on a fresh connection —
  errors as JSON included. A read that aiohttp's parser refuses goes back whole, none of its
  requests answered here, since aiohttp would answer it with its 400 alone
  (:func:`labserver._fast.takeover.refuses`). Nothing is answered here that aiohttp would answer
  differently, except that this path sends no ``Server`` header (``tests/test_differential.py``
  checks it, byte for byte).

The route and the counters are those the long poll declared (:mod:`labserver.transports`),
taken from the first request aiohttp routed: only requests for that route are served here, and
they count as its requests, bytes in and out at the socket, events delivered, empty answers,
and the ``open`` gauge while a request is held.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from email.utils import formatdate

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11, RawRequestMessage
from multidict import MultiMapping

from ..counters import ConnectionFactory, TransportCounters, connection_of
from ..events import EventLog, Page
from ..keys import LOG
from ..options import LONG_POLL_DEFAULT_S, LONG_POLL_MAX_S
from ..params import cursor, seconds_between
from ..tasks import background
from .takeover import (
    HeadLimits,
    can_take_over,
    hand_back,
    head_end,
    parse_head,
    refuses,
    request_ends,
    take_over,
    unread_bytes,
)

#: A request head longer than this is not a plain long poll: aiohttp gets it (and answers it).
MAX_HEAD_BYTES = 8190
#: A kept-alive connection that sent no request for a whole period of this length (aiohttp's
#: keep-alive timeout) is closed by :func:`close_idle` — one sweep for all, not a timer each.
KEEPALIVE_S = 75.0

#: The open kept-alive long-poll connections of an app, for shutdown.
OPEN: web.AppKey[set[LongPollConnection]] = web.AppKey("long_poll_open")

DEFAULT_LIMITS = HeadLimits()  # aiohttp's defaults

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def long_poll_params(query: MultiMapping[str]) -> tuple[int, float] | None:
    """``(after, timeout_s)`` read from a decoded query as :func:`labserver.polling.long_poll`
    reads them (the same functions); ``None`` where it answers 400."""
    after = cursor(query.get("after", "0"))
    text = query.get("timeout")
    timeout_s = LONG_POLL_DEFAULT_S if text is None else seconds_between(text, 0,
                                                                          LONG_POLL_MAX_S)
    if after is None or timeout_s is None:
        return None
    return after, timeout_s


def served_here(message: RawRequestMessage, path: str) -> tuple[int, float] | None:
    """The long poll's parameters if aiohttp would answer ``message`` (parsed by its own
    parser) with the long poll's page, the route at ``path``, and keep the connection;
    otherwise ``None``."""
    url = message.url
    if (message.method != "GET" or message.version != HttpVersion11 or message.should_close
            or message.upgrade or url.absolute or url.raw_path != path
            or hdrs.EXPECT in message.headers):
        return None
    return long_poll_params(url.query)


@functools.lru_cache(maxsize=1024)
def long_poll_of(head: bytes, limits: HeadLimits, path: str) -> tuple[int, float] | None:
    """:func:`served_here` of ``head`` as aiohttp's parser reads it (with no body after it);
    ``None`` when it is not served here. Kept for the next connection that sends the same
    bytes: the answer depends on them alone, and the clients that one event wakes ask again
    with the same head (a cache-busting ``_=`` parameter makes each head new: one parse each)."""
    parsed = parse_head(head, limits)
    return served_here(parsed[0], path) if parsed is not None and parsed[1] == 0 else None


def taking_over(handler: Handler) -> Handler:
    """The long-poll route: ``handler`` answers the request, and a kept-alive connection's
    next long polls are served by a :class:`LongPollConnection` after it."""

    @functools.wraps(handler)
    async def long_poll(request: web.Request) -> web.StreamResponse:
        params = long_poll_params(request.query)
        if (params is not None and request.method == "GET"
                and request.version == HttpVersion11 and request.keep_alive
                and can_take_over(request)):
            unread = unread_bytes(request)  # before take_over pauses aiohttp: nothing awaits
            if unread is not None:
                counting = connection_of(request)
                assert counting is not None  # can_take_over
                # The route and the counters are those the transport declared: the request's
                # route, and the counters the counting middleware charged it to.
                resource = request.match_info.route.resource
                assert resource is not None and counting.charged is not None
                connection = LongPollConnection(request.app, counting.factory, *params,
                                                path=resource.canonical,
                                                counters=counting.charged,
                                                unread=unread,
                                                limits=HeadLimits.of(request.protocol))
                await take_over(request, connection)
                return web.Response()  # never sent: aiohttp no longer has the connection
        return await handler(request)

    return long_poll


class LongPollConnection(asyncio.Protocol):
    """A kept-alive connection that carries long polls, after its first one.

    Requests are answered in order: while one is held, or while the client does not read its
    answers, the next wait in ``buffer`` (at most one read beyond a head's worth: then reading
    stops).
    """

    __slots__ = ("app", "factory", "log", "path", "counters", "limits", "transport", "buffer",
                 "after", "timer", "holding", "first", "active", "writing_paused",
                 "give_back_at")

    def __init__(self, app: web.Application, factory: ConnectionFactory, after: int,
                 timeout_s: float, *, path: str, counters: TransportCounters,
                 unread: bytes = b"", limits: HeadLimits = DEFAULT_LIMITS) -> None:
        self.app = app
        self.factory = factory  # makes aiohttp's connections: for hand_back
        self.log: EventLog = app[LOG]
        self.path = path  # the long poll's route: the requests served here are its
        self.counters = counters
        self.limits = limits  # those of the aiohttp connection it came from
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray(unread)  # what aiohttp had read past the first request
        self.after = after
        self.timer: asyncio.TimerHandle | None = None
        self.holding = False
        self.active = True  # a request or an answer since the last idle sweep
        self.writing_paused = False  # the client stopped reading its answers
        self.first = (after, timeout_s)  # the request aiohttp routed: served first
        self.give_back_at: int | None = None  # where in buffer a read aiohttp refuses begins

    # --- asyncio's callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.app[OPEN].add(self)
        # aiohttp counted its request and every byte it read; the unread ones are counted
        # again by whoever parses them (this connection, or aiohttp after a hand-back).
        self.counters.bytes_in -= len(self.buffer)
        self.serve(*self.first)
        self.next_request()

    def data_received(self, data: bytes) -> None:
        before = len(self.buffer)
        self.buffer += data
        if (self.give_back_at is None and head_end(self.buffer) != len(self.buffer)
                and refuses(bytes(self.buffer), self.limits)):
            # aiohttp's parser refuses this read: aiohttp would answer the requests completed
            # in earlier reads, then only its 400 — those completed in this read are lost with
            # it. So this connection serves the former it can serve, and gives the rest back
            # in two reads, cut where this one begins (give_back). (A
            # buffer that is one whole head, the usual read, needs no second parse: if the
            # parser refuses it, next_request gives it back, whole.)
            ends = request_ends(bytes(self.buffer[:before]), self.limits)
            self.give_back_at = max((end for end, _ in ends), default=0)
        self.next_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self.forget()

    def pause_writing(self) -> None:
        """The client does not read its answers: answer nothing more, read nothing more."""
        self.writing_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        """It read them: go on with the requests that wait."""
        self.writing_paused = False
        self.next_request()

    # --- requests -----------------------------------------------------------------------

    def next_request(self) -> None:
        """Serve the requests waiting in ``buffer`` in order, while none is held and the client
        reads; the first that is not a long poll served here goes back to aiohttp with the
        rest. Reading goes on only while answering does, and a head's worth is buffered."""
        while not self.holding and not self.writing_paused and self.transport is not None:
            if self.give_back_at == 0:
                self.give_back()
                return
            end = head_end(self.buffer)
            if end < 0 and len(self.buffer) <= MAX_HEAD_BYTES:
                break  # the rest of the head is on its way
            request = long_poll_of(bytes(self.buffer[:end]), self.limits, self.path) if (
                0 <= end <= MAX_HEAD_BYTES) else None
            if request is None:
                self.give_back()
                return
            del self.buffer[:end]
            if self.give_back_at is not None:
                self.give_back_at -= end
            self.active = True
            self.counters.requests += 1
            self.counters.bytes_in += end
            self.serve(*request)
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.writing_paused or len(self.buffer) > MAX_HEAD_BYTES:
            transport.pause_reading()  # bounded: more waits in the socket
            # (while a poll is held, reading goes on below that: a client that leaves is seen)
        else:
            transport.resume_reading()

    def serve(self, after: int, timeout_s: float) -> None:
        """The long poll: answer now if the log has something newer, or hold it."""
        page = self.log.read(after)
        if page.events or page.gap or timeout_s <= 0:
            self.answer(page)
            return
        self.after = after
        self.holding = True
        self.counters.open += 1
        self.log.hold(self.wake)
        self.timer = asyncio.get_running_loop().call_later(timeout_s, self.time_out)

    def wake(self) -> None:
        """Called by the log on publish: there is something newer than the cursor."""
        self.cancel_timer()
        self.release()
        self.answer(self.log.read(self.after))
        self.next_request()  # requests that came while this one was held

    def time_out(self) -> None:
        self.timer = None
        self.log.unhold(self.wake)
        self.release()
        self.answer(self.log.read(self.after))
        self.next_request()

    def release(self) -> None:
        if self.holding:
            self.holding = False
            self.counters.open -= 1

    def answer(self, page: Page) -> None:
        """One write: a head made once per body length and second, and the page's shared body."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        body = page.to_bytes()
        data = response_head(len(body)) + body
        transport.write(data)
        self.active = True  # an answer is activity too: its client is about to ask again
        counters = self.counters
        counters.bytes_out += len(data)
        counters.messages_out += len(page.events)
        if not page.events:
            counters.empty += 1

    def give_back(self) -> None:
        """Not a request this path serves: aiohttp gets the connection and the bytes."""
        transport = self.transport
        if transport is None:
            return
        data, cut = bytes(self.buffer), self.give_back_at or 0
        self.forget()
        # The requests read before the read aiohttp refuses go back as one read, that read and
        # what followed as another: aiohttp answers the former, then its 400.
        hand_back(self.factory, transport, data[:cut], data[cut:])

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def forget(self) -> None:
        """The connection ends, or goes back to aiohttp: nothing of it stays here."""
        self.cancel_timer()
        if self.holding:
            self.log.unhold(self.wake)
        self.release()
        self.app[OPEN].discard(self)
        self.transport = None
        self.buffer = bytearray()


_heads: dict[int, bytes] = {}  # by body length, for the second in _second
_second = [0]


def response_head(length: int) -> bytes:
    """The head of a long poll's answer — what aiohttp sends for it, in its order, less
    ``Server`` — made
    once per body length and second (the ``Date`` header): most answers share a length."""
    now = int(time.time())
    if _second[0] != now:
        _second[0] = now
        _heads.clear()
    head = _heads.get(length)
    if head is None:
        head = _heads[length] = (
            b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\n"
            b"Content-Type: application/json; charset=utf-8\r\nContent-Length: %d\r\n"
            b"Date: %s\r\n\r\n"
            % (length, formatdate(now, usegmt=True).encode()))
    return head


async def close_idle(app: web.Application) -> AsyncIterator[None]:
    """Every :data:`KEEPALIVE_S`: close the connections that held nothing and had no request
    and no answer since the last sweep (idle for one to two periods)."""

    async def sweep() -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_S)
            for connection in list(app[OPEN]):
                if not connection.holding and not connection.active and (
                        connection.transport is not None):
                    connection.transport.close()
                connection.active = False

    async with background(sweep(), name="long-poll-idle"):
        yield


async def close_all(app: web.Application) -> None:
    """Shutdown: the held and idle kept-alive long polls are closed, as aiohttp closes its own."""
    for connection in list(app[OPEN]):
        if connection.transport is not None:
            connection.transport.close()
        connection.forget()


def setup(app: web.Application) -> None:
    app[OPEN] = set()
    app.cleanup_ctx.append(close_idle)
    app.on_shutdown.append(close_all)
