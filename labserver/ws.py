"""WebSocket: ``GET /ws``, the chapter's 12.2 rebuilt on a bare socket, and what it leaves out.

The chapter attaches Node's ``ws`` module to the Express server, logs what the client sends,
sends ``'A message from the server.'`` every 3 seconds with ``setInterval`` and clears the
interval on ``close``. This module does the same, and every event of the series besides:

* **one port** (12.7.1): the upgrade is an ordinary ``GET /ws`` on the HTTP server (RFC 6455 §4).
  aiohttp routes it and :func:`websocket` checks it; then the socket leaves aiohttp
  (:func:`labserver._fast.takeover.take_over`) for a :class:`WebSocketConnection` — a plain
  ``asyncio.Protocol`` that speaks RFC 6455 itself (:mod:`labserver.wsframes`), as Node's
  ``ws`` does on a raw socket.
  An idle connection is then a transport and one small object, not an HTTP request, its
  parser, a reader queue and a task per direction;
* **each event is one JSON text message** ``{"id": N, "data": ..., "ts": T}``, framed once
  and written to every client as the same bytes; ``?after=ID`` first replays the events the
  client missed (subscribe first, then read the log, then skip what was already sent; see
  :mod:`labserver.events`). A replay that cannot cover the gap says so with
  ``{"gap": {"after": ID, "oldest": N}}`` before the events;
* **two-way**: a client text ``{"echo": X}`` is answered ``{"echo": X}`` (round trips); any
  other text is counted (``messages_in``) and logged, truncated, like the chapter's
  ``console.log(message.toString())``. A text that *starts like JSON* (``{`` or ``[``) must be
  JSON; ``?every=S`` is the chapter's ``setInterval``: a ``{"status": text, "ts": T}`` message
  (no ``id``: not an event) every ``S`` seconds, its timer cancelled when the socket closes;
* **close codes from RFC 6455 §7.4.1** instead of silence: 1003 binary data, 1007 text that is
  not UTF-8 or must be JSON and is not, 1009 a message over ``max_message_bytes``, 1008 "send
  queue full" for a client that stopped reading, 1002 a broken frame (an unmasked one, §5.1),
  1001 when ``POST /drop`` or shutdown closes the socket;
* **protocol-level ping/pong**: every ``heartbeat_s`` one sweep pings every socket
  (:func:`heartbeat`, the pattern of the ``ws`` README); a socket that has sent nothing since
  the last ping — no pong, no message — is cut off;
* **cross-site WebSocket hijacking refused**: a browser always sends ``Origin``; a foreign one
  gets a 403 JSON answer *before* the upgrade (:func:`origin_allowed`, which lives beside the
  client's address in :mod:`labserver.whoami`), unless listed in
  ``allowed_origins``. Clients that send no ``Origin`` (not browsers) are accepted;
* **permessage-deflate** (RFC 7692) when the client offers it: that client's messages are
  compressed for it alone (its compressor keeps a window), so they are not shared bytes.

``messages_out`` counts the events delivered (replays included); echoes, status and gap
messages are not events. Every byte is counted where it crosses the socket, the handshake and
frame headers included. What to look at first: :func:`websocket`, then
:class:`LabSocket` (what ``/ws`` does: :meth:`LabSocket.on_open`, :meth:`LabSocket.send_event`,
:meth:`LabSocket.on_message`). The RFC's rules — the states, the closing handshake, Ping and
Pong, failing the connection — are :class:`labserver.wsprotocol.ServerProtocol`'s, which
:class:`WebSocketConnection` drives.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Protocol

from aiohttp import WSMsgType, hdrs, web

from . import wsframes
from ._fast.takeover import holds_more, take_over
from .counters import TransportCounters, open_gauge
from .errors import bad_request, json_error
from .events import Event, EventLog, Subscription
from .keys import CONNECTIONS, COUNTERS, FAST, LOG, OPTIONS
from .params import parse_after, query_seconds
from .tasks import background, cancel_all
from .transports import Transport, register
from .whoami import client_address, origin_allowed
from .wsframes import (
    GOING_AWAY,
    INVALID_TEXT,
    POLICY_VIOLATION,
    TEXT,
    UNSUPPORTED_DATA,
    Deflate,
)
from .wsprotocol import CLOSED, Message, ServerProtocol
from .wsprotocol import OPEN as OPEN_STATE

log = logging.getLogger("labserver.ws")

#: The name of its counters in ``/stats``, and of its connections for ``POST /drop``.
TRANSPORT = "ws"

#: How long a close handshake may take: a client answers a Close frame in milliseconds; one
#: that does not within a second is not reading, and ``stop()`` must finish within about one.
CLOSE_TIMEOUT_S = 1.0
#: A slow client's Close frame waits behind what it has not read yet. It gets this long to
#: catch up and read the 1008 "send queue full"; then its connection is aborted.
FLUSH_GRACE_S = 5.0
#: ``?every=S`` bounds: fast enough for a test, slow enough not to flood; the chapter uses 3.
EVERY_MIN_S = 0.05
EVERY_MAX_S = 3600.0
#: Client texts are logged truncated to this many characters (the log file is rotated too).
LOGGED_TEXT_CHARS = 200
#: The chapter's status text.
STATUS_TEXT = "A message from the server."

#: The open connections of an app: what :func:`heartbeat` pings.
OPEN: web.AppKey[set[WebSocketConnection]] = web.AppKey("ws_open")


async def websocket(request: web.Request) -> web.StreamResponse:
    """``GET /ws``: the chapter's ``wss.on('connection', (ws, req) => ...)``.

    Everything that can be refused is refused here, as JSON, before the upgrade. Then the
    101 answer and everything after it belong to a :class:`WebSocketConnection` whose
    messages and events a :class:`LabSocket` handles.
    """
    app = request.app
    after = parse_after(request) if "after" in request.query else None
    every_s = parse_every_s(request)
    if not origin_allowed(request, app[OPTIONS].allowed_origins):
        origin = request.headers[hdrs.ORIGIN]
        return json_error(403, f"origin {origin} may not open /ws: not this server's origin "
                               "and not in allowed_origins")
    if not app[FAST]:
        return await websocket_by_aiohttp(request, after, every_s)
    return await upgrade(request, LabSocket(after, every_s))


async def upgrade(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The opening handshake (§4.2): check the request, agree on permessage-deflate, answer
    ``101`` — and the socket leaves aiohttp for a :class:`WebSocketConnection` whose messages
    ``handler`` handles. A request that is no WebSocket upgrade gets a 400 JSON answer."""
    key = request.headers.get(hdrs.SEC_WEBSOCKET_KEY, "")
    if not is_upgrade(request) or not wsframes.valid_key(key):
        return not_an_upgrade(request)
    if holds_more(request):  # bytes after the request, before our 101
        raise bad_request("a client must wait for the handshake's answer before sending "
                          "frames (RFC 6455 section 4.1)")
    offers = ", ".join(request.headers.getall(hdrs.SEC_WEBSOCKET_EXTENSIONS, ()))  # §9.1: may
    deflate = wsframes.negotiate_deflate(offers)  # come in several header lines, as one list
    handshake = wsframes.handshake_response(key, deflate.response if deflate else None)
    protocol = ServerProtocol(request.app[OPTIONS].max_message_bytes,
                              Deflate(deflate) if deflate else None)
    connection = WebSocketConnection(request.app, client_address(request), handshake, protocol,
                                     handler)
    await take_over(request, connection)
    return web.Response()  # never sent: aiohttp no longer has the socket


