"""Socket.IO on the same port: the chapter's 12.3, on python-socketio.

The chapter mounts Socket.IO on the Express server (``SocketIO(server, {path: '/socket.io'})``),
emits ``news`` every 3 seconds and listens for the client's ``reply``. Here python-socketio's
``AsyncServer`` (``async_mode="aiohttp"``) answers ``/socket.io/`` on the app that already
serves every other transport — one port for all (12.7.1) — and emits ``news`` with every
published event.

Socket.IO is two protocols stacked, and a lesson shows both on the wire:

* **Engine.IO** (protocol 4) is the transport. By default a client opens with HTTP
  long-polling (``GET /socket.io/?EIO=4&transport=polling`` → ``0{"sid":…}``, the *open*
  packet), then *upgrades* to a WebSocket on the same session (``2probe``/``3probe``, then
  ``5``). That is the fallback of 12.3: where WebSocket is refused, polling carries on. Its
  packets: ``0`` open, ``1`` close, ``2``/``3`` ping/pong, ``4`` message, ``5`` upgrade,
  ``6`` noop.
* **Socket.IO** (protocol 5) rides inside Engine.IO messages: ``40`` connect to namespace
  ``/``, ``42["news",{…}]`` an event, ``421["reply",…]`` an event asking for ack 1,
  ``431[{"ok":true}]`` that ack.

What to look at first: :class:`NewsNamespace` (the chapter's ``io.on('connection')``:
``news`` out, ``reply`` in) and :class:`NewsFanOut` (the one task that reads the event log
and emits each event to every socket, the event's JSON serialised once — by the log — and
spliced into the packet, see :class:`EventPacket`).

What python-socketio leaves to us, and where this module does it:

* **Origins**: python-socketio compares ``Origin`` with ``scheme://Host`` and only when the
  header is present. We apply the ``/ws`` rule instead (host and port, not scheme; plus
  ``allowed_origins``): a foreign ``Origin`` gets 403 before Engine.IO sees the request
  (:func:`engineio_endpoint`), and an allowed one gets CORS headers for polling.
* **Counters**: the counting middleware counts every Engine.IO request (polling GETs and
  POSTs, the WebSocket upgrade) and the bytes at the socket; ``open`` is the number of
  Engine.IO connections (:class:`LabAsyncServer`), which ``POST /drop`` closes.
* **Bounds**: the largest client message is ``max_message_bytes`` (``max_http_buffer_size``);
  python-engineio's per-client queues are unbounded, so a client with ``queue_size``
  packets waiting is dropped; a client that sends what cannot be parsed is dropped.
* **Resume**: python-socketio has no connection-state recovery. A client that passes
  ``auth={"after": last_id}`` when it (re)connects gets the events it missed from the log,
  in order, before the new ones (and a ``gap`` event if the log no longer covers them).
* **The browser client**: python-socketio does not serve ``/socket.io/socket.io.js``; the
  official client is vendored in ``labserver/static/socket.io/`` and served there.

Routes reach this server the way the chapter's ``req.app.get('io')`` does:
``request.app[SIO]`` (see :mod:`labserver.keys`).
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import socketio
from aiohttp import hdrs, web
from socketio.packet import Packet

from ._fast import socketio as fast_socketio
from ._fast.fanout import too_slow
from .counters import TransportCounters
from .errors import json_error
from .events import Event, EventLog
from .keys import CONNECTIONS, COUNTERS, FAST, LOG, OPTIONS, SIO
from .tasks import background
from .transports import Transport, register
from .whoami import origin_allowed
from .wsframes import TEXT, frame

log = logging.getLogger("labserver.socketio")

#: The name of its counters in ``/stats``, and of its connections for ``POST /drop``.
TRANSPORT = "socketio"
#: python-socketio and python-engineio log every packet at INFO; keep only their warnings.
protocol_log = logging.getLogger("labserver.socketio.protocol")
protocol_log.setLevel(logging.WARNING)

#: The Engine.IO endpoint, as in the chapter (``path: '/socket.io'``).
SOCKETIO_PATH = "socket.io"
#: The vendored official client (see ``labserver/static/socket.io/README``).
CLIENT_SCRIPT = "socket.io.min.js"


# --- one serialisation per event ----------------------------------------------------------


class _SpliceEventJSON:
    """A ``json`` for packets: an :class:`Event` argument is written as its ready-made JSON.

    ``emit("news", event)`` builds the packet ``42["news",<event.json>]`` without serialising
    the event again; everything else goes through the standard ``json`` module.
    """

    @staticmethod
    def dumps(obj: Any, **kwargs: Any) -> str:
        if isinstance(obj, list) and any(isinstance(item, Event) for item in obj):
            parts = (i.json if isinstance(i, Event) else json.dumps(i, **kwargs) for i in obj)
            return "[" + ",".join(parts) + "]"
        return json.dumps(obj, **kwargs)

    loads = staticmethod(json.loads)


class EventPacket(Packet):
    """python-socketio's packet, with events spliced in as their JSON text (one serialisation)."""

    json = _SpliceEventJSON


