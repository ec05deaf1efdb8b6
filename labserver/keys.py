"""Typed keys for the state an app shares with its handlers (aiohttp's ``web.AppKey``).

This is the Python form of the chapter's ``app.set('io', io)`` / ``req.app.get('io')``: a
route reaches the event log, the counters or the Socket.IO server as
``request.app[LOG]``, ``request.app[COUNTERS]`` …, and a type checker knows what it gets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .app import Connections
    from .counters import Counters
    from .events import EventLog
    from .options import Options
    from .socketio import LabAsyncServer
    from .transports import Transports

OPTIONS: web.AppKey[Options] = web.AppKey("options")
LOG: web.AppKey[EventLog] = web.AppKey("log")
COUNTERS: web.AppKey[Counters] = web.AppKey("counters")
#: What each transport declared (:func:`labserver.transports.register`).
TRANSPORTS: web.AppKey[Transports] = web.AppKey("transports")
CONNECTIONS: web.AppKey[Connections] = web.AppKey("connections")
#: The Socket.IO server (``request.app[SIO].emit(...)``): the chapter's ``req.app.get('io')``.
SIO: web.AppKey[LabAsyncServer] = web.AppKey("sio")
#: Is the private tier on (:mod:`labserver._fast`)? ``create_app`` decides, once.
FAST: web.AppKey[bool] = web.AppKey("fast")


@dataclass
class Listening:
    """Where the app's server listens, once it does (:func:`labserver.app.serve` sets it): the
    chat's route-then-socket calls its own HTTP route there."""

    url: str | None = None


LISTENING: web.AppKey[Listening] = web.AppKey("listening")
