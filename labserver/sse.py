"""Server-Sent Events: ``GET /sse``, the second row of the chapter's 12.1 table.

The chapter says SSE is "server to client only; browsers use the ``EventSource`` object". This
module is the server side of that sentence, written to the HTML Living Standard's "Server-sent
events" section (§9.2): one long HTTP response of type ``text/event-stream``, UTF-8 text in
*blocks* separated by a blank line, each line a ``field: value``. What goes on the wire:

.. code-block:: text

    retry: 3000            <- first: how long a browser waits before it reconnects
                           <- (a blank line ends every block)
    id: 7                  <- each event: its id, its type, its JSON ({"id", "data", "ts"})
    event: news
    data: {"id":7,"data":{"price":101},"ts":1764048000.12}

    : ping                 <- a comment every heartbeat_s of silence, so that proxies and
                              clients see a live connection; EventSource ignores it

A browser remembers the last ``id:`` it saw and, when the stream breaks, reconnects by itself
after ``retry`` milliseconds with the header ``Last-Event-ID: 7``. The server replays from the
event log exactly the events after 7 — the resume pattern of :mod:`labserver.events`: subscribe
*first*, then read the log, then skip in the subscription what the replay already sent. When the
log no longer holds them (or the id is from an earlier life of the server), the stream says so
with ``event: gap`` and ``data: {"after": 7, "oldest": N}`` before the events it still has; it
never skips events silently. A client that cannot set headers resumes with ``?last_event_id=7``
(the header wins when both are sent: a browser that opened ``sse?last_event_id=5`` sends the
newer id in the header when it reconnects, to the same URL).

The rest is what keeps one long response healthy:

* ``Cache-Control: no-cache`` and ``X-Accel-Buffering: no`` keep caches and proxies (nginx)
  from holding the stream back; each event is written, and so flushed, on its own.
* A client that goes away is noticed at once: ``serve()`` runs aiohttp with
  ``handler_cancellation=True``, so a closed connection cancels this handler and ``open`` drops.
  (Mounted in an app of your own without it, a gone client is noticed at the next write: the
  next event or heartbeat, within ``heartbeat_s``.)
* Each event is framed once — its block, as one HTTP chunk — and the event log writes those
  same bytes to every open stream as it is published (:mod:`labserver._fast.fanout`, see
  :meth:`~labserver.events.Subscription.forward`): per client, one write, no task to wake.
* A client that stops reading leaves bytes unsent; past ``queue_size`` events' worth its
  :class:`~labserver.events.Subscription` overflows and it is dropped — its connection
  aborted, logged — and may resume with its last id. The publisher and the other clients
  never wait for it.
* ``POST /drop`` (and shutdown) ends every stream cleanly and closes its connection, so that a
  lesson can watch an ``EventSource`` reconnect and resume.

aiohttp sends a response without a length as ``Transfer-Encoding: chunked``, so each write
also carries a chunk-size line and a CRLF; they are on the wire and counted in ``bytes_out``.
``messages_out`` counts the events delivered (replays included), not the ``retry``, gap and
heartbeat blocks. What to look at first: :func:`encode_block`, then :func:`stream_events`.
"""

from __future__ import annotations

import asyncio
import json
import logging

from aiohttp import web

from ._fast.fanout import stream_writer
from .counters import TransportCounters, open_gauge
from .errors import bad_request
from .events import Event, EventLog, Subscription
from .keys import CONNECTIONS, COUNTERS, FAST, LOG, OPTIONS
from .options import Options
from .params import cursor
from .tasks import cancel_all
from .transports import Transport, register

log = logging.getLogger("labserver.sse")

#: The name of its counters in ``/stats``, and of its connections for ``POST /drop``.
TRANSPORT = "sse"

