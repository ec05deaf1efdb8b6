"""Long polls on a kept-alive connection, answered without the framework's cost per request.

Long polling costs one HTTP request per event per client (:mod:`labserver.polling`), and with
a thousand clients that cost is the server's whole load: aiohttp builds a request object,
routes it, runs the middlewares, builds a response, and does it again for the next poll —
about twice the CPU of Node's bare ``http`` module on the same work
(``benchmarks/README.md``). So once a client's first ``GET /long-poll`` has come through
aiohttp (routing, checks, counters), a keep-alive connection is taken from aiohttp and served
here, as :mod:`labserver.ws` does after a WebSocket handshake:

* each next request on the connection is read by :func:`parse_long_poll`, which accepts only
  the plain shape every long-poll client sends — ``GET /long-poll?after=N&timeout=S
  HTTP/1.1``, no body, no upgrade;
* a held request waits in the event log (``EventLog.hold``), not in a coroutine: ``publish``
  calls :meth:`LongPollConnection.wake`, which writes the page — the body built once per
  cursor, shared by every client that waited with it — after a ready-made head;
* **anything else** (another route, a bad parameter, a body, HTTP/1.0, ``Connection: close``)
  is handed back to aiohttp with its bytes (:func:`labserver.takeover.hand_back`), which
  answers it exactly as before — errors as JSON included. Nothing is answered here that
  aiohttp would answer differently, except that this path sends no ``Server`` header.

The counters are those of ``/long-poll``: a request, bytes in and out at the socket, the
events delivered, empty answers, and the ``open`` gauge while a request is held.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from email.utils import formatdate

from aiohttp import web

from .counters import TransportCounters
from .errors import cursor, seconds_between
from .events import EventLog, Page
from .keys import COUNTERS, LOG
from .options import LONG_POLL_DEFAULT_S, LONG_POLL_MAX_S
from .takeover import hand_back

#: A request head longer than this is not a plain long poll: aiohttp gets it (and answers it).
MAX_HEAD_BYTES = 8190
#: A kept-alive connection that sent no request for a whole period of this length (aiohttp's
#: keep-alive timeout) is closed by :func:`close_idle` — one sweep for all, not a timer each.
KEEPALIVE_S = 75.0

#: The open kept-alive long-poll connections of an app, for shutdown.
OPEN: web.AppKey[set[LongPollConnection]] = web.AppKey("long_poll_open")


def parse_long_poll(head: bytes) -> tuple[int, float] | None:
    """``(after, timeout_s)`` if ``head`` (without its blank line) is a plain keep-alive
    ``GET /long-poll`` that needs nothing of aiohttp; otherwise ``None``."""
    request_line, *header_lines = head.split(b"\r\n")
    parts = request_line.split(b" ")
    if len(parts) != 3 or parts[0] != b"GET" or parts[2] != b"HTTP/1.1":
        return None
    path, _, query = parts[1].partition(b"?")
    if path != b"/long-poll":
        return None
    for line in header_lines:
        name, colon, value = line.partition(b":")
        if not colon or not name.replace(b"-", b"").isalnum():
            return None  # folded, malformed or odd headers: aiohttp's parser decides
        name = name.lower()
        if name in (b"transfer-encoding", b"upgrade", b"expect") or (
                name == b"content-length" and value.strip() != b"0") or (
                name == b"connection" and b"close" in value.lower()):
            return None
    params: dict[bytes, bytes] = {}
    for pair in query.split(b"&") if query else ():
        key, _, value = pair.partition(b"=")
        if key in params or b"%" in pair or b"+" in pair:
            return None
        params[key] = value
    after = cursor(params.get(b"after", b"0").decode("latin-1"))
    timeout_s: float | None = LONG_POLL_DEFAULT_S
    if b"timeout" in params:
        timeout_s = seconds_between(params[b"timeout"].decode("latin-1"), 0, LONG_POLL_MAX_S)
    if after is None or timeout_s is None:
        return None  # aiohttp's route answers it: 400 with the reason
    return after, timeout_s


class LongPollConnection(asyncio.Protocol):
    """A kept-alive connection that carries long polls, after its first one.

    Requests are answered in order: while one is held, the next waits in ``buffer``.
    """

    __slots__ = ("app", "factory", "log", "counters", "transport", "buffer", "after", "timer",
                 "holding", "first", "active", "writing_paused")

    def __init__(self, app: web.Application, factory: web.Server, after: int,
                 timeout_s: float) -> None:
        self.app = app
        self.factory = factory  # makes aiohttp's connections: for hand_back
        self.log: EventLog = app[LOG]
        self.counters: TransportCounters = app[COUNTERS]["long_poll"]
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.after = after
        self.timer: asyncio.TimerHandle | None = None
        self.holding = False
        self.active = True  # a request or an answer since the last idle sweep
        self.writing_paused = False  # the client stopped reading its answers
        self.first = (after, timeout_s)  # the request aiohttp routed: served first

    # --- asyncio's callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.app[OPEN].add(self)
        self.serve(*self.first)  # aiohttp counted its request and its bytes

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.holding:
            self.next_request()
        elif len(self.buffer) > MAX_HEAD_BYTES and self.transport is not None:
            self.transport.pause_reading()  # bounded: more waits in the socket until the answer

    def connection_lost(self, exc: Exception | None) -> None:
        self.forget()

    def pause_writing(self) -> None:  # the client does not read its answers: stop reading
        self.writing_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    # --- requests -----------------------------------------------------------------------

    def next_request(self) -> None:
        """Serve the requests waiting in ``buffer`` in order, until one is held or incomplete;
        the first that is not a plain long poll goes back to aiohttp with the rest."""
        while not self.holding and self.transport is not None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0 and len(self.buffer) <= MAX_HEAD_BYTES:
                break  # the rest of the head is on its way
            request = parse_long_poll(bytes(self.buffer[:end])) if 0 <= end <= MAX_HEAD_BYTES \
                else None
            if request is None:
                self.give_back()
                return
            del self.buffer[:end + 4]
            self.active = True
            self.counters.requests += 1
            self.counters.bytes_in += end + 4
            self.serve(*request)
        if not self.holding and not self.writing_paused and self.transport is not None:
            self.transport.resume_reading()  # if a held request had paused it

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
        if self.buffer:  # requests that came while this one was held
            self.next_request()

    def time_out(self) -> None:
        self.timer = None
        self.log.unhold(self.wake)
        self.release()
        self.answer(self.log.read(self.after))
        if self.buffer:
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
        data = bytes(self.buffer)
        self.forget()
        hand_back(self.factory, transport, data)

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
    """The head of a long poll's answer — what aiohttp sends for it, less ``Server`` — made
    once per body length and second (the ``Date`` header): most answers share a length."""
    now = int(time.time())
    if _second[0] != now:
        _second[0] = now
        _heads.clear()
    head = _heads.get(length)
    if head is None:
        head = _heads[length] = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
            b"Cache-Control: no-store\r\nContent-Length: %d\r\nDate: %s\r\n\r\n"
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

    task = asyncio.create_task(sweep(), name="long-poll-idle")
    yield
    task.cancel()


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