def news_frame(event: Event) -> bytes:
    """The shared pre-encoded packet: ``42["news",<event JSON>]`` as one WebSocket text frame.

    ``4`` is an Engine.IO *message*, ``2`` a Socket.IO *event* of namespace ``/``: exactly the
    bytes python-socketio would frame for each socket, built here once per event
    (:meth:`Event.encoded`) and written as they are to every socket on a WebSocket.
    """
    return frame(TEXT, b'42["news",' + event.json.encode() + b"]")


# --- the server ---------------------------------------------------------------------------


class LabAsyncServer(socketio.AsyncServer):
    """python-socketio's ``AsyncServer`` plus what a teaching server must add.

    python-socketio handles Engine.IO's ``connect``, ``message`` and ``disconnect`` with
    handlers it registers on its Engine.IO server (``eio.on``, public API). This server wraps
    each one (:meth:`hook_engineio`): a new Engine.IO connection is counted (``open``) and
    registered with ``POST /drop``; its end is uncounted; a message that cannot be parsed as
    Socket.IO drops the client instead of raising inside the library (python-socketio would
    log it and keep the client).
    """

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.hook_engineio()
        if app[FAST]:
            fast_socketio.install(self)  # the fan-out may write to an idle WebSocket's socket
        self.tracked: dict[str, int] = {}  # session id → its key in app[CONNECTIONS]
        self.upgrades: dict[str, web.Request] = {}  # session id → its WebSocket upgrade

    def hook_engineio(self) -> None:
        """Wrap the three handlers python-socketio gave its Engine.IO server (``eio.handlers``,
        set with the public ``eio.on``), without naming python-socketio's own methods."""
        originals = {event: self.eio.handlers.get(event)
                     for event in ("connect", "message", "disconnect")}
        if not all(map(callable, originals.values())):
            version = importlib.metadata.version("python-socketio")
            raise RuntimeError(f"python-socketio {version}: its Engine.IO server has no "
                               "handlers for connect, message and disconnect (eio.handlers)")

        async def connect(eio_sid: str, environ: dict[str, Any], *args: Any) -> Any:
            result = await originals["connect"](eio_sid, environ, *args)
            self.engineio_connected(eio_sid)
            return result

        async def message(eio_sid: str, data: Any) -> None:
            try:
                await originals["message"](eio_sid, data)
            except Exception as exc:  # anything the client's bytes made the parser raise
                await self.unparsable(eio_sid, exc)

        async def disconnect(eio_sid: str, *args: Any) -> None:
            self.engineio_disconnecting(eio_sid, args[0] if args else None)
            try:
                await originals["disconnect"](eio_sid, *args)
            finally:
                self.engineio_disconnected(eio_sid)

        for event, handler in (("connect", connect), ("message", message),
                               ("disconnect", disconnect)):
            self.eio.on(event, handler)

    @property
    def counters(self) -> TransportCounters:
        return self.app[COUNTERS][TRANSPORT]

    def engineio_connected(self, eio_sid: str) -> None:
        async def close() -> None:
            await self.drop_connection(eio_sid, "dropped by POST /drop")

        self.tracked[eio_sid] = self.app[CONNECTIONS].add(TRANSPORT, close)
        self.counters.open += 1

    def engineio_disconnecting(self, eio_sid: str, reason: Any) -> None:
        session = self.eio.sockets.get(eio_sid)
        if session is not None and reason == self.reason.CLIENT_DISCONNECT:
            # The client sent ``1`` (close): answer its held poll now, not after the
            # heartbeat (python-engineio leaves it waiting, and the client's disconnect()
            # waits for it).
            session.queue.put_nowait(None)

    def engineio_disconnected(self, eio_sid: str) -> None:
        key = self.tracked.pop(eio_sid, None)
        if key is not None:
            self.app[CONNECTIONS].discard(TRANSPORT, key)
            self.counters.open -= 1

    async def unparsable(self, eio_sid: str, exc: Exception) -> None:
        await self.drop_connection(eio_sid, f"unparsable Socket.IO packet: {exc!r}")

    async def drop_connection(self, eio_sid: str, why: str, abort_tcp: bool = False) -> None:
        """Close a client's Engine.IO connection as a network failure would.

        No Engine.IO ``close`` packet is sent (a client told to close does not reconnect):
        the session ends at once, a held poll is answered empty and the WebSocket is closed,
        so the client's next request fails and it reconnects — and may resume with ``after``.
        ``abort_tcp`` also cuts the WebSocket's TCP connection, for a client that stopped
        reading: nothing more can be written to it, not even a Close frame.
        """
        session = self.eio.sockets.get(eio_sid)
        if session is None or session.closed:
            return
        log.info("Socket.IO client %s dropped: %s", eio_sid, why)
        request = self.websocket_request(eio_sid)  # before close() forgets the session
        await session.close(wait=False, abort=True, reason=self.reason.SERVER_DISCONNECT)
        session.queue.put_nowait(None)  # ends a held poll, or the WebSocket's writer
        if abort_tcp and request is not None and request.transport is not None:
            request.transport.abort()

    def websocket_request(self, eio_sid: str) -> web.Request | None:
        """The HTTP request whose connection carries this session's WebSocket, if any."""
        request = self.upgrades.get(eio_sid)
        if request is None:  # a WebSocket from the start: its own request opened the session
            environ = self.environ.get(eio_sid, {})
            request = environ.get("aiohttp.request")
        if request is None or request.query.get("transport") != "websocket":
            return None
        return request

    def eio_sid_of(self, request: web.Request) -> str | None:
        """The Engine.IO session a request belongs to (``?sid=``, or the one it opened)."""
        sid = request.query.get("sid")
        if sid is not None:
            return sid
        for eio_sid, environ in list(self.environ.items()):
            if environ.get("aiohttp.request") is request:
                return eio_sid
        return None


