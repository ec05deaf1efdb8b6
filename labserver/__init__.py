"""labserver: one aiohttp server that pushes the same events over every real-time transport.

    import labserver
    srv = labserver.start()        # a background server on 127.0.0.1, a free port
    srv.publish({"price": 101})    # -> event id, delivered by every transport
    srv.stats()                    # counters: requests, events, bytes at the socket
    srv.stop()

Modules, one concern each. Transports: ``polling`` (short and long polling), ``sse``
(Server-Sent Events), ``ws`` (WebSocket) with ``wsprotocol`` (RFC 6455's states, sans I/O)
and ``wsframes`` (its frames by hand), ``socketio`` (Socket.IO), ``chat`` (rooms and shared
sessions). Shared pieces: ``events`` (the event log and its cursors — read its docstring
first), ``transports`` (what each transport declares of itself: routes, counters, streaming,
``/drop``), ``counters`` (requests, events, bytes at the socket), ``app`` (the factory),
``options``, ``errors``, ``params`` (query parameters and JSON bodies), ``keys``, ``whoami``
(the client's address, proxies and the origin check), ``process``
(the handle), ``cluster`` (scale-out on Redis), ``nginx`` (a real nginx in front of the
nodes), ``measure`` and ``clients`` (what the lessons measure with), ``production`` (08's
drivers: idle streams, nginx's logs, pages in Chromium), ``screenshot`` (a demo page's
picture, taken in the run), ``claims`` (a lesson's claim: predicted, measured, asserted),
``labdriver`` (the lessons opened in JupyterLab in Chromium), and the plumbing beneath them,
``browser`` (one Chromium launcher), ``children`` (free ports, waits, watchdogs) and
``tasks`` (background tasks and their cancelling). What
exists only to be fast — connections taken from aiohttp, kept-alive long polls, the direct
writes of SSE and Socket.IO — is the private tier ``_fast``, the only code that reads the
libraries' private parts, checked by its canary (``labserver._fast.problems()``); without it
(``fast=False``) every transport is served by the libraries' public APIs alone.
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
