"""WebSocket: ``GET /ws``, the chapter's 12.2 rebuilt with aiohttp, and what it leaves out.

The chapter attaches Node's ``ws`` module to the Express server, logs what the client sends,
sends ``'A message from the server.'`` every 3 seconds with ``setInterval`` and clears the
interval on ``close``. :func:`websocket` does the same, and every event of the series besides:

* **one port** (12.7.1): the upgrade is an ordinary ``GET /ws`` on the HTTP server (RFC 6455 §4);
* **each event is one JSON text message** ``{"id": N, "data": ..., "ts": T}``; ``?after=ID``
  first replays the events the client missed (the resume pattern of :mod:`labserver.events`:
  subscribe first, then read the log, then skip what was already sent). A replay that cannot
  cover the gap says so with ``{"gap": {"after": ID, "oldest": N}}`` before the events;
* **two-way**: a client text ``{"echo": X}`` is answered ``{"echo": X}`` (round trips); any
  other text is counted (``messages_in``) and logged, truncated, like the chapter's
  ``console.log(message.toString())``. A text that *starts like JSON* (``{`` or ``[``) must be
  JSON; ``?every=S`` is the chapter's ``setInterval``: a ``{"status": text, "ts": T}`` message
  (no ``id``: not an event) every ``S`` seconds, its task cancelled when the socket closes;
* **close codes from RFC 6455 §7.4.1** instead of silence: 1003 binary data, 1007 text that
  must be JSON and is not (aiohttp sends 1007 for invalid UTF-8 itself), 1009 a message over
  ``max_message_bytes``, 1008 "send queue full" for a client that stopped reading, 1002 an
  unmasked client frame (§5.1; aiohttp alone accepts it, :class:`MaskedFramesOnly` refuses it),
  1001 when ``POST /drop`` or shutdown closes the socket;
* **protocol-level ping/pong** every ``heartbeat_s`` (aiohttp's ``heartbeat``): a client that
  does not answer within half of it is cut off;
* **cross-site WebSocket hijacking refused**: a browser always sends ``Origin``; a foreign one
  gets a 403 JSON answer *before* the upgrade (:func:`origin_allowed`), unless listed in
  ``allowed_origins``. Clients that send no ``Origin`` (not browsers) are accepted.

``messages_out`` counts the events delivered (replays included); echoes, status and gap
messages are not events. Bytes are counted at the socket by :mod:`labserver.counters`,
handshake and frame headers included. What to look at first: :func:`websocket`, then
:func:`send_events`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any
from urllib.parse import urlsplit

from aiohttp import WSCloseCode, WSMsgType, hdrs, web
from aiohttp.http import WebSocketError

from .counters import TransportCounters, open_gauge
from .errors import bad_request, json_error, query_seconds
from .events import Event, EventLog, Subscription
from .fanout import SocketWriter
from .keys import CONNECTIONS, COUNTERS, LOG, OPTIONS
from .polling import parse_after
from .whoami import client_address, request_host
from .whoami import setup as setup_whoami

log = logging.getLogger("labserver.ws")

#: How long a close handshake may take: a client answers a Close frame in milliseconds; one
#: that does not within a second is not reading, and ``stop()`` must finish within about one.
CLOSE_TIMEOUT_S = 1.0
#: A slow client's Close frame waits behind what it has not read yet (at most aiohttp's
#: 64 KiB write buffer, so memory stays bounded). It gets this long to catch up and read the
#: 1008 "send queue full"; then its connection is aborted.
FLUSH_GRACE_S = 5.0
#: ``?every=S`` bounds: fast enough for a test, slow enough not to flood; the chapter uses 3.
EVERY_MIN_S = 0.05
EVERY_MAX_S = 3600.0
#: Client texts are logged truncated to this many characters (the log file is rotated too).
LOGGED_TEXT_CHARS = 200
#: The chapter's status text.
STATUS_TEXT = "A message from the server."


async def websocket(request: web.Request) -> web.StreamResponse:
    """``GET /ws``: the chapter's ``wss.on('connection', (ws, req) => ...)``."""
    app = request.app
    opts = app[OPTIONS]
    after = parse_after(request) if "after" in request.query else None
    every_s = parse_every_s(request)
    if not origin_allowed(request, opts.allowed_origins):
        origin = request.headers[hdrs.ORIGIN]
        return json_error(403, f"origin {origin} may not open /ws: not this server's origin "
                               "and not in allowed_origins")
    ws = web.WebSocketResponse(
        heartbeat=opts.heartbeat_s,  # protocol-level pings; no pong within heartbeat_s/2: cut
        max_msg_size=opts.max_message_bytes,  # over it: close 1009
        timeout=CLOSE_TIMEOUT_S,
    )
    if not ws.can_prepare(request):
        raise bad_request("GET /ws needs a WebSocket upgrade (Upgrade: websocket, "
                          "Connection: Upgrade, Sec-WebSocket-Key, Sec-WebSocket-Version: 13)")
    if request.protocol._message_tail:  # bytes after the request, before our 101
        raise bad_request("a client must wait for the handshake's answer before sending "
                          "frames (RFC 6455 section 4.1)")
    await ws.prepare(request)  # writes "HTTP/1.1 101 Switching Protocols"
    MaskedFramesOnly.install(request, ws)

    counters = app[COUNTERS]["ws"]
    address = client_address(request)
    transport = request.transport
    assert transport is not None

    async def drop() -> None:
        await close_socket(ws, transport, WSCloseCode.GOING_AWAY, "dropped by the server")

    log.info("ws client connected %s", address)
    with open_gauge(counters), app[LOG].subscribe() as sub, app[CONNECTIONS].track("ws", drop):
        receiver = asyncio.create_task(receive_messages(ws, transport, counters, address))
        sender = asyncio.create_task(send_events(ws, transport, app[LOG], sub, after, counters))
        overflow = asyncio.create_task(sub.overflowed.wait())
        tasks = [receiver, sender, overflow]
        if every_s is not None:
            tasks.append(asyncio.create_task(send_status(ws, every_s), name="ws-every"))
        try:
            await asyncio.wait((receiver, overflow), return_when=asyncio.FIRST_COMPLETED)
            if sub.overflowed.is_set() and not receiver.done():  # this client stopped reading
                receiver.cancel()
                await asyncio.gather(receiver, return_exceptions=True)
                await close_socket(ws, transport, WSCloseCode.POLICY_VIOLATION, "send queue full")
        finally:
            for task in tasks:  # the chapter's clearInterval(ws.interval), and the sender
                task.cancel()
            for result in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(result, Exception):
                    log.error("ws task failed for %s", address, exc_info=result)
    log.info("ws client disconnected %s (close code %s)", address, ws.close_code)
    return ws


