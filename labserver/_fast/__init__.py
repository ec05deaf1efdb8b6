"""The private tier: what exists only to be fast, and every undocumented part it relies on.

labserver's lesson modules (``polling``, ``sse``, ``ws``, ``socketio``) say what each
transport does; the code that makes them as fast as Node's stack lives here, behind one call
each, so that a lesson module reads as the lesson (h11 and websockets keep their
implementation modules apart the same way):

* :mod:`.takeover` — take a TCP connection from aiohttp after a request, give it back;
* :mod:`.keepalive` — kept-alive long polls served off aiohttp (``polling`` wraps its route);
* :mod:`.fanout` — per-client work a write: SSE's writer behind ``StreamResponse``, and the
  one slow-client rule (:func:`.fanout.too_slow`) every push transport applies;
* :mod:`.socketio` — the Socket.IO fan-out's direct write to idle WebSockets;
* :mod:`.aiohttp_private` — the private names of aiohttp, read there and nowhere else.

Nothing outside this package reads a private attribute of aiohttp, python-engineio,
python-socketio or CPython (``tests/test_fast.py`` checks the source). :func:`problems` is the
canary: it checks every undocumented part the tier relies on, in the versions installed, and
names the package and the version that broke it. What it checks:

* **aiohttp**: ``RequestHandler._messages`` / ``_message_tail``, the request parser and its
  queue size (:func:`.aiohttp_private.problems`); and that a chunked response's write is
  framed as one chunk and sent at once (SSE's writer writes the same bytes itself);
* **python-engineio**: ``AsyncServer._async`` (its table of async classes), the aiohttp
  driver's ``WebSocket._sock``, the session's ``_websocket_handler`` handed to it as a bound
  method (``handler.__self__``), and the session and socket attributes the fan-out reads;
* **CPython**: ``asyncio.Queue._getters`` (an idle writer task waits there);
* the **platform**: the tier was tested on Linux and macOS.

Turned off — ``fast=False``, ``--no-fast``, ``LABSERVER_FAST=0``, or by the canary, which
``create_app`` runs once and whose findings it logs once — every transport is served by the
libraries' public APIs alone: aiohttp answers every long poll, SSE writes through
``StreamResponse``, ``/ws`` is aiohttp's ``WebSocketResponse`` (:func:`labserver.ws.
websocket_by_aiohttp`), Socket.IO emits through python-socketio only. Bytes are counted at the
socket either way (:class:`labserver.counters.CountingConnection`, public APIs only).

(Once in the tier, no longer: ``app.py`` swapped a live aiohttp ``Server``'s class, through the
runner's private ``_make_server`` hook, to count bytes; ``chat.py`` read aiohttp's
``request._transport_sockname``. The source check keeps them out.)

(Once in the tier, no longer: python-socketio's undocumented ``_handle_eio_*`` methods, which
Socket.IO's counting and ``POST /drop`` extended; :class:`labserver.socketio.LabAsyncServer`
now wraps the handlers python-socketio registers with Engine.IO's public ``on``.)
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import platform
import sys

#: The versions the tier was read against (pyproject.toml pins the packages).
CHECKED_WITH = {
    "aiohttp": "3.14.5",
    "python-engineio": "4.15.1",
    "python-socketio": "5.18.1",
    "CPython": "3.11",
}
#: Where the tier was tested (``sys.platform``).
PLATFORMS = ("linux", "darwin")


def installed(package: str) -> str:
    if package == "CPython":
        return platform.python_version()
    return importlib.metadata.version(package)


def named(package: str, problem: str) -> str:
    return (f"{package} {installed(package)} (labserver was checked with "
            f"{CHECKED_WITH[package]}): {problem}")


def source(obj: object) -> str:
    try:
        return inspect.getsource(obj)  # type: ignore[arg-type]
    except (OSError, TypeError):
        return ""


def aiohttp_problems() -> list[str]:
    from aiohttp import http_writer

    from . import aiohttp_private

    found = aiohttp_private.problems()  # already named with the version
    writer = http_writer.StreamWriter
    if ('f"{len(chunk):x}\\r\\n"' not in source(writer._write_chunked_payload)
            or "transport.write" not in source(writer._write)):
        found.append(named("aiohttp", "StreamWriter no longer writes a chunk as "
                                      "size CRLF data CRLF at once (SSE's writer does)"))
    return found


def engineio_problems() -> list[str]:
    found = []
    try:
        import engineio
        from engineio import async_socket
        from engineio.async_drivers import aiohttp as driver
    except ImportError as exc:
        return [named("python-engineio", f"cannot be imported as before: {exc}")]
    try:
        table = getattr(engineio.AsyncServer(async_mode="aiohttp"), "_async", None)
    except Exception as exc:  # a constructor that changed its mind
        table = None
        found.append(named("python-engineio", f"AsyncServer(async_mode='aiohttp'): {exc!r}"))
    if not isinstance(table, dict) or "websocket" not in table:
        found.append(named("python-engineio", "AsyncServer has no _async table with its "
                                              "'websocket' class"))
    if "self._sock = WebSocketResponse(" not in source(driver.WebSocket.__call__):
        found.append(named("python-engineio", "the aiohttp driver's WebSocket keeps no _sock"))
    session = source(async_socket.AsyncSocket)
    if "self._websocket_handler, self.server)" not in session:
        found.append(named("python-engineio", "a session no longer hands its bound "
                                              "_websocket_handler to the WebSocket class"))
    for name in ("self.upgraded", "self.upgrading", "self.closed", "self.queue"):
        if name not in session + source(async_socket.base_socket.BaseSocket):
            found.append(named("python-engineio", f"a session has no {name[5:]}"))
    return found  # (the socket's closed and compress are aiohttp's public WebSocketResponse's)


def cpython_problems() -> list[str]:
    getters = getattr(asyncio.Queue(), "_getters", None)
    if getters is None or not hasattr(getters, "__iter__"):
        return [named("CPython", "asyncio.Queue has no _getters")]
    return []


def platform_problems() -> list[str]:
    if sys.platform not in PLATFORMS:
        return [f"platform {sys.platform}: labserver's private tier was tested on "
                f"{' and '.join(PLATFORMS)} only"]
    return []


def problems() -> list[str]:
    """Every undocumented part the tier relies on that this installation no longer has, each
    named with the package and its version; empty when all is as read."""
    return (aiohttp_problems() + engineio_problems() + cpython_problems()
            + platform_problems())