def not_an_upgrade(request: web.Request) -> web.Response:
    return json_error(400, f"GET {request.path} needs a WebSocket upgrade (Upgrade: websocket, "
                           "Connection: Upgrade, Sec-WebSocket-Key, Sec-WebSocket-Version: 13)",
                      {hdrs.SEC_WEBSOCKET_VERSION: "13"})  # §4.4: the version we speak


def is_upgrade(request: web.Request) -> bool:
    """RFC 6455 §4.2.1: ``Upgrade: websocket``, ``Connection: Upgrade``, version 13."""
    upgrade = request.headers.get(hdrs.UPGRADE, "").lower()
    connection = {t.strip().lower() for t in request.headers.get(hdrs.CONNECTION, "").split(",")}
    return (upgrade == "websocket" and "upgrade" in connection
            and request.headers.get(hdrs.SEC_WEBSOCKET_VERSION) == "13")


class Handler(Protocol):
    """What a route does with its sockets (``/ws``: :class:`LabSocket`)."""

    def on_open(self, connection: WebSocketConnection) -> None:
        """After the ``101`` is written, in the same step."""

    def on_message(self, connection: WebSocketConnection, message: Message) -> None:
        """A whole message from the client (the protocol has inflated and decoded it)."""

    def on_close(self, connection: WebSocketConnection) -> None:
        """Once, when the socket stops being OPEN (a Close either way, a failure, the end
        of the TCP connection): nothing more can be sent."""


