"""Socket.IO's direct write: the fan-out writes the shared ``news`` frame to idle WebSockets.

python-socketio's ``emit`` queues a packet per socket and python-engineio's writer task per
socket frames and sends it; for thousands of sockets that is thousands of tasks woken per
event. :class:`labserver.socketio.NewsFanOut` writes the shared frame straight to the socket
of every session whose WebSocket is idle (:func:`write_to_idle`), and leaves the rest to
python-socketio. That needs python-engineio's undocumented parts — its table of async
classes (``AsyncServer._async``), its WebSocket's ``_sock``, the session's bound
``_websocket_handler`` (``handler.__self__``) — and CPython's ``asyncio.Queue._getters``;
:func:`labserver._fast.problems` checks each.
"""

from __future__ import annotations

import asyncio
from typing import Any

from engineio.async_drivers import aiohttp as engineio_aiohttp


class FanOutWebSocket(engineio_aiohttp.WebSocket):
    """python-engineio's aiohttp WebSocket, which also tells its session where it writes.

    While the WebSocket of a session is open, ``session.lab_websocket`` is this object, so the
    fan-out can write the shared frame to its socket (:func:`idle_websocket`).
    """

    transport: Any = None

    async def __call__(self, environ: dict[str, Any]) -> Any:
        session = getattr(self.handler, "__self__", None)  # the bound _websocket_handler
        self.transport = environ["aiohttp.request"].transport  # counts bytes at the socket
        if session is not None:
            session.lab_websocket = self
        try:
            return await super().__call__(environ)
        finally:
            if session is not None:
                session.lab_websocket = None


def idle_websocket(session: Any) -> asyncio.Transport | None:
    """The socket of a session whose WebSocket carries it and has nothing waiting to be sent.

    python-engineio writes a session's packets from its queue in a writer task. A frame
    written straight to the socket keeps its place in line only when that queue is empty and
    the writer is waiting on it (nothing taken out and not yet written), the upgrade from
    polling is over, and the socket neither closes nor compresses (permessage-deflate frames
    are per client). Anything else takes python-socketio's own path.
    """
    websocket = getattr(session, "lab_websocket", None)
    if websocket is None or not session.upgraded or session.upgrading or session.closed:
        return None
    sock, transport = websocket._sock, websocket.transport
    if sock is None or sock.closed or sock.compress or transport.is_closing():
        return None
    queue = session.queue
    if not queue.empty() or not any(not getter.done() for getter in queue._getters):
        return None
    return transport


def install(sio: Any) -> None:
    """Make ``sio``'s Engine.IO server open its WebSockets as :class:`FanOutWebSocket`.

    python-engineio picks its WebSocket class from this table (a copy: the driver's own table
    stays as it is)."""
    sio.eio._async = {**sio.eio._async, "websocket": FanOutWebSocket}


def write_to_idle(sio: Any, recipients: list[tuple[str, str]], frame: bytes) -> list[str]:
    """Write ``frame`` to the socket of every recipient ``(sid, eio_sid)`` whose WebSocket is
    idle; the sids of the others, for python-socketio's own path."""
    queued = []
    sockets = sio.eio.sockets
    for sid, eio_sid in recipients:
        transport = idle_websocket(sockets.get(eio_sid))
        if transport is None:
            queued.append(sid)
        else:
            transport.write(frame)
    return queued


def unsent_bytes(session: Any) -> int:
    """What a session's WebSocket has not sent yet (0 without one): a directly written
    socket holds its backlog in its send buffer, not in python-engineio's queue."""
    websocket = getattr(session, "lab_websocket", None)
    return websocket.transport.get_write_buffer_size() if websocket is not None else 0
