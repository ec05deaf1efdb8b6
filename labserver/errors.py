"""Errors a learner can read: every refused request is a 4xx with ``{"error": "<reason>"}``.

Handlers raise :func:`bad_request` (400) with a sentence (the parameters and bodies it refuses
are read in :mod:`labserver.params`); :func:`json_errors` turns every
other HTTP error aiohttp raises — 404 unknown route, 405 wrong method, 413 body over
``max_message_bytes`` — into the same JSON shape, keeping its status and headers (``Allow``).
"""

from __future__ import annotations

import json
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