class WebSocketConnection(asyncio.Protocol):
    """One client's WebSocket, from the 101 answer to the end of the TCP connection: the
    asyncio shell around a :class:`labserver.wsprotocol.ServerProtocol`.

    asyncio calls :meth:`connection_made` once, :meth:`data_received` with whatever bytes
    arrive, :meth:`connection_lost` once at the end. The shell feeds the bytes to the
    protocol, hands each message to the handler, writes what the protocol has to send, and
    keeps what the RFC leaves to the I/O: timers (the close handshake's, and then the abort),
    backpressure, the bytes counted at the socket, the registries of open connections.
    Nothing here waits, so a connection needs no task: it is this object, its protocol, its
    handler and its transport.
    """

    __slots__ = ("app", "counters", "address", "handshake", "protocol", "handler", "transport",
                 "answered", "open", "close_timer", "connection_key", "finished")

    def __init__(self, app: web.Application, address: str, handshake: bytes,
                 protocol: ServerProtocol, handler: Handler) -> None:
        self.app = app
        self.counters: TransportCounters = app[COUNTERS][TRANSPORT]
        self.address = address
        self.handshake = handshake
        self.protocol = protocol
        self.handler = handler
        self.transport: asyncio.Transport | None = None
        self.answered = True  # sent something since the last ping
        self.open = False  # the handler's on_open ran and its on_close has not
        self.close_timer: asyncio.TimerHandle | None = None
        self.connection_key = 0
        self.finished: asyncio.Future[None] | None = None  # made only when someone waits

    # --- asyncio's callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """The 101 answer, then the handler's opening (``/ws``: the replay, live events)."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.write(self.handshake)
        self.handshake = b""
        self.counters.open += 1
        self.app[OPEN].add(self)
        self.connection_key = self.app[CONNECTIONS].add(TRANSPORT, self.drop)
        log.info("ws client connected %s", self.address)
        self.open = True
        self.handler.on_open(self)
        self.sync()

    def data_received(self, data: bytes) -> None:
        """Client frames: the protocol answers pings and closes and fails the connection on
        broken ones; each whole message goes to the handler."""
        self.counters.bytes_in += len(data)
        self.answered = True
        protocol = self.protocol
        protocol.receive_data(data)
        for message in protocol.events_received():
            self.counters.messages_in += 1
            self.handler.on_message(self, message)  # its answer goes out in order: sync()
        self.sync()

    def pause_writing(self) -> None:
        """The client is not reading what we write: stop reading what it writes (its echoes
        would pile up here). Events keep going until its backlog passes the bound."""
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.close_timer is not None:
            self.close_timer.cancel()
        self.finish()

    # --- what the handler calls ---------------------------------------------------------

    def send_text(self, payload: bytes) -> int:
        """A text message for this client alone; the bytes written (0 once not OPEN)."""
        self.protocol.send_text(payload)
        return self.sync()

    def send(self, message: Message) -> int:
        """A message of either kind (an echo)."""
        self.protocol.send(message.opcode, message.payload)
        return self.sync()

    def ping(self) -> None:
        self.protocol.send_ping()
        self.sync()

    def close(self, code: int, reason: str) -> None:
        """Start the close handshake (§7.1.2): a Close frame, then wait for the client's.

        No data may follow the Close frame. A client that does not answer within
        :data:`CLOSE_TIMEOUT_S` (it stopped reading) is given up: the transport is closed,
        which still flushes the Close frame behind its unread backlog, and
        :data:`FLUSH_GRACE_S` later the connection is aborted.
        """
        self.protocol.close(code, reason)
        self.sync()

    # --- the protocol's bytes and state, to the socket ----------------------------------

    def sync(self) -> int:
        """Write what the protocol has to send; follow its state: stop the handler once the
        socket is not OPEN, time the client's Close while CLOSING, end TCP once CLOSED."""
        protocol = self.protocol
        written = 0
        for data in protocol.data_to_send():
            self.write(data)
            written += len(data)
        if protocol.state is not OPEN_STATE and self.transport is not None:
            self.stop()
            if protocol.state is CLOSED:
                if not self.transport.is_closing():
                    self.end_connection()
            elif self.close_timer is None:
                self.close_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT_S,
                                                                         self.give_up)
        return written

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)
        self.counters.bytes_out += len(data)

    def give_up(self) -> None:
        """No Close frame came back in time."""
        self.end_connection()
        self.finish()

    def end_connection(self) -> None:
        """Close the TCP connection once our bytes are flushed; abort if they never are."""
        assert self.transport is not None
        if self.close_timer is not None:
            self.close_timer.cancel()
        self.transport.close()
        self.close_timer = asyncio.get_running_loop().call_later(FLUSH_GRACE_S,
                                                                 self.transport.abort)

    def stop(self) -> None:
        """The handler's ``on_close``, once."""
        if self.open:
            self.open = False
            self.handler.on_close(self)

    def finish(self) -> None:
        """The connection is over for the server (closed, or given up): count it out, once."""
        if self.connection_key == 0:
            return
        self.stop()
        self.counters.open -= 1
        self.app[OPEN].discard(self)
        self.app[CONNECTIONS].discard(TRANSPORT, self.connection_key)
        self.connection_key = 0
        if self.finished is not None and not self.finished.done():
            self.finished.set_result(None)
        log.info("ws client disconnected %s (close code %s)", self.address,
                 self.protocol.close_code)

    async def drop(self) -> None:
        """``POST /drop`` and shutdown: close with 1001 and wait (briefly) for the end."""
        if self.connection_key == 0:
            return
        self.finished = asyncio.get_running_loop().create_future()
        self.close(GOING_AWAY, "dropped by the server")
        await asyncio.wait((self.finished,), timeout=CLOSE_TIMEOUT_S + 0.1)