# --- namespace "/": the chapter's io.on('connection') -------------------------------------


class NewsNamespace(socketio.AsyncNamespace):
    """Namespace ``/``: every event goes out as ``news``; ``reply`` comes in.

    The chapter's server sets a timer per socket (``setInterval(() => socket.emit('news',
    …), 3000)``). Here events come from the event log, so one task emits each event to every
    socket (:class:`NewsFanOut`); a connection only has to say where it resumes.
    """

    def __init__(self, fan_out: NewsFanOut) -> None:
        super().__init__("/")
        self.fan_out = fan_out

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        after = None
        if isinstance(auth, dict) and "after" in auth:
            after = auth["after"]
            if isinstance(after, bool) or not isinstance(after, int) or after < 0:
                raise socketio.exceptions.ConnectionRefusedError(
                    "auth.after must be a non-negative integer (the last event id received)"
                )
        if after is not None:
            await self.fan_out.replay(sid, after)

    async def on_reply(self, sid: str, data: Any = None) -> dict[str, bool]:
        """The chapter's ``socket.on('reply', …)``: counted, and acked when the client asks.

        python-socketio sends the return value as the ack only when the packet carried an
        ack id (``socket.emit('reply', data, callback)`` in the browser).
        """
        self.fan_out.counters.messages_in += 1
        return {"ok": True}


