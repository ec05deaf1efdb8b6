"""A small load balancer in front of labserver nodes: why Socket.IO needs sticky sessions.

A cluster sits behind a load balancer that spreads requests over its nodes. Stateless
requests (``/publish``, ``/poll``) may land anywhere: every node mirrors the same log. But a
Socket.IO connection that starts with HTTP long-polling is a *series* of requests that belong to
one session (``?sid=...``) held in one node's memory. Spread them round-robin and the second
request reaches a node that never heard of that sid: the connection fails. Two cures:

* **sticky sessions** — the balancer pins a client to one node with a cookie
  (``labserver_node``), as nginx's ``sticky cookie`` or a cloud balancer's affinity do;
* **WebSocket only** (``transports=['websocket']``) — one connection, one node, nothing to pin.

:func:`balancer_app` builds the balancer as an aiohttp app: plain HTTP is forwarded (streamed,
so SSE works through it), WebSocket upgrades are relayed frame by frame. ``policy`` is
``"round-robin"`` or ``"sticky"``. ``labserver.start_balancer(nodes, policy)`` runs it in a
child process like a node.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import aiohttp
from aiohttp import web

from .errors import json_error

STICKY_COOKIE = "labserver_node"
POLICIES = ("round-robin", "sticky")
#: Headers of one hop of a connection, not of the message: never forwarded (RFC 9110 §7.6.1).
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailer", "transfer-encoding", "upgrade", "host", "content-length"}

NODES: web.AppKey[list[str]] = web.AppKey("nodes")
POLICY: web.AppKey[str] = web.AppKey("policy")
SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("session")
NEXT: web.AppKey[Any] = web.AppKey("next")


def choose_node(request: web.Request) -> tuple[int, bool]:
    """Which node serves this request, and whether to pin the client to it with a cookie."""
    nodes = request.app[NODES]
    if request.app[POLICY] == "sticky":
        pinned = request.cookies.get(STICKY_COOKIE, "")
        if pinned.isdigit() and int(pinned) < len(nodes):
            return int(pinned), False
        return next(request.app[NEXT]) % len(nodes), True
    return next(request.app[NEXT]) % len(nodes), False


async def forward(request: web.Request) -> web.StreamResponse:
    index, pin = choose_node(request)
    target = request.app[NODES][index] + request.rel_url.path_qs
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    peer = request.remote or ""
    headers["X-Forwarded-For"] = ", ".join(
        filter(None, [request.headers.get("X-Forwarded-For"), peer]))
    headers["X-Forwarded-Host"] = request.host
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return await relay_websocket(request, target, headers, index, pin)
    session = request.app[SESSION]
    try:
        upstream = await session.request(request.method, target, headers=headers,
                                         data=await request.read(), allow_redirects=False)
    except aiohttp.ClientError as exc:
        return json_error(502, f"node {index} unreachable: {exc}")
    async with upstream:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for key, value in upstream.headers.items():
            if key.lower() not in HOP_BY_HOP:
                response.headers.add(key, value)
        response.headers["X-Labserver-Node"] = str(index)
        if pin:
            response.set_cookie(STICKY_COOKIE, str(index), httponly=True, samesite="Lax")
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():  # streamed: SSE passes through
            await response.write(chunk)
        await response.write_eof()
        return response


async def relay_websocket(request: web.Request, target: str, headers: dict[str, str],
                          index: int, pin: bool) -> web.StreamResponse:
    drop = {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions"}
    headers = {k: v for k, v in headers.items() if k.lower() not in drop}
    try:
        upstream = await request.app[SESSION].ws_connect(target.replace("http", "ws", 1),
                                                         headers=headers, autoping=False)
    except aiohttp.ClientError as exc:
        return json_error(502, f"node {index} refused the WebSocket: {exc}")
    client = web.WebSocketResponse(autoping=False)
    client.headers["X-Labserver-Node"] = str(index)
    if pin:
        client.set_cookie(STICKY_COOKIE, str(index), httponly=True, samesite="Lax")
    await client.prepare(request)

    async def pump(source: Any, sink: Any) -> None:
        async for msg in source:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await sink.send_str(msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await sink.send_bytes(msg.data)
            elif msg.type == aiohttp.WSMsgType.PING:
                await sink.ping(msg.data)
            elif msg.type == aiohttp.WSMsgType.PONG:
                await sink.pong(msg.data)
        await sink.close(code=source.close_code or 1000)

    tasks = [asyncio.create_task(pump(client, upstream)),
             asyncio.create_task(pump(upstream, client))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await upstream.close()
        await client.close()
    return client


def balancer_app(nodes: list[str], policy: str = "round-robin") -> web.Application:
    """A load balancer over ``nodes`` (their base URLs) with ``policy``."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}")
    if not nodes:
        raise ValueError("a balancer needs at least one node")
    app = web.Application()
    app[NODES] = [url.rstrip("/") for url in nodes]
    app[POLICY] = policy
    app[NEXT] = itertools.count()

    async def client_session(app: web.Application) -> Any:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
        # No cookie jar: a node's cookies belong to the browser, not to the balancer.
        app[SESSION] = aiohttp.ClientSession(timeout=timeout, auto_decompress=False,
                                             cookie_jar=aiohttp.DummyCookieJar())
        yield
        await app[SESSION].close()

    app.cleanup_ctx.append(client_session)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app