class LabSocket:
    """What ``/ws`` does with a socket (the app's side; the RFC's is the protocol's).

    On open it subscribes to the event log, replays ``?after=ID`` and then forwards every
    event as it is published (:meth:`send_event`); it starts the ``?every=S`` timer. A
    message is echoed, logged, or refused: binary with 1003, text that starts like JSON and
    is not JSON with 1007. On close the timer and the subscription stop.
    """

    __slots__ = ("after", "every_s", "connection", "sub", "allowance", "maxsize", "every_timer",
                 "every_next")

    def __init__(self, after: int | None, every_s: float | None) -> None:
        self.after = after
        self.every_s = every_s
        self.connection: WebSocketConnection | None = None
        self.sub: Subscription | None = None
        self.allowance = 0  # unsent bytes a client may have beyond queue_size events (its replay)
        self.maxsize = 0  # queue_size: the events' worth of unsent bytes a client may have
        self.every_timer: asyncio.TimerHandle | None = None
        self.every_next = 0.0  # the loop time the next status is due at

    def on_open(self, connection: WebSocketConnection) -> None:
        """The replay, then live events: all in this one step."""
        self.connection = connection
        event_log = connection.app[LOG]
        self.sub = event_log.subscribe()  # first, so that nothing published from now is missed
        self.maxsize = self.sub.maxsize
        self.sub.forward(self.send_event, self.replay(event_log))
        assert connection.transport is not None
        self.allowance = connection.transport.get_write_buffer_size()
        if self.every_s is not None:
            loop = asyncio.get_running_loop()
            self.every_next = loop.time() + self.every_s
            self.every_timer = loop.call_at(self.every_next, self.send_status)

    def on_close(self, connection: WebSocketConnection) -> None:
        if self.every_timer is not None:  # the chapter's clearInterval(ws.interval)
            self.every_timer.cancel()
        if self.sub is not None:
            self.sub.close()

    # --- events out ---------------------------------------------------------------------

    def replay(self, event_log: EventLog) -> int:
        """``?after=ID``: the gap notice and the missed events; returns the last id sent."""
        if self.after is None:
            return 0
        page = event_log.read(self.after)
        if page.gap:
            self.send_json({"gap": {"after": self.after, "oldest": page.oldest_id}})
        for event in page.events:
            self.send_event(event)
        return page.last_id

    def send_event(self, event: Event) -> bool:
        """Write one event; ``False`` when this client is too slow (the log then drops it).

        Runs once per client per event, inside ``publish``: the frame is the event's shared
        bytes (:func:`text_frame`, built once), so this is one ``transport.write`` — while
        the protocol is OPEN, since nothing may follow a Close frame. Too slow means more
        than ``queue_size`` events' worth of bytes unsent (beyond its replay): the connection
        is closed with 1008, and the publisher and the other clients never wait.
        """
        connection = self.connection
        transport = connection.transport  # type: ignore[union-attr]  # set by on_open
        protocol = connection.protocol  # type: ignore[union-attr]
        if transport is None or protocol.state is not OPEN_STATE:
            return True  # the connection is ending: nothing may follow a Close frame
        counters = connection.counters  # type: ignore[union-attr]
        if protocol.deflate is None:
            data = event.encoded(text_frame)
            transport.write(data)
            counters.bytes_out += (size := len(data))
        else:  # compressed for this client alone: its compressor keeps a window
            size = connection.send_text(event.json.encode())  # type: ignore[union-attr]
        counters.messages_out += 1
        # fanout.too_slow's rule, written out: this runs once per client per event
        if transport.get_write_buffer_size() <= self.allowance + self.maxsize * size:
            return True
        connection.close(POLICY_VIOLATION, "send queue full")
        return False

    def send_json(self, value: object) -> None:
        """A message that is not an event (echo, status, gap): framed for this client alone."""
        assert self.connection is not None
        self.connection.send_text(json.dumps(value, separators=(",", ":")).encode())

    def send_status(self) -> None:
        """``?every=S``: the chapter's ``setInterval(() => ws.send(...), 3000)``."""
        assert self.connection is not None and self.every_s is not None
        if self.connection.protocol.state is not OPEN_STATE:  # `if (ws.readyState === ...)`
            return
        self.send_json({"status": STATUS_TEXT, "ts": time.time()})
        # At a fixed rate, as setInterval means it: the next deadline is this one plus S, not
        # now plus S, so a late tick (a busy loop) does not push every later one back.
        loop = asyncio.get_running_loop()
        self.every_next = max(self.every_next + self.every_s, loop.time())
        self.every_timer = loop.call_at(self.every_next, self.send_status)

    # --- messages in --------------------------------------------------------------------

    def on_message(self, connection: WebSocketConnection, message: Message) -> None:
        """``ws.on('message', ...)``: echo, log, or refuse binary (1003)."""
        if message.text is None:
            connection.close(UNSUPPORTED_DATA, "binary messages are not accepted: send JSON text")
            return
        self.answer_text(connection, message.text)

    def answer_text(self, connection: WebSocketConnection, text: str) -> None:
        answer = answer_to(text, connection.address)
        if isinstance(answer, bytes):
            connection.send_text(answer)
        elif answer is not None:
            connection.close(*answer)


