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
:func:`origin_allowed`, below, which /ws and Socket.IO apply; ``labserver.ws.origin_allowed``
is the same function): the request's own ``Host``, or ``X-Forwarded-Host`` only behind a
trusted proxy.

``GET /whoami`` answers ``{"address": A, "x_forwarded_for": H or null, "trusted_proxy": bool}``,
so a lesson can spoof the header and watch the server not believe it.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

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


# --- the origin check (/ws and Socket.IO): what aiohttp leaves to us ---------------------------

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def origin_allowed(request: web.Request, allowed_origins: tuple[str, ...]) -> bool:
    """May this request open a WebSocket? (cross-site WebSocket hijacking, RFC 6455 §10.2)

    A browser sends ``Origin`` with every WebSocket handshake and a page cannot forge it; the
    cookies of the server's site go along whatever page opens the socket. So a page from
    another site must not be let in: its ``Origin`` must name this server (same host and port
    as the request's ``Host``) or be listed in ``allowed_origins``. The *scheme* is not
    compared: behind a TLS front end (Binder, JupyterHub) the browser's origin is
    ``https://…`` while this server sees plain http. A client that sends no ``Origin`` is not
    a browser (``websockets``, ``curl``): a page cannot make a browser omit it, so it is let in.
    """
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None:
        return True
    parsed = origin_parts(origin)
    if parsed is None:  # "null" (a sandboxed page, a file:// page) or garbage
        return False
    if parsed in {origin_parts(allowed) for allowed in allowed_origins}:
        return True
    scheme, origin_host, origin_port = parsed
    try:
        target = urlsplit("//" + (request_host(request) or ""))  # "host[:port]" as the client asked
        host_name, host_port = target.hostname, target.port
    except ValueError:
        return False
    if host_port is None:  # no port in Host: the default one of the page's scheme
        host_port = DEFAULT_PORTS[scheme]
    return host_name is not None and (origin_host, origin_port) == (host_name, host_port)


def origin_parts(origin: str) -> tuple[str, str, int] | None:
    """``"http://Example.org"`` → ``("http", "example.org", 80)``; ``None`` if not an origin."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.scheme, parts.hostname.lower(), port or DEFAULT_PORTS[parts.scheme]


def setup(app: web.Application) -> None:
    app.router.add_get("/whoami", whoami)
