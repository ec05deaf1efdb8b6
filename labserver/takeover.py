"""Taking a TCP connection from aiohttp, and giving it back.

aiohttp serves every route, but it keeps a request object, a parser, a task and the
middlewares' frames alive for as long as a request lasts — for a WebSocket, hours. Node's
``ws`` and ``http`` modules keep little more than the socket. So a route may take the
connection once aiohttp has routed and checked its request:

* :func:`take_over` gives the connection to a plain ``asyncio.Protocol`` of ours
  (:class:`labserver.ws.WebSocketConnection` after a WebSocket handshake,
  :class:`labserver.keepalive.LongPollConnection` for a keep-alive long poll);
* :func:`hand_back` returns it to aiohttp with the bytes it has not read yet, when a request
  comes that only aiohttp should answer.

Both use public asyncio calls only: ``connect_accepted_socket`` on a copy of the socket's
file descriptor, ``set_protocol`` on a transport. What they must know of aiohttp — that it
holds no unread bytes (:func:`holds_more`), and which factory makes its connections — is
checked here, against the pinned aiohttp version.
"""

from __future__ import annotations

import asyncio
import os
import socket

from aiohttp import web

from .counters import CountingRequestHandler


def holds_more(request: web.Request) -> bool:
    """True when aiohttp has read bytes of the connection past this request: a pipelined
    request, or (after an upgrade request) data the client sent ahead of the answer."""
    protocol = request.protocol
    return bool(protocol._message_tail or protocol._messages)


def can_take_over(request: web.Request) -> bool:
    """True when the connection can leave aiohttp and come back (:func:`hand_back`): made by
    labserver's server, and aiohttp holds nothing of it beyond this request's head."""
    return (isinstance(request.protocol, CountingRequestHandler) and not request.can_read_body
            and not holds_more(request))


async def take_over(request: web.Request, protocol: asyncio.Protocol) -> None:
    """Hand the request's TCP connection from aiohttp to ``protocol``.

    asyncio gives a new transport to a *copy* of the socket's file descriptor
    (``connect_accepted_socket``); aiohttp's own transport is then closed, which closes its
    descriptor only — the connection stays open through the copy. aiohttp stops reading
    first, so no byte can go to the wrong side. ``protocol.connection_made`` writes the
    answer to the request.
    """
    old = request.transport
    assert old is not None
    old.pause_reading()
    sock = socket.socket(fileno=os.dup(old.get_extra_info("socket").fileno()))
    try:
        await asyncio.get_running_loop().connect_accepted_socket(lambda: protocol, sock)
    except BaseException:
        sock.close()
        raise
    finally:
        old.close()


def hand_back(factory: web.Server, transport: asyncio.Transport, unread: bytes) -> None:
    """Give ``transport`` to a new aiohttp connection made by ``factory``; it parses ``unread``
    first. The bytes written so far stay ahead of its answers: it is the same transport."""
    protocol = factory()
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    if unread:
        protocol.data_received(unread)
    transport.resume_reading()  # in case a slow reader had paused it
