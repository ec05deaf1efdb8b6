"""The Autobahn|Testsuite's peer: an echo route on labserver's own WebSocket.

Autobahn's fuzzing client checks a server by sending it frames and messages and expecting every
message back, unchanged. labserver's ``/ws`` answers only JSON ``{"echo": X}`` and refuses
binary, so this *test* app (never the served one) adds ``GET /echo``: the same opening
handshake (:func:`labserver.ws.upgrade`), the same asyncio shell
(:class:`labserver.ws.WebSocketConnection`) and the same RFC 6455 state machine
(:class:`labserver.wsprotocol.ServerProtocol`: frames, fragments and their bound, Ping/Pong,
the closing handshake, permessage-deflate, UTF-8) as ``/ws``; only the handler differs —
:class:`Echo` sends each message back.

``max_message_bytes`` is 16 MiB, the largest labserver allows, because Autobahn's case 9.1.6
sends a 16 MiB message.
"""

from __future__ import annotations

from aiohttp import web

import labserver
from labserver.keys import OPTIONS
from labserver.ws import WebSocketConnection, upgrade
from labserver.wsprotocol import Message

MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class Echo:
    """A handler that sends every message back, text or binary."""

    def on_open(self, connection: WebSocketConnection) -> None:
        pass

    def on_message(self, connection: WebSocketConnection, message: Message) -> None:
        connection.send(message)

    def on_close(self, connection: WebSocketConnection) -> None:
        pass


async def echo(request: web.Request) -> web.StreamResponse:
    """``GET /echo``: the handshake of ``/ws``, then an echo."""
    return await upgrade(request, Echo())


def make_app() -> web.Application:
    """labserver's app with the test route ``/echo`` added."""
    app = labserver.create_app(max_message_bytes=MAX_MESSAGE_BYTES)
    assert app[OPTIONS].max_message_bytes == MAX_MESSAGE_BYTES
    app.router.add_get("/echo", echo)
    return app