#: The event type of every published event: a browser listens with
#: ``source.addEventListener("news", ...)`` (the chapter's Socket.IO ``emit('news', ...)``).
NEWS = "news"
#: The event type that reports events the log can no longer replay.
GAP = "gap"
#: The heartbeat: a comment line (it starts with a colon) and the blank line that ends a block.
HEARTBEAT = b": ping\n\n"
#: What keeps caches and proxies from buffering the stream (nginx reads ``X-Accel-Buffering``).
STREAM_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
#: How long ending one stream may take (``POST /drop``, shutdown). A reading client takes the
#: last chunk in microseconds; one that has not within half a second is not reading and its
#: connection is aborted. ``stop()`` must finish within about a second, so this stays short.
CLOSE_TIMEOUT_S = 0.5


def encode_block(
    data: str | None = None, *, id: int | None = None, event: str | None = None,
    retry_ms: int | None = None, comment: str | None = None,
) -> bytes:
    """One block of the event stream: ``field: value`` lines in this order, then a blank line.

    ``data`` may hold several lines: each becomes its own ``data:`` line, and a browser joins
    them back with ``\\n`` (the standard's "data buffer"). Lines end with ``\\n`` only.
    """
    lines = []
    if comment is not None:
        lines.append(f": {comment}")
    if retry_ms is not None:
        lines.append(f"retry: {retry_ms}")
    if id is not None:
        lines.append(f"id: {id}")
    if event is not None:
        lines.append(f"event: {event}")
    if data is not None:
        lines.extend(f"data: {line}" for line in data.splitlines() or [""])
    return ("\n".join(lines) + "\n\n").encode()


def encode_event(event: Event) -> bytes:
    """``id: N``, ``event: news``, ``data: <the event's JSON, serialised once, one line>``."""
    return encode_block(event.json, id=event.id, event=NEWS)


def encode_gap(after: int, oldest_id: int) -> bytes:
    """``event: gap`` with ``{"after": ID, "oldest": N}``: events after ID up to N-1 are lost.

    It carries no ``id:``, so the client's last event id stays the one it already had.
    """
    return encode_block(json.dumps({"after": after, "oldest": oldest_id}), event=GAP)


def parse_last_event_id(request: web.Request) -> int | None:
    """Where to resume: the ``Last-Event-ID`` header, else ``?last_event_id=``, else live only.

    An empty value means "no id", as for a browser that has not seen one yet.
    """
    for source, text in (
        ("Last-Event-ID", request.headers.get("Last-Event-ID")),
        ("last_event_id", request.query.get("last_event_id")),
    ):
        if text is None or not text.strip():
            continue
        event_id = cursor(text.strip())
        if event_id is None:
            raise bad_request(f"{source} must be a non-negative integer (an event id)")
        return event_id
    return None


async def stream_events(
    response: web.StreamResponse, event_log: EventLog, sub: Subscription,
    last_event_id: int | None, opts: Options, counters: TransportCounters,
    transport: asyncio.Transport, fast: bool = True,
) -> None:
    """Write the stream: ``retry``, the replay, then each new event, or a heartbeat.

    ``sub`` was taken *before* the log is read here, so an event published in between is in
    both; ``sub.forward`` then skips what the replay already sent, by id. From then on the log
    writes each event to this stream as it is published (a writer of the private tier:
    :func:`labserver._fast.fanout.stream_writer`), and this
    coroutine only fills silences: every ``heartbeat_s`` in which nothing was written, a
    ``: ping``. A client that stops reading overflows ``sub`` (the handler drops it). Without
    the fast tier this coroutine writes each event itself, as it comes out of ``sub``.
    """
    await response.write(encode_block(retry_ms=opts.retry_ms))
    sent_through = 0  # every event with an id <= this was sent, or precedes the client's cursor
    if last_event_id is not None:
        page = event_log.read(last_event_id)
        if page.gap:
            await response.write(encode_gap(last_event_id, page.oldest_id))
        for event in page.events:
            await response.write(event.encoded(encode_event))
            counters.messages_out += 1
        sent_through = page.last_id
    if not fast:
        await relay_events(response, sub, sent_through, opts.heartbeat_s, counters)
        return
    # From now on the log writes each event's block to the socket (labserver._fast).
    writer = stream_writer(response, transport, encode_event, opts.queue_size, counters)
    sub.forward(writer, sent_through)
    try:
        while True:
            writer.wrote = False
            await asyncio.sleep(opts.heartbeat_s)
            if not writer.wrote:
                await response.write(HEARTBEAT)
    except ConnectionResetError:  # aiohttp: "Cannot write to closing transport"
        return


