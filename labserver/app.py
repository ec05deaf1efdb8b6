"""The app factory: one aiohttp ``Application``, every transport on one port (12.7.1).

:func:`create_app` builds the shared pieces — the options, the event log, the counters, the
registry of open connections — stores them under typed app keys (the chapter's
``app.set('io', io)``), and calls each transport module's ``setup``, which declares the
transport — its routes, its counters, whether it streams, whether ``/drop`` applies
(:mod:`labserver.transports`) — so that ``/stats``, ``/drop`` and the counters list none.
The routes that are no transport live here:

* ``POST /publish`` — the chapter's 12.7.4 pattern: an HTTP route does the work (logs the
  event), then every transport notifies its clients.
* ``GET /stats`` — the counters; ``POST /drop`` — close the open streams of a transport so a
  lesson can show a client reconnecting; ``GET /`` — the index of browser demos.

:func:`serve` runs an app with byte counting at the socket; the CLI and the child process of
``labserver.start()`` both use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any

from aiohttp import web

from . import _fast, chat, polling, socketio, sse, whoami, ws
from .counters import ConnectionFactory, Counters, counting_middleware
from .errors import bad_request, json_error, json_errors
from .events import LogUnavailable, MemoryLog
from .keys import CONNECTIONS, COUNTERS, FAST, LISTENING, LOG, OPTIONS, TRANSPORTS, Listening
from .options import Options
from .params import read_json_object
from .tasks import background
from .transports import Transports

log = logging.getLogger("labserver")

#: Seconds that stopping waits for handlers to finish once every stream was told to close.
SHUTDOWN_TIMEOUT_S = 0.5

Closer = Callable[[], Awaitable[None]]


class Connections:
    """The open streams and sockets of each transport, so that ``POST /drop`` can close them."""

    def __init__(self) -> None:
        self._open: dict[str, dict[int, Closer]] = {}
        self._next = 0

    def add(self, transport: str, close: Closer) -> int:
        """Register an open connection and how to close it; returns its key for :meth:`discard`."""
        self._next += 1
        self._open.setdefault(transport, {})[self._next] = close
        return self._next

    def discard(self, transport: str, key: int) -> None:
        self._open.get(transport, {}).pop(key, None)

    @contextmanager
    def track(self, transport: str, close: Closer) -> Iterator[None]:
        """``with app[CONNECTIONS].track("sse", close): ...`` for the life of a connection."""
        key = self.add(transport, close)
        try:
            yield
        finally:
            self.discard(transport, key)

    async def drop(self, transport: str) -> int:
        """Close every open connection of ``transport`` (or of all, with ``"all"``)."""
        names = list(self._open) if transport == "all" else [transport]
        closers = [c for name in names for c in list(self._open.get(name, {}).values())]
        await asyncio.gather(*(close() for close in closers), return_exceptions=True)
        return len(closers)


def create_app(**options: Any) -> web.Application:
    """The whole server as an aiohttp ``Application``; see ``Options`` for the options."""
    opts = options.pop("_options", None) or Options.from_kwargs(**options)
    app = web.Application(
        middlewares=[json_errors, counting_middleware],
        client_max_size=opts.max_message_bytes,
    )
    app[OPTIONS] = opts
    if opts.redis_url:
        from .cluster import RedisLog  # imported only by nodes of a cluster

        app[LOG] = RedisLog(opts.redis_url, opts.log_size, opts.queue_size)
        app.cleanup_ctx.append(follow_cluster)
    else:
        app[LOG] = MemoryLog(opts.log_size, opts.queue_size)
    app[COUNTERS] = Counters()
    app[TRANSPORTS] = Transports()
    app[CONNECTIONS] = Connections()
    app[LISTENING] = Listening()
    app[FAST] = fast_tier(opts.fast)

    app.router.add_get("/", index)
    app.router.add_post("/publish", publish)
    app.router.add_get("/stats", stats)
    app.router.add_post("/drop", drop)
    # Each transport registers itself (labserver.transports), one line each, in the order
    # /stats lists them: the chapter's, from polling to Socket.IO.
    polling.setup(app)
    sse.setup(app)
    ws.setup(app)
    socketio.setup(app)
    chat.setup(app)  # after socketio: /chat is a namespace of its server
    whoami.setup(app)  # 12.2 reads the client's address where it accepts the socket
    app.router.add_get(r"/{name:[A-Za-z0-9_-]+\.(?:html|js|css|svg)}", static_file)

    if opts.tick is not None:
        app.cleanup_ctx.append(ticker)
    app.on_shutdown.append(close_connections)
    return app


def fast_tier(wanted: bool) -> bool:
    """Is the private tier on? Asked for (``fast``, the default) and its canary finds every
    private part it relies on. Off, every transport is served by aiohttp's, python-socketio's
    and python-engineio's public APIs alone: slower, and the same on the wire."""
    if not wanted:
        log.info("labserver's fast tier is off (fast=False): every transport is served by "
                 "the libraries' public APIs")
        return False
    problems = _fast.problems()
    if problems:
        log.warning("labserver's fast tier is off: %s; every transport is served by the "
                    "libraries' public APIs", "; ".join(problems))
    return not problems


