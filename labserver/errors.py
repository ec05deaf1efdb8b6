"""Errors a learner can read: every refused request is a 4xx with ``{"error": "<reason>"}``.

Handlers raise :func:`bad_request` (400) with a sentence; :func:`json_errors` turns every
other HTTP error aiohttp raises — 404 unknown route, 405 wrong method, 413 body over
``max_message_bytes`` — into the same JSON shape, keeping its status and headers (``Allow``).
"""

from __future__ import annotations

import json
import math
from typing import Any

from aiohttp import web

from .keys import OPTIONS


def json_error(status: int, reason: str, headers: Any = None) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps({"error": reason}),
        content_type="application/json",
        headers=headers,
    )


def bad_request(reason: str) -> web.HTTPBadRequest:
    """An exception to ``raise``: 400 with ``{"error": reason}``."""
    return web.HTTPBadRequest(text=json.dumps({"error": reason}), content_type="application/json")


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


_REASONS = {
    404: "no such route",
    405: "method not allowed",
    413: "request body too large",
}


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        reason = _REASONS.get(exc.status, exc.reason)
        if exc.status == 405:
            reason = f"method {request.method} not allowed; use {exc.headers.get('Allow', '')}"
        elif exc.status == 413:
            limit = request.app[OPTIONS].max_message_bytes
            reason = f"request body too large: at most {limit} bytes"
        kept = ("allow", "www-authenticate")
        headers = {k: v for k, v in exc.headers.items() if k.lower() in kept}
        return json_error(exc.status, reason, headers)
