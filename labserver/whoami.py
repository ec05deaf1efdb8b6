"""Who is the client? ``GET /whoami``, and why the chapter's ``X-Forwarded-For`` is not trusted.

The chapter's 12.2 reads the client's address as
``req.headers['x-forwarded-for'] || req.connection.remoteAddress``. The first half is a header
*the client writes*: any program can send ``X-Forwarded-For: 203.0.113.7`` and be believed.
The header means something only when a reverse proxy that we run sits in front of the server,
sets it, and is the only way in. So:

* by default the address is the socket's peer (``request.remote``), whatever the headers say;
* with ``trust_proxy=True`` (``--trust-proxy``) the server believes its one proxy: the
  **rightmost** ``X-Forwarded-For`` entry, the one that proxy appended. Entries to its left
  were written by the client and are kept only for display.

The same rule decides which ``Host`` a browser's ``Origin`` is compared with (see
:func:`labserver.ws.origin_allowed`): the request's own ``Host``, or ``X-Forwarded-Host`` only
behind a trusted proxy.

``GET /whoami`` answers ``{"address": A, "x_forwarded_for": H or null, "trusted_proxy": bool}``,
so a lesson can spoof the header and watch the server not believe it.
"""

from __future__ import annotations

import ipaddress

from aiohttp import hdrs, web

from .keys import OPTIONS


def client_address(request: web.Request) -> str:
    """The client address the server believes: the socket's, unless behind a trusted proxy."""
    peer = request.remote or "unknown"
    if not request.app[OPTIONS].trust_proxy:
        return peer
    header = request.headers.get(hdrs.X_FORWARDED_FOR, "")
    entries = [entry.strip() for entry in header.split(",") if entry.strip()]
    if not entries:
        return peer
    try:
        return str(ipaddress.ip_address(entries[-1]))  # the entry our proxy appended
    except ValueError:
        return peer  # not an address: the proxy did not write it


def request_host(request: web.Request) -> str | None:
    """The ``host[:port]`` the client asked for: ``Host``, or ``X-Forwarded-Host`` if trusted."""
    if request.app[OPTIONS].trust_proxy:
        forwarded = request.headers.get(hdrs.X_FORWARDED_HOST, "").split(",")[0].strip()
        if forwarded:
            return forwarded
    return request.headers.get(hdrs.HOST)


async def whoami(request: web.Request) -> web.Response:
    """``{"address": A, "x_forwarded_for": H or null, "trusted_proxy": bool}``."""
    return web.json_response(
        {
            "address": client_address(request),
            "x_forwarded_for": request.headers.get(hdrs.X_FORWARDED_FOR),
            "trusted_proxy": request.app[OPTIONS].trust_proxy,
        },
        headers={"Cache-Control": "no-store"},
    )


def setup(app: web.Application) -> None:
    app.router.add_get("/whoami", whoami)
