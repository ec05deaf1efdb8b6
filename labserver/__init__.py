"""labserver: one aiohttp server that pushes the same events over every real-time transport.

    import labserver
    srv = labserver.start()        # a background server on 127.0.0.1, a free port
    srv.publish({"price": 101})    # -> event id, delivered by every transport
    srv.stats()                    # counters: requests, events, bytes at the socket
    srv.stop()

Modules, one concern each. Transports: ``polling`` (short and long polling), ``sse``
(Server-Sent Events), ``ws`` (WebSocket) with ``wsframes`` (RFC 6455 by hand), ``socketio``
(Socket.IO), ``chat`` (rooms and shared sessions). Shared pieces: ``events`` (the event log and
its cursors — read its docstring first), ``fanout`` (one write per client), ``takeover``
(connections leave aiohttp after their first request: ``ws``, and ``keepalive`` for long
polls), ``counters`` (bytes at the socket), ``app`` (the factory), ``options``, ``errors``,
``keys``, ``whoami`` (the client's address and proxies), ``process`` (the handle), ``cluster``
(scale-out on Redis), ``nginx`` (a real nginx in front of the nodes), ``aiohttp_private``
(the only module that reads aiohttp's private parts, checked by a test), ``measure`` and
``clients`` (what the lessons measure with), ``production`` (08's drivers: idle streams, nginx's
logs, pages in Chromium) and ``screenshot`` (a demo page's picture, taken in the run).
"""

from .app import create_app
from .counters import stats_diff
from .events import Event, MemoryLog, Page
from .nginx import Nginx
from .options import Options
from .process import Server, start

__all__ = [
    "Event", "MemoryLog", "Nginx", "Options", "Page", "Server",
    "create_app", "start", "stats_diff",
]
