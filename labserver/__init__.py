"""labserver: one aiohttp server that pushes the same events over every real-time transport.

    import labserver
    srv = labserver.start()        # a background server on 127.0.0.1, a free port
    srv.publish({"price": 101})    # -> event id, delivered by every transport
    srv.stats()                    # counters: requests, events, bytes at the socket
    srv.stop()

Modules, one concern each: ``events`` (the log and its cursors — read its docstring first),
``polling``, ``counters``, ``app`` (the factory), ``process`` (the handle), ``options``.
"""

from .app import create_app
from .counters import stats_diff
from .events import Event, MemoryLog, Page
from .options import Options
from .process import Server, start, start_balancer

__all__ = [
    "Event", "MemoryLog", "Options", "Page", "Server",
    "create_app", "start", "start_balancer", "stats_diff",
]