# --- routes that are no transport -------------------------------------------------------


def check_token(request: web.Request) -> web.Response | None:
    """``/publish`` and ``/drop`` need ``Authorization: Bearer <token>`` when a token is set."""
    token = request.app[OPTIONS].publish_token
    if token is None:
        return None
    given = request.headers.get("Authorization", "")
    if secrets.compare_digest(given.encode(), f"Bearer {token}".encode()):
        return None
    return json_error(
        401, "publish_token required: send Authorization: Bearer <token>",
        {"WWW-Authenticate": "Bearer"},
    )


async def publish(request: web.Request) -> web.Response:
    """``{"data": <any JSON>}`` → one event to every transport; answers ``{"id": N}``."""
    if (denied := check_token(request)) is not None:
        return denied
    body = await read_json_object(request)
    if set(body) != {"data"}:
        raise bad_request('body must be {"data": <any JSON>}')
    try:
        event = await request.app[LOG].publish(body["data"])
    except LogUnavailable as exc:
        return json_error(503, str(exc))
    return web.json_response({"id": event.id})


def stats_snapshot(app: web.Application) -> dict[str, Any]:
    event_log = app[LOG]
    snapshot: dict[str, Any] = {
        "events": {
            "published": event_log.published,
            "last_id": event_log.last_id,
            "log_size": len(event_log),
            "log_capacity": event_log.log_size,
        },
        "transports": app[COUNTERS].snapshot(),
    }
    cluster = event_log.cluster_stats()  # a node of a cluster says which, and Redis's state
    if cluster is not None:
        snapshot["cluster"] = cluster
    return snapshot


async def stats(request: web.Request) -> web.Response:
    return web.json_response(stats_snapshot(request.app), headers={"Cache-Control": "no-store"})


async def drop(request: web.Request) -> web.Response:
    """``{"transport": "sse" | "ws" | "socketio" | "all"}`` → ``{"dropped": n}``: the
    transports declared ``droppable``, or all of them."""
    if (denied := check_token(request)) is not None:
        return denied
    body = await read_json_object(request)
    transport = body.get("transport")
    droppable = request.app[TRANSPORTS].droppable  # as the transports declared themselves
    if set(body) != {"transport"} or transport not in droppable:
        raise bad_request(f"body must be {{\"transport\": one of {', '.join(droppable)}}}")
    dropped = await request.app[CONNECTIONS].drop(transport)
    return web.json_response({"dropped": dropped})


def read_static(name: str) -> bytes | None:
    path = resources.files("labserver").joinpath("static", name)
    return path.read_bytes() if path.is_file() else None


CONTENT_TYPES = {
    "html": "text/html",
    "js": "application/javascript",
    "css": "text/css",
    "svg": "image/svg+xml",
}