def answer_to(text: str, address: str) -> bytes | tuple[int, str] | None:
    """What ``/ws`` does with a client's text: ``{"echo": X}`` is answered ``{"echo": X}``
    (the bytes to send); a text that starts like JSON (``{`` or ``[``) must be JSON, or the
    socket closes with 1007 (the code and reason); any other text is logged (``None``)."""
    if text.lstrip()[:1] in ("{", "["):
        try:
            value = json.loads(text)
        except (json.JSONDecodeError, RecursionError):  # RecursionError: nested too deep
            return INVALID_TEXT, "text starting with { or [ must be valid JSON"
        if isinstance(value, dict) and "echo" in value:
            return json.dumps({"echo": value["echo"]}, separators=(",", ":")).encode()
    log.info("ws text from %s: %s", address, text[:LOGGED_TEXT_CHARS])
    return None


async def websocket_by_aiohttp(request: web.Request, after: int | None,
                               every_s: float | None) -> web.StreamResponse:
    """``/ws`` on aiohttp's own ``WebSocketResponse``, when the fast tier is off: the same
    messages and close codes as :class:`LabSocket`, a task per direction instead of a shell."""
    app = request.app
    opts, counters, event_log = app[OPTIONS], app[COUNTERS][TRANSPORT], app[LOG]
    ws = web.WebSocketResponse(heartbeat=opts.heartbeat_s, max_msg_size=opts.max_message_bytes)
    if not ws.can_prepare(request).ok:
        return not_an_upgrade(request)
    await ws.prepare(request)
    address = client_address(request)

    async def close(code: int, reason: str) -> None:
        try:
            await asyncio.wait_for(ws.close(code=code, message=reason.encode()),
                                   CLOSE_TIMEOUT_S)
        except TimeoutError:  # a client that does not read cannot take a Close frame
            if request.transport is not None:
                request.transport.abort()

    async def send_events(sub: Subscription) -> None:
        sent_through = 0
        if after is not None:
            page = event_log.read(after)
            if page.gap:
                await ws.send_json({"gap": {"after": after, "oldest": page.oldest_id}})
            for event in page.events:
                await ws.send_str(event.json)
                counters.messages_out += 1
            sent_through = page.last_id
        while (event := await sub.get()) is not None:  # None: overflowed (drop_when_behind)
            if event.id > sent_through:
                await ws.send_str(event.json)
                counters.messages_out += 1

    async def send_status() -> None:
        assert every_s is not None
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:  # at a fixed rate: a late tick does not push the later ones back
            due = max(due + every_s, loop.time())
            await asyncio.sleep(due - loop.time())
            await ws.send_json({"status": STATUS_TEXT, "ts": time.time()})

    async def drop() -> None:
        await close(GOING_AWAY, "dropped by the server")

    async def drop_when_behind(sub: Subscription) -> None:
        await sub.overflowed.wait()  # the sender may be stuck on a client that stopped reading
        await close(POLICY_VIOLATION, "send queue full")

    log.info("ws client connected %s", address)
    with (open_gauge(counters), event_log.subscribe() as sub,
          app[CONNECTIONS].track(TRANSPORT, drop)):
        tasks = [asyncio.create_task(send_events(sub)),
                 asyncio.create_task(drop_when_behind(sub))]
        if every_s is not None:
            tasks.append(asyncio.create_task(send_status()))
        try:
            async for message in ws:
                if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    continue
                counters.messages_in += 1
                if message.type is WSMsgType.BINARY:
                    await close(UNSUPPORTED_DATA, "binary messages are not accepted: send "
                                                  "JSON text")
                    break
                answer = answer_to(message.data, address)
                if isinstance(answer, bytes):
                    await ws.send_str(answer.decode())
                elif answer is not None:
                    await close(*answer)
                    break
        except ConnectionResetError:
            pass
        finally:
            await cancel_all(tasks)
    log.info("ws client disconnected %s (close code %s)", address, ws.close_code)
    return ws