async def relay_events(response: web.StreamResponse, sub: Subscription, sent_through: int,
                       heartbeat_s: float, counters: TransportCounters) -> None:
    """Each event from ``sub`` (past the replay) written with ``response.write``, or a
    heartbeat after ``heartbeat_s`` without one: the stream on aiohttp's public API alone."""
    try:
        while True:
            try:
                event = await asyncio.wait_for(sub.get(), heartbeat_s)
            except TimeoutError:
                await response.write(HEARTBEAT)
                continue
            if event is None:
                return  # overflowed: the handler drops this client
            if event.id > sent_through:
                await response.write(event.encoded(encode_event))
                counters.messages_out += 1
    except ConnectionResetError:  # aiohttp: "Cannot write to closing transport"
        return


async def sse(request: web.Request) -> web.StreamResponse:
    """``GET /sse``: one ``text/event-stream`` response for as long as the client stays."""
    app = request.app
    last_event_id = parse_last_event_id(request)  # a bad id is a 400 JSON answer, not a stream
    counters = app[COUNTERS][TRANSPORT]
    transport = request.transport
    assert transport is not None
    response = web.StreamResponse(headers=STREAM_HEADERS)
    stop = asyncio.Event()  # set by POST /drop and on shutdown
    finished = asyncio.Event()

    async def drop() -> None:
        stop.set()
        try:
            await asyncio.wait_for(finished.wait(), 2 * CLOSE_TIMEOUT_S)
        except TimeoutError:
            transport.abort()

    address = request.remote
    log.info("sse client connected %s, Last-Event-ID %s", address, last_event_id)
    with (
        open_gauge(counters),
        app[LOG].subscribe() as sub,  # subscribe first, then the stream reads the log
        app[CONNECTIONS].track(TRANSPORT, drop),
    ):
        tasks: list[asyncio.Task[object]] = []
        try:
            await response.prepare(request)
            sender = asyncio.create_task(
                stream_events(response, app[LOG], sub, last_event_id, app[OPTIONS], counters,
                              transport, app[FAST])
            )
            stopped = asyncio.create_task(stop.wait())
            overflowed = asyncio.create_task(sub.overflowed.wait())
            tasks = [sender, stopped, overflowed]
            # The sender may be blocked writing to a client that stopped reading: watch the
            # overflow flag beside it, so that such a client is dropped all the same.
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if sub.overflowed.is_set():
                log.info("sse client %s dropped: it stopped reading, %d bytes unsent",
                         address, transport.get_write_buffer_size())
                transport.abort()
            elif stop.is_set():
                sub.close()  # no event may follow the last chunk
                await end_stream(response, transport)
            elif sender.done():
                sender.result()  # the client went away (None), or a bug surfaces here
        except ConnectionResetError:
            pass
        finally:
            await cancel_all(tasks)
            finished.set()
    log.info("sse client disconnected %s", address)
    return response


async def end_stream(response: web.StreamResponse, transport: asyncio.Transport) -> None:
    """End the response cleanly (the last chunk) and close the connection after it.

    A browser's ``EventSource`` then waits ``retry`` ms and reconnects with ``Last-Event-ID``.
    """
    response.force_close()  # no keep-alive: the connection closes once the response ends
    try:
        await asyncio.wait_for(response.write_eof(), CLOSE_TIMEOUT_S)
    except TimeoutError:
        transport.abort()


def setup(app: web.Application) -> None:
    register(app, Transport(
        name=TRANSPORT,
        routes=[web.get("/sse", sse, allow_head=False)],  # HEAD would hold a stream, no body
        streaming=True,
        droppable=True,  # POST /drop ends the stream: the browser reconnects and resumes
    ))