async def receive_messages(
    ws: web.WebSocketResponse, transport: asyncio.Transport,
    counters: TransportCounters, address: str,
) -> None:
    """Read the client's messages until the socket closes (``ws.on('message', ...)``).

    aiohttp answers pings, takes part in the close handshake, and itself closes with 1009 (too
    big), 1007 (invalid UTF-8) or 1002 (protocol error); those arrive here as ``ERROR``.
    """
    async for msg in ws:  # ends on CLOSE, CLOSING, CLOSED
        if msg.type is WSMsgType.TEXT:
            counters.messages_in += 1
            if not await answer_text(ws, transport, msg.data, address):
                return
        elif msg.type is WSMsgType.BINARY:
            counters.messages_in += 1
            await close_socket(ws, transport, WSCloseCode.UNSUPPORTED_DATA,
                               "binary messages are not accepted: send JSON text")
            return
        elif msg.type is WSMsgType.ERROR:
            return


async def answer_text(
    ws: web.WebSocketResponse, transport: asyncio.Transport, text: str, address: str,
) -> bool:
    """Echo ``{"echo": X}``, log any other text; ``False`` when the socket was closed."""
    if text.lstrip()[:1] not in ("{", "["):
        log.info("ws text from %s: %s", address, text[:LOGGED_TEXT_CHARS])
        return True
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        await close_socket(ws, transport, WSCloseCode.INVALID_TEXT,
                           "text starting with { or [ must be valid JSON")
        return False
    if isinstance(value, dict) and "echo" in value:
        await ws.send_str(json.dumps({"echo": value["echo"]}, separators=(",", ":")))
    else:
        log.info("ws JSON from %s: %s", address, text[:LOGGED_TEXT_CHARS])
    return True


