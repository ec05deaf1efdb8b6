"""What a request carries, read once and checked: query parameters and JSON bodies.

Every transport reads its parameters here, so the same text means the same thing on every
route and is refused with the same sentence: ``after=²`` is refused by ``/poll``,
``/long-poll`` and ``/ws`` alike (``str.isdigit`` alone would take it, ``int`` would not),
``timeout=nan`` is no number of seconds anywhere. A refused value is a 400 with
``{"error": "<reason>"}`` (:func:`labserver.errors.bad_request`), never a stack trace.

The functions that take text (:func:`cursor`, :func:`seconds_between`) answer ``None``
instead of raising, so that the private tier, which parses a request without aiohttp
(:mod:`labserver._fast.keepalive`), decides exactly as the routes do.
"""

from __future__ import annotations

import json
import math
from typing import Any

from aiohttp import web

from .errors import bad_request
from .options import LONG_POLL_DEFAULT_S, LONG_POLL_MAX_S


def cursor(text: str) -> int | None:
    """An event id or cursor: ASCII digits, at most 18 (a 64-bit integer); ``None`` if not.
    (``str.isdigit`` alone also takes "²", which ``int`` refuses.)"""
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        return None
    return int(text)


def seconds_between(text: str, low_s: float, high_s: float) -> float | None:
    """A finite number of seconds in [low_s, high_s]; ``None`` if ``text`` is not one."""
    try:
        seconds = float(text)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and low_s <= seconds <= high_s else None


def query_seconds(request: web.Request, name: str, low_s: float, high_s: float,
                  default_s: float | None = None) -> float | None:
    """A query parameter that is a number of seconds in [low_s, high_s]; 400 otherwise."""
    text = request.query.get(name)
    if text is None:
        return default_s
    seconds = seconds_between(text, low_s, high_s)
    if seconds is not None:
        return seconds
    try:
        float(text)
    except ValueError:
        raise bad_request(f"{name} must be a number of seconds") from None
    raise bad_request(f"{name} must be between {low_s:g} and {high_s:g} seconds")


def parse_after(request: web.Request) -> int:
    """The client's cursor: ``after`` must be a non-negative integer (default 0)."""
    after = cursor(request.query.get("after", "0"))
    if after is None:
        raise bad_request("after must be a non-negative integer")
    return after


def parse_timeout_s(request: web.Request) -> float:
    """How long a long poll may be held: 0 … LONG_POLL_MAX_S seconds (default 25)."""
    timeout_s = query_seconds(request, "timeout", 0, LONG_POLL_MAX_S, LONG_POLL_DEFAULT_S)
    assert timeout_s is not None
    return timeout_s


async def read_json_object(request: web.Request, shape: str = "a JSON object") -> dict[str, Any]:
    """The request's body as a JSON object; 400 if it is not JSON, or not an object ("body
    must be <shape>"); 413 past ``max_message_bytes`` (aiohttp's ``client_max_size``)."""
    body = await request.read()
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):  # RecursionError: [[[…
        raise bad_request("body must be valid JSON") from None
    if not isinstance(value, dict):
        raise bad_request(f"body must be {shape}")
    return value