class NewsFanOut:
    """The one task that emits every published event as ``news`` to every socket of ``/``.

    It reads a bounded :class:`~labserver.events.Subscription` of the event log and emits
    each event once with ``sio.emit`` — python-socketio builds the packet once and queues it
    for every socket. ``sent_upto`` is the id of the last event emitted to everyone; it is
    set in the same step in which python-socketio picks the recipients, so a socket that
    joined before that step receives it, and one that joined after does not and is replayed
    it (:meth:`replay`) if it asks.
    """

    def __init__(self, sio: LabAsyncServer, event_log: EventLog, queue_size: int) -> None:
        self.sio = sio
        self.log = event_log
        self.queue_size = queue_size
        self.sent_upto = 0  # set from the log when run() starts
        self.last_frame_size = 64  # bytes of the last event's frame: the unit of a backlog
        self.replaying: set[str] = set()  # sockets that broadcasts skip until caught up

    @property
    def counters(self) -> TransportCounters:
        return self.sio.counters

    async def run(self) -> None:
        self.sent_upto = self.log.last_id
        while True:
            with self.log.subscribe() as sub:
                await self.catch_up()
                while (event := await sub.get()) is not None:
                    if event.id > self.sent_upto:
                        await self.broadcast(event)
            log.warning("Socket.IO fan-out fell %d events behind; catching up from the log",
                        self.queue_size)

    async def catch_up(self) -> None:
        """After (re)subscribing: emit what the log has beyond ``sent_upto``."""
        page = self.log.read(self.sent_upto)
        if page.gap and self.sent_upto > 0:
            await self.sio.emit("gap", {"after": self.sent_upto, "oldest": page.oldest_id},
                                namespace="/", ignore_queue=True)
        for event in page.events:
            if event.id > self.sent_upto:
                await self.broadcast(event)

    async def broadcast(self, event: Event) -> None:
        await self.drop_slow_clients()
        # One step, no await until python-socketio has picked the recipients inside emit():
        # sent_upto and the set of sockets that receive the event change together.
        recipients = [(sid, eio_sid) for sid, eio_sid in
                      self.sio.manager.get_participants("/", None) if sid not in self.replaying]
        self.sent_upto = event.id
        self.counters.messages_out += len(recipients)
        # Per-event work once: the packet is framed once; per-client work a write, for every
        # socket whose WebSocket is idle. The others (polling, upgrading, busy, compressed)
        # get it through python-socketio, in order behind what they already have queued.
        frame = event.encoded(news_frame)
        self.last_frame_size = len(frame)
        queued = (fast_socketio.write_to_idle(self.sio, recipients, frame)
                  if self.sio.app[FAST] else [sid for sid, _ in recipients])
        if queued:
            # ignore_queue: with a message queue (scale-out on Redis) every node's event log
            # already receives every event, so each node emits to its own sockets only.
            await self.sio.emit("news", event, namespace="/", to=queued, ignore_queue=True)

    async def drop_slow_clients(self) -> None:
        """python-engineio queues without bound: a client ``queue_size`` packets behind goes.

        A socket written to directly holds its backlog in its send buffer instead: past
        ``queue_size`` events' worth of unsent bytes it goes too.
        """
        for _, eio_sid in self.sio.manager.get_participants("/", None):
            session = self.sio.eio.sockets.get(eio_sid)
            if session is None:
                continue
            unsent = fast_socketio.unsent_bytes(session)
            if (session.queue.qsize() >= self.queue_size
                    or too_slow(unsent, 0, self.queue_size, self.last_frame_size)):
                await self.sio.drop_connection(eio_sid, "send queue full", abort_tcp=True)

    async def replay(self, sid: str, after: int) -> None:
        """Send ``sid`` the events after ``after`` that it missed, in order, then let it join.

        While it is replayed, broadcasts skip it; the loop ends when everything up to
        ``sent_upto`` was sent, and it joins the broadcasts in that same step.
        """
        self.replaying.add(sid)
        try:
            page = self.log.read(after)
            if page.gap:  # events were dropped from the log, or ``after`` is from another run
                await self.sio.emit("gap", {"after": after, "oldest": page.oldest_id},
                                    to=sid, namespace="/", ignore_queue=True)
                after = page.oldest_id - 1  # then everything the log holds
            while True:
                batch = [e for e in self.log.read(after).events if e.id <= self.sent_upto]
                if not batch:
                    break
                for event in batch:
                    # ignore_queue: the socket is on this node (an Event is no JSON for Redis)
                    await self.sio.emit("news", event, to=sid, namespace="/", ignore_queue=True)
                    self.counters.messages_out += 1
                    after = event.id
        finally:
            self.replaying.discard(sid)


# --- HTTP: the Engine.IO endpoint and the vendored client ---------------------------------