async def send_events(
    ws: web.WebSocketResponse, transport: asyncio.Transport, event_log: EventLog,
    sub: Subscription, after: int | None, counters: TransportCounters,
) -> None:
    """Replay what the client missed (``?after=``), then send each new event as it comes.

    ``sub`` was taken *before* the log is read here, so no event published in between is
    lost; events the replay already sent are then skipped by id. After the replay the log
    itself writes each new event to this socket as it is published (:class:`SocketWriter`):
    one frame per event, built once, the same bytes for every client. A client that
    negotiated permessage-deflate has a compressor of its own, so its events are compressed
    and sent here, one by one. A client that stops reading overflows ``sub`` (``queue_size``
    events); :func:`websocket` then closes it with 1008 "send queue full". The publisher and
    the other clients never wait for it.
    """
    sent_through = 0  # events with an id <= this were sent (or are before the client's cursor)
    try:
        if after is not None:
            page = event_log.read(after)
            if page.gap:
                gap = {"gap": {"after": after, "oldest": page.oldest_id}}
                await ws.send_str(json.dumps(gap, separators=(",", ":")))
            for event in page.events:
                await ws.send_str(event.json)
                counters.messages_out += 1
            sent_through = page.last_id
        if not ws.compress:
            writer = SocketWriter(transport, text_frame, event_log.queue_size, counters,
                                  closed=lambda: ws.closed)  # no data after a Close
            sub.forward(writer, sent_through)
            return
        while (event := await sub.get()) is not None:
            if event.id <= sent_through:
                continue
            await ws.send_str(event.json)
            counters.messages_out += 1
    except ConnectionResetError:  # aiohttp: "Cannot write to closing transport"
        return


def text_frame(event: Event) -> bytes:
    """The event's JSON as one WebSocket text frame (built once per event, ``Event.encoded``)."""
    return frame_text(event.json.encode())


