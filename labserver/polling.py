"""Short polling and long polling: the first row of the chapter's 12.1 table.

*Short polling* (``GET /poll?after=ID``) answers at once with every event newer than the
client's cursor — often none. The client asks again after an interval, so an event waits on
average half an interval before anyone asks for it, and most answers are empty: "simple, but
wastes a lot of server resources".

*Long polling* (``GET /long-poll?after=ID&timeout=S``, RFC 6202 §2.1) holds the request until
an event newer than the cursor exists or ``S`` seconds pass, so an answer leaves as soon as
there is something to say: about one request per event, latency of a network round trip.

Both answer the same JSON, ``{"events": [...], "last_id": N, "gap": bool}``; the client
sends ``last_id`` back as its next ``after``. What to look at first: :func:`long_poll`, and
how little it differs from :func:`poll`.
"""

from __future__ import annotations

from aiohttp import web

from ._fast.keepalive import setup as setup_keepalive
from ._fast.keepalive import taking_over
from .counters import open_gauge
from .events import Page
from .keys import COUNTERS, FAST, LOG
from .params import parse_after, parse_timeout_s
from .transports import Transport, register

#: The names of their counters in ``/stats``.
POLL, LONG_POLL = "poll", "long_poll"


def page_response(request: web.Request, transport: str, page: Page) -> web.Response:
    counters = request.app[COUNTERS][transport]
    counters.messages_out += len(page.events)
    if not page.events:
        counters.empty += 1
    return web.Response(
        body=page.to_bytes(),  # built once per page: held long polls with one cursor share it
        content_type="application/json",
        charset="utf-8",
        headers={"Cache-Control": "no-store"},
    )


async def poll(request: web.Request) -> web.Response:
    """Short polling: answer at once with what is newer than ``after``."""
    after = parse_after(request)
    return page_response(request, POLL, request.app[LOG].read(after))


async def long_poll(request: web.Request) -> web.Response:
    """Long polling: hold the request until there is something newer than ``after``."""
    after = parse_after(request)
    timeout_s = parse_timeout_s(request)
    with open_gauge(request.app[COUNTERS][LONG_POLL]):  # a held request is an open one
        page = await request.app[LOG].wait(after, timeout_s)
    return page_response(request, LONG_POLL, page)


def setup(app: web.Application) -> None:
    register(app, Transport(name=POLL, routes=[web.get("/poll", poll)]))
    # With the fast tier, a kept-alive connection's next long polls are served off aiohttp.
    handler = taking_over(long_poll) if app[FAST] else long_poll
    register(app, Transport(name=LONG_POLL, routes=[web.get("/long-poll", handler)]))
    if app[FAST]:
        setup_keepalive(app)