def text_frame(event: Event) -> bytes:
    """The event's JSON as one WebSocket text frame (built once per event, ``Event.encoded``)."""
    return wsframes.frame(TEXT, event.json.encode())


async def heartbeat(app: web.Application) -> AsyncIterator[None]:
    """Every ``heartbeat_s``: cut the sockets that sent nothing since the last ping, ping the
    rest. One timer for every connection (the ``ws`` README's pattern), not one each."""

    async def sweep() -> None:
        every_s = app[OPTIONS].heartbeat_s
        while True:
            await asyncio.sleep(every_s)
            for connection in list(app[OPEN]):
                transport = connection.transport
                if transport is None or connection.protocol.state is not OPEN_STATE:
                    continue
                if not connection.answered:
                    transport.abort()  # no pong: the peer is gone or not reading
                    continue
                connection.answered = False
                connection.ping()

    async with background(sweep(), name="ws-heartbeat"):
        yield


def parse_every_s(request: web.Request) -> float | None:
    """``?every=S``: a status message every S seconds, EVERY_MIN_S … EVERY_MAX_S."""
    return query_seconds(request, "every", EVERY_MIN_S, EVERY_MAX_S)


def setup(app: web.Application) -> None:
    app[OPEN] = set()
    register(app, Transport(name=TRANSPORT, routes=[web.get("/ws", websocket)],
                            streaming=True, droppable=True))
    app.cleanup_ctx.append(heartbeat)