def frame_text(payload: bytes) -> bytes:
    """RFC 6455 §5.2: ``payload`` as one final text frame, unmasked (server to client).

    Byte 0 is FIN + opcode 1 (text); then the payload length in 7 bits, or 126 and 16 bits,
    or 127 and 64 bits; then the payload.
    """
    n = len(payload)
    if n < 126:
        header = bytes((0x81, n))
    elif n < 1 << 16:
        header = bytes((0x81, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + n.to_bytes(8, "big")
    return header + payload


async def send_status(ws: web.WebSocketResponse, every_s: float) -> None:
    """``?every=S``: the chapter's ``setInterval(() => ws.send(...), 3000)``."""
    try:
        while True:
            await asyncio.sleep(every_s)
            if ws.closed:  # the chapter's `if (ws.readyState === ws.OPEN)`
                return
            status = {"status": STATUS_TEXT, "ts": time.time()}
            await ws.send_str(json.dumps(status, separators=(",", ":")))
    except ConnectionResetError:
        return


async def close_socket(
    ws: web.WebSocketResponse, transport: asyncio.Transport, code: int, reason: str,
) -> None:
    """Send a Close frame with ``code`` and ``reason``; never wait for the client for long.

    If the client does not complete the close handshake within :data:`CLOSE_TIMEOUT_S` (it
    stopped reading), aiohttp closes the transport, which still flushes the Close frame behind
    the client's unread backlog; :data:`FLUSH_GRACE_S` later the connection is aborted.
    """
    closing = asyncio.ensure_future(ws.close(code=code, message=reason.encode()))
    done, _ = await asyncio.wait((closing,), timeout=CLOSE_TIMEOUT_S)
    if not done:
        closing.cancel()  # aiohttp then closes the transport, which flushes what it holds
        asyncio.get_running_loop().call_later(FLUSH_GRACE_S, transport.abort)


def parse_every_s(request: web.Request) -> float | None:
    """``?every=S``: a status message every S seconds, EVERY_MIN_S … EVERY_MAX_S."""
    return query_seconds(request, "every", EVERY_MIN_S, EVERY_MAX_S)


# --- the origin check: what aiohttp leaves to us -----------------------------------------

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def origin_allowed(request: web.Request, allowed_origins: tuple[str, ...]) -> bool:
    """May this request open a WebSocket? (cross-site WebSocket hijacking, RFC 6455 §10.2)

    A browser sends ``Origin`` with every WebSocket handshake and a page cannot forge it; the
    cookies of the server's site go along whatever page opens the socket. So a page from
    another site must not be let in: its ``Origin`` must name this server (same host and port
    as the request's ``Host``) or be listed in ``allowed_origins``. The *scheme* is not
    compared: behind a TLS front end (Binder, JupyterHub) the browser's origin is
    ``https://…`` while this server sees plain http. A client that sends no ``Origin`` is not
    a browser (``websockets``, ``curl``): a page cannot make a browser omit it, so it is let in.
    """
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None:
        return True
    parsed = origin_parts(origin)
    if parsed is None:  # "null" (a sandboxed page, a file:// page) or garbage
        return False
    if parsed in {origin_parts(allowed) for allowed in allowed_origins}:
        return True
    scheme, origin_host, origin_port = parsed
    try:
        target = urlsplit("//" + (request_host(request) or ""))  # "host[:port]" as the client asked
        host_name, host_port = target.hostname, target.port
    except ValueError:
        return False
    if host_port is None:  # no port in Host: the default one of the page's scheme
        host_port = DEFAULT_PORTS[scheme]
    return host_name is not None and (origin_host, origin_port) == (host_name, host_port)


def origin_parts(origin: str) -> tuple[str, str, int] | None:
    """``"http://Example.org"`` → ``("http", "example.org", 80)``; ``None`` if not an origin."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.scheme, parts.hostname.lower(), port or DEFAULT_PORTS[parts.scheme]


# --- RFC 6455 §5.1: client frames must be masked ----------------------------------------


class MaskedFramesOnly:
    """Fails the connection (1002) on a client frame without the mask bit.

    RFC 6455 §5.1: "The server MUST close the connection upon receiving a frame that is not
    masked" — masking stops a hostile page from making a browser put attacker-chosen bytes on
    the wire, which could poison an intermediary's cache. aiohttp's frame reader unmasks when
    the bit is set and silently accepts a frame without it. This wrapper walks the frame
    headers (2–14 bytes each, RFC 6455 §5.2) of the bytes as they arrive, skips the payloads,
    and hands every byte on to aiohttp's reader until it meets an unmasked frame; then it
    reports aiohttp's own ``WebSocketError``, so the handler closes with 1002 as it would for
    any protocol error.

    It wraps a private attribute of aiohttp 3.14 (``RequestHandler._payload_parser``, the
    response's ``_reader``); ``pyproject.toml`` pins that version and tests/test_ws.py checks it.
    """

    def __init__(self, parser: Any, queue: Any) -> None:
        self._parser = parser
        self._queue = queue
        self._header = bytearray()
        self._payload_left = 0
        self._failed = False

    @classmethod
    def install(cls, request: web.Request, ws: web.WebSocketResponse) -> None:
        protocol = request.protocol
        protocol._payload_parser = cls(protocol._payload_parser, ws._reader)

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self._failed:
            return True, b""
        if not self._all_masked(data):
            self._failed = True
            self._queue.set_exception(WebSocketError(
                WSCloseCode.PROTOCOL_ERROR, "client frames must be masked (RFC 6455 §5.1)"))
            return True, b""
        return self._parser.feed_data(data)

    def feed_eof(self) -> None:
        self._parser.feed_eof()

    def _all_masked(self, data: bytes) -> bool:
        pos, end = 0, len(data)
        while pos < end:
            if self._payload_left:
                step = min(self._payload_left, end - pos)
                self._payload_left -= step
                pos += step
                continue
            self._header.append(data[pos])
            pos += 1
            header = self._header
            if len(header) < 2:
                continue
            if not header[1] & 0x80:  # the MASK bit
                return False
            length = header[1] & 0x7F
            extended = 2 if length == 126 else 8 if length == 127 else 0
            if len(header) < 2 + extended + 4:  # extended length, then the 4-byte masking key
                continue
            if extended:
                length = int.from_bytes(header[2 : 2 + extended], "big")
            self._payload_left = length
            header.clear()
        return True


def setup(app: web.Application) -> None:
    app.router.add_get("/ws", websocket)
    setup_whoami(app)  # 12.2 reads the client's address where it accepts the socket
