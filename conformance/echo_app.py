"""The Autobahn|Testsuite's peer: an echo route on labserver's own WebSocket connection.

Autobahn's fuzzing client checks a server by sending it frames and messages and expecting every
message back, unchanged. labserver's ``/ws`` answers only JSON ``{"echo": X}`` and refuses
binary, so this *test* app (never the served one) adds ``GET /echo``: the same handshake checks
as :func:`labserver.ws.websocket`, then the real :class:`labserver.ws.WebSocketConnection` —
its frame reader, message assembler, fragment bound, close handshake and permessage-deflate —
with only :meth:`EchoConnection.message_received` changed to send each message back.

``max_message_bytes`` is 16 MiB, the largest labserver allows, because Autobahn's case 9.1.6
sends a 16 MiB message.
"""

from __future__ import annotations

from aiohttp import hdrs, web

import labserver
from labserver import wsframes
from labserver.errors import json_error
from labserver.keys import OPTIONS
from labserver.takeover import take_over
from labserver.whoami import client_address
from labserver.ws import WebSocketConnection, is_upgrade
from labserver.wsframes import INVALID_TEXT, TEXT, Deflate, ProtocolFailure

MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class EchoConnection(WebSocketConnection):
    """A :class:`WebSocketConnection` that sends every message back, text or binary."""

    __slots__ = ()

    def message_received(self, opcode: int, compressed: bool, payload: bytes) -> None:
        if compressed:
            assert self.deflate is not None
            payload = self.deflate.decompress(payload, self.message.max_bytes)
        if opcode == TEXT:
            try:
                payload.decode()
            except UnicodeDecodeError:
                raise ProtocolFailure(INVALID_TEXT, "text messages must be UTF-8") from None
        if self.deflate is None:
            self.write(wsframes.frame(opcode, payload))
        else:
            self.write(wsframes.frame(opcode, self.deflate.compress(payload), rsv1=True))


async def echo(request: web.Request) -> web.StreamResponse:
    """``GET /echo``: the handshake of :func:`labserver.ws.websocket`, then an echo."""
    key = request.headers.get(hdrs.SEC_WEBSOCKET_KEY, "")
    if not is_upgrade(request) or not wsframes.valid_key(key):
        return json_error(400, "GET /echo needs a WebSocket upgrade")
    offers = ", ".join(request.headers.getall(hdrs.SEC_WEBSOCKET_EXTENSIONS, ()))
    deflate = wsframes.negotiate_deflate(offers)
    handshake = wsframes.handshake_response(key, deflate.response if deflate else None)
    await take_over(request, EchoConnection(request.app, client_address(request), handshake,
                                            None, None, Deflate(deflate) if deflate else None))
    return web.Response()  # never sent: aiohttp no longer has the socket


def make_app() -> web.Application:
    """labserver's app with the test route ``/echo`` added."""
    app = labserver.create_app(max_message_bytes=MAX_MESSAGE_BYTES)
    assert app[OPTIONS].max_message_bytes == MAX_MESSAGE_BYTES
    app.router.add_get("/echo", echo)
    return app
