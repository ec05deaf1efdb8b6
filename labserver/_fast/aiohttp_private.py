"""Every part of aiohttp that labserver uses and aiohttp does not promise to keep, in one place.

labserver takes connections from aiohttp and gives them back (:mod:`labserver._fast.takeover`);
that needs a few of aiohttp's private names. They are read here and nowhere else, so that an
aiohttp upgrade that renames one fails in one test (``tests/test_fast.py``, which runs
:func:`labserver._fast.problems` and so :func:`problems`) with a message that names the aiohttp
version, instead of failing somewhere in a connection:

* ``RequestHandler._messages`` and ``RequestHandler._message_tail``: requests aiohttp has parsed
  but not handled yet, and bytes it keeps after an upgrade request (:func:`holds_more`);
* ``aiohttp.http.HttpRequestParser`` with aiohttp's own constructor arguments, and
  ``web_protocol.MAX_MSG_QUEUE_SIZE`` (how many pipelined requests a connection's parser
  queues before it stops): the parser (llhttp, where aiohttp's C extension is built) that
  :mod:`labserver._fast.takeover` runs on the requests of a kept-alive connection, so they are
  parsed as aiohttp parses them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aiohttp import web_protocol
from aiohttp.http import HttpRequestParser
from aiohttp.web_protocol import RequestHandler

#: The aiohttp these names were read from (pyproject.toml pins it).
CHECKED_WITH = "3.14.5"

def holds_more(protocol: RequestHandler) -> bool:
    """True when aiohttp holds requests it parsed but has not handled yet, or bytes it read
    after an upgrade request (what the client sent ahead of the answer)."""
    return bool(protocol._message_tail or protocol._messages)


class _Unread:
    """What a body's ``StreamReader`` calls on its connection; a parser that only checks
    bytes reads no body out of it, so there is nothing to pause."""

    _reading_paused = False
    connected = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self, resume_parser: bool = True) -> None:
        pass


def new_parser(max_line_size: int, max_field_size: int, max_headers: int,
               as_connection: bool = False) -> Any:
    """A fresh request parser, the one aiohttp's connections use, with their limits. (A body's
    reader is made on the running loop: parse heads with a body inside one.) ``as_connection``:
    it also stops after as many queued requests as a connection's parser does."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    queue = {"max_msg_queue_size": web_protocol.MAX_MSG_QUEUE_SIZE} if as_connection else {}
    return HttpRequestParser(_Unread(), loop, 2**16, max_line_size=max_line_size,
                             max_field_size=max_field_size, max_headers=max_headers, **queue)


def problems() -> list[str]:
    """What of the above this aiohttp no longer has; empty when all is as read."""
    found: list[str] = []
    slots = {name for cls in RequestHandler.__mro__ for name in getattr(cls, "__slots__", ())}
    for name in ("_messages", "_message_tail", "max_line_size", "max_field_size",
                 "max_headers"):
        if name not in slots:
            found.append(f"RequestHandler has no {name}")
    if not isinstance(getattr(web_protocol, "MAX_MSG_QUEUE_SIZE", None), int):
        found.append("web_protocol has no MAX_MSG_QUEUE_SIZE")
    try:
        parser = new_parser(8190, 8190, 128, as_connection=True)
        messages, _, _ = parser.feed_data(b"GET /x?a=1 HTTP/1.1\r\nHost: h\r\n\r\n")
        message = messages[0][0]
        if (message.method, message.url.raw_path, message.url.query.get("a")) != (
                "GET", "/x", "1"):
            found.append("HttpRequestParser parsed a request differently")
    except (TypeError, ValueError, IndexError, AttributeError) as exc:
        found.append(f"HttpRequestParser cannot be used as before: {exc!r}")
    return [f"aiohttp {aiohttp.__version__} (labserver was checked with {CHECKED_WITH}): "
            f"{problem}" for problem in found]