def client_file(name: str) -> bytes:
    return resources.files("labserver").joinpath("static", "socket.io", name).read_bytes()


async def client_script(request: web.Request) -> web.Response:
    """``GET /socket.io/socket.io.js``: the official client, where the Node server serves it."""
    return web.Response(body=request.app[CLIENT_JS], content_type="application/javascript",
                        charset="utf-8")


async def engineio_endpoint(request: web.Request) -> web.StreamResponse:
    """Every Engine.IO request: the origin rule of ``/ws`` first, then python-socketio.

    A request whose parsing fails inside python-engineio (garbage on the WebSocket) ends
    that client's session instead of leaving it open until its ping times out.
    """
    sio = request.app[SIO]
    if not origin_allowed(request, request.app[OPTIONS].allowed_origins):
        origin = request.headers[hdrs.ORIGIN]
        return json_error(403, f"origin {origin} may not open Socket.IO: not this server's "
                               "origin and not in allowed_origins")
    upgrade_of = request.query.get("sid") if request.query.get("transport") == "websocket" else None
    if upgrade_of is not None:
        sio.upgrades[upgrade_of] = request
    try:
        return await sio.handle_request(request)
    except Exception as exc:
        eio_sid = sio.eio_sid_of(request)
        if eio_sid is None:
            raise
        await sio.drop_connection(eio_sid, f"unparsable Engine.IO packet: {exc!r}")
        raise
    finally:
        if upgrade_of is not None and sio.upgrades.get(upgrade_of) is request:
            del sio.upgrades[upgrade_of]


CLIENT_JS: web.AppKey[bytes] = web.AppKey("socketio_client_js")
FAN_OUT: web.AppKey[NewsFanOut] = web.AppKey("socketio_fan_out")


def create_server(app: web.Application) -> LabAsyncServer:
    opts = app[OPTIONS]

    def cors_allowed(origin: str, environ: dict[str, Any]) -> bool:
        return origin_allowed(environ["aiohttp.request"], opts.allowed_origins)

    return LabAsyncServer(
        app,
        async_mode="aiohttp",
        # A node of a cluster: rooms span nodes through python-socketio's Redis manager
        # (every emit goes through Redis; ``news`` is emitted with ignore_queue, see broadcast).
        client_manager=socketio.AsyncRedisManager(opts.redis_url) if opts.redis_url else None,
        serializer=EventPacket,
        transports=list(opts.socketio_transports),
        # Offer the upgrade only where WebSocket is allowed (python-engineio offers it anyway).
        allow_upgrades="websocket" in opts.socketio_transports,
        cors_allowed_origins=cors_allowed,  # never '*': only what the /ws rule allows
        max_http_buffer_size=opts.max_message_bytes,
        # Engine.IO's heartbeat is the server's ping (the handshake states it in whole seconds).
        ping_interval=opts.heartbeat_s,
        logger=protocol_log,
        engineio_logger=protocol_log,
    )


async def fan_out_ctx(app: web.Application) -> AsyncIterator[None]:
    sio = app[SIO]
    async with background(app[FAN_OUT].run(), name="socketio-fan-out"):
        yield
    await sio.shutdown()


def setup(app: web.Application) -> None:
    """Attach Socket.IO at ``/socket.io/`` and serve the client at ``/socket.io/socket.io.js``."""
    sio = create_server(app)
    app[SIO] = sio
    app[FAN_OUT] = NewsFanOut(sio, app[LOG], app[OPTIONS].queue_size)
    sio.register_namespace(NewsNamespace(app[FAN_OUT]))
    app[CLIENT_JS] = client_file(CLIENT_SCRIPT)
    app.router.add_get(f"/{SOCKETIO_PATH}/socket.io.js", client_script)  # no traffic of it
    # What ``sio.attach(app)`` does, with the origin rule in front.
    endpoint = f"/{SOCKETIO_PATH}/"
    register(app, Transport(
        name=TRANSPORT,
        routes=[web.get(endpoint, engineio_endpoint, allow_head=False),
                web.post(endpoint, engineio_endpoint),
                web.route(hdrs.METH_OPTIONS, endpoint, engineio_endpoint)],
        streaming=True,  # polling requests too: a session's connection is never a long poll's
        droppable=True,
    ))
    app.cleanup_ctx.append(fan_out_ctx)