async def index(request: web.Request) -> web.Response:
    return await static_file(request, "index.html")


async def static_file(request: web.Request, name: str | None = None) -> web.Response:
    """The demo pages in ``labserver/static``; they use relative URLs only."""
    name = name or request.match_info["name"]
    body = read_static(name)
    if body is None:
        raise web.HTTPNotFound()
    kind = name.rsplit(".", 1)[-1]
    return web.Response(body=body, content_type=CONTENT_TYPES[kind], charset="utf-8")


# --- background work --------------------------------------------------------------------


async def ticker(app: web.Application) -> Any:
    """The chapter's ``setInterval(..., 3000)``: publish a status event every ``tick`` s."""

    async def run() -> None:
        tick_s = app[OPTIONS].tick
        assert tick_s is not None
        n = 0
        while True:
            await asyncio.sleep(tick_s)
            n += 1
            await app[LOG].publish({"text": "A message from the server.", "tick": n})

    async with background(run()):
        yield


async def follow_cluster(app: web.Application) -> Any:
    """A node of a cluster follows the shared log in Redis while it runs."""
    event_log = app[LOG]
    await event_log.start()
    yield
    await event_log.stop()


async def close_connections(app: web.Application) -> None:
    await app[CONNECTIONS].drop("all")


# --- running it -------------------------------------------------------------------------


async def serve(
    app: web.Application,
    stop: asyncio.Event,
    on_ready: Callable[[int], None] | None = None,
) -> None:
    """Serve ``app`` until ``stop`` is set; ``on_ready(port)`` once it accepts connections.

    aiohttp's low-level server makes each connection's protocol, as its documentation shows
    (``loop.create_server(runner.server, ...)``); a :class:`~labserver.counters.
    CountingConnection` stands in front of each, counting its bytes at the socket.
    """
    opts = app[OPTIONS]
    runner = web.AppRunner(
        app,
        handler_cancellation=True,  # a long poll whose client left stops waiting at once
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        access_log=None,
    )
    await runner.setup()  # the app's startup: its background tasks and client sessions
    assert runner.server is not None
    factory = ConnectionFactory(runner.server, keep_received=app[FAST])
    try:
        server = await asyncio.get_running_loop().create_server(factory, opts.host, opts.port,
                                                                reuse_address=True)
    except BaseException:  # a port in use: what startup began is cleaned up all the same
        await runner.cleanup()
        raise
    try:
        port = server.sockets[0].getsockname()[1]
        log.info("labserver listening on http://%s:%d", opts.host, port)
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(opts.host, opts.host)
        app[LISTENING].url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        if on_ready is not None:
            on_ready(port)
        await stop.wait()
    finally:
        server.close()  # no new connection; the runner closes the open ones
        await runner.cleanup()


@contextlib.asynccontextmanager
async def serving(app: web.Application, ready_timeout_s: float = 10.0) -> AsyncIterator[int]:
    """``async with serving(create_app()) as port:`` — :func:`serve` on this event loop until
    the block ends, then stopped (its connections closed).

    For code that needs the app's own state beside real sockets (tests, the Autobahn run,
    ``app[COUNTERS]``); the URL is ``app[LISTENING].url``. A lesson starts its server with
    ``labserver.start()`` instead: in a child process, so that its clients do not share the
    server's event loop and interpreter lock. Raises what :func:`serve` raised if the app never
    listened (a port in use), ``TimeoutError`` after ``ready_timeout_s``.
    """
    stop = asyncio.Event()
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    server = asyncio.create_task(serve(app, stop, ready.set_result))
    try:
        await asyncio.wait([ready, server], timeout=ready_timeout_s,
                           return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            if server.done():
                server.result()  # serve's own error
            raise TimeoutError(f"the app did not listen within {ready_timeout_s} s")
        yield ready.result()
    finally:
        stop.set()
        if not server.done():
            await asyncio.wait_for(server, SHUTDOWN_TIMEOUT_S + 5)
