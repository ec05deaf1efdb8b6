"""Plumbing for the production lesson (``08_production``): what it measures with, not what
it teaches.

The lesson puts a real nginx (:mod:`labserver.nginx`) in front of the server and watches from
the client's side what the proxy does to each transport. The clients a learner could write
stay in the notebook's cells; this module holds what they need around them:

* :func:`idle_websocket` and :func:`idle_sse` open a connection, send nothing, and report how
  long it lived — what ``proxy_read_timeout`` cuts and what heartbeats keep;
* :data:`PROTOCOL_LOG` and :func:`logged_requests` add an nginx access log that records
  which protocol (``HTTP/1.1``, ``HTTP/2.0``) and which client connection each request came on,
  and the bytes of each request and response: how a lesson sees that a browser's WebSocket still
  upgrades over HTTP/1.1 beside HTTP/2, and what HPACK does to a repeated poll's headers;
* :data:`REPEATED_POLLS` the page-side loop (``fetch`` N times) that a lesson runs in Chromium;
* :func:`response_head_bytes` the size of a stream's HTTP head: what shares nginx's first
  buffer with the first events;
* :func:`upgrade_status` and :func:`socketio_transport` try a WebSocket handshake, and a
  default Socket.IO connection, through a proxy: what a missing upgrade line breaks;
* :func:`whoami` asks ``GET /whoami`` from a client bound to another loopback address;
* :func:`nginx_messages` the lines of nginx's error log without their timestamps and ids;
* :func:`visit` opens pages side by side in headless Chromium (Debian's, never a downloaded
  one) that accepts the run's self-signed certificate (``ignore_https_errors``), publishes, and
  reads back what each page recorded, with a screenshot for a rendered notebook;
* :func:`chromium_poll_request` one empty poll sent by Chromium, measured at the server's
  socket (``06_compare`` sets it beside HPBN's ~800 bytes; :data:`CHROMIUM_POLL_REQUEST_BYTES`).

Chromium is started by :mod:`labserver.browser`, as everywhere in labserver.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from .browser import chromium
from .counters import stats_diff
from .measure import StatsPublisher
from .nginx import Nginx
from .screenshot import WAIT_TIMEOUT_S, output_path

#: A host name Chromium resolves to 127.0.0.1 in :func:`visit`. Browsers treat ``127.0.0.1`` and
#: ``localhost`` as "potentially trustworthy" (W3C Secure Contexts §3.1), so a page over https may
#: open ``ws://127.0.0.1`` — not mixed content. A real site has a name: this one stands for it.
LAB_HOST = "labserver.test"

#: Extra ``http``-block lines for :class:`~labserver.nginx.Nginx` (``extra_http=``): a second
#: access log, relative to nginx's prefix, with the client connection's serial number, the
#: protocol of each request, and its sizes. A request is logged when it ends (a stream: when it
#: closes). ``$request_length`` is what the client sent for the request: over HTTP/1.1 its
#: request line and headers as text; over HTTP/2 the HEADERS frame's payload, the header block
#: as HPACK encoded it (RFC 7541), without the 9-byte frame header (nginx sets it from the
#: frame's length in ``ngx_http_v2_state_headers``). ``$bytes_sent`` is the answer, head and body.
PROTOCOL_LOG = (
    "log_format protocols '$connection $server_protocol $request_method $uri $status "
    "$request_length $bytes_sent';\n"
    "access_log protocols.log protocols;"
)

#: A page-side loop for :func:`visit`'s ``report``: ``fetch`` the same poll ``n`` times, one
#: after the other, each answer read whole. Format it with ``n`` and ``init`` (``fetch``'s second
#: argument as JavaScript, ``{}`` for none). What a page that polls sends, request after request.
REPEATED_POLLS = """(async () => {{
  for (let i = 0; i < {n}; i++) {{
    await (await fetch("poll?after=0", {init})).text();
  }}
  return {n};
}})()"""


@dataclass(frozen=True)
class LoggedRequest:
    """One line of :data:`PROTOCOL_LOG`: which client connection, which protocol, what, and
    the bytes the client sent for it (``request_length``) and nginx answered (``bytes_sent``)."""

    connection: int
    protocol: str
    method: str
    path: str
    status: int
    request_length: int = 0
    bytes_sent: int = 0


async def logged_requests(proxy: Nginx, settle_s: float = 0.3,
                          timeout_s: float = 3.0) -> list[LoggedRequest]:
    """The requests nginx logged with :data:`PROTOCOL_LOG`, once the log has not grown for
    ``settle_s`` (a stream is logged when it ends, a moment after its page closed; at most
    ``timeout_s``). Read before ``stop()``, which removes nginx's directory."""
    assert proxy.directory is not None, "read the log before proxy.stop()"
    path = proxy.directory / "protocols.log"
    deadline = time.monotonic() + timeout_s
    text = None
    while time.monotonic() < deadline:
        now = path.read_text() if path.exists() else ""
        if now == text:
            break
        text = now
        await asyncio.sleep(settle_s)
    logged = []
    for line in (text or "").splitlines():
        connection, protocol, method, uri, status, length, sent = line.split(" ", 6)
        logged.append(LoggedRequest(int(connection), protocol, method, uri, int(status),
                                    int(length), int(sent)))
    return logged


async def response_head_bytes(url: str, path: str = "/sse", timeout_s: float = 5.0) -> int:
    """The bytes of the HTTP head (status line and headers, up to the blank line) that
    ``url + path`` answers to an HTTP/1.0 request — the way nginx asks without
    ``proxy_http_version 1.1``. nginx reads that head into its first buffer, so it shares the
    buffer with the first events of a stream."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout_s)
        return len(head)
    finally:
        writer.close()


def nginx_messages(proxy: Nginx, contains: str = "") -> list[str]:
    """The messages of nginx's error log that contain ``contains``, without the timestamp,
    the pid and the connection number, nor the ports after them: what a lesson can print."""
    messages = []
    for line in proxy.error_log().splitlines():
        match = re.match(r"\S+ \S+ \[\w+\] \d+#\d+: (?:\*\d+ )?(.*?)(?:, client: .*)?$", line)
        if match and contains in match.group(1):
            messages.append(match.group(1))
    return messages


async def upgrade_status(base: str) -> int:
    """The status of a WebSocket handshake on ``base + /ws``: 101 when it upgrades."""
    async with aiohttp.ClientSession() as session:
        try:
            async with session.ws_connect(base.replace("http", "ws", 1) + "/ws"):
                return 101
        except aiohttp.WSServerHandshakeError as error:
            return error.status


async def socketio_transport(base: str) -> str:
    """The transport a default Socket.IO client ends on (polling first, then the upgrade)."""
    import socketio

    client = socketio.AsyncClient()
    await client.connect(base, wait_timeout=5)
    try:
        return client.transport()
    finally:
        await client.disconnect()


async def whoami(base: str, headers: dict[str, str] | None = None,
                 local_address: str = "127.0.0.2") -> dict[str, Any]:
    """``GET base + /whoami`` from a client whose socket is bound to ``local_address`` (on
    Linux all of 127.0.0.0/8 is this machine; macOS needs ``sudo ifconfig lo0 alias
    127.0.0.2``): the address and ``X-Forwarded-For`` the server saw."""
    connector = aiohttp.TCPConnector(local_addr=(local_address, 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(base + "/whoami", headers=headers) as response:
            return await response.json()


async def idle_websocket(url: str, hold_s: float) -> float:
    """Open ``url``'s ``/ws`` (``http`` → ``ws``), send nothing, answer the server's pings
    (aiohttp does), and return how long the socket lived, at most ``hold_s`` seconds."""
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url.replace("http", "ws", 1) + "/ws") as socket:
            try:
                async with asyncio.timeout(hold_s):
                    async for _ in socket:  # events would count as activity; none is published
                        pass
            except TimeoutError:
                return hold_s
    return time.monotonic() - started


async def idle_sse(url: str, hold_s: float) -> float:
    """Open ``url``'s ``/sse``, read whatever comes (heartbeats), and return how long the stream
    lived, at most ``hold_s`` seconds."""
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        async with session.get(url + "/sse") as response:
            try:
                async with asyncio.timeout(hold_s):
                    async for _ in response.content.iter_any():
                        pass
            except TimeoutError:
                return hold_s
            except aiohttp.ClientPayloadError:
                pass  # cut in the middle of a chunked body: that is the cut being measured
    return time.monotonic() - started


async def visit(
    urls: Sequence[str],
    *,
    report: str,
    after_load: Callable[[], Awaitable[str | None]] | None = None,
    ready: str | None = None,
    settle_s: float = 0.3,
    screenshots: Sequence[str | Path | None] = (),
    width: int = 900,
    height: int = 520,
) -> list[Any]:
    """Open ``urls`` side by side in one headless Chromium (a tab each), wait until the
    JavaScript expression ``ready`` (if given) is true in every page, then ``settle_s``, run
    ``after_load`` once and wait for the text it returns to appear in every page, wait
    ``settle_s`` again, then return the value of the JavaScript expression ``report`` in each
    page (and save a PNG of page *i* at ``screenshots[i]``, if given and not ``None``; that is
    the committed file only under ``LABSERVER_SCREENSHOTS=write``, else
    ``output_path(screenshots[i])``, where the notebook then reads it).
    ``ready`` is what keeps a loaded machine from publishing before a page's streams are open.

    The browser accepts any certificate (the run's self-signed one) and resolves
    :data:`LAB_HOST` to 127.0.0.1; everything else — mixed content, the connection limits — is
    Chromium's own behaviour. Raises :class:`~labserver.browser.BrowserMissing` (a
    ``RuntimeError``) where Chromium or Playwright is missing: a measurement cannot be replayed
    from a picture.
    """
    args = [f"--host-resolver-rules=MAP {LAB_HOST} 127.0.0.1"]
    async with chromium(args=args) as browser:
        context = await browser.new_context(viewport={"width": width, "height": height},
                                            ignore_https_errors=True)
        pages = [await context.new_page() for _ in urls]  # one context: one connection pool
        await asyncio.gather(*(page.goto(url, wait_until="load")
                               for page, url in zip(pages, urls, strict=True)))
        if ready:
            await asyncio.gather(*(page.wait_for_function(
                ready, timeout=WAIT_TIMEOUT_S * 1000) for page in pages))
        await asyncio.sleep(settle_s)
        text = await after_load() if after_load is not None else None
        if text:
            await asyncio.gather(*(page.wait_for_function(
                "t => document.body.innerText.includes(t)", arg=text,
                timeout=WAIT_TIMEOUT_S * 1000) for page in pages))
            await asyncio.sleep(settle_s)
        reports = [await page.evaluate(report) for page in pages]
        for page, shot in zip(pages, screenshots, strict=False):
            if shot is not None:  # the committed file only under make notebooks
                await page.screenshot(path=str(output_path(shot)))
    return reports


# --- a browser's poll, measured -------------------------------------------------------------

#: What one request of Chromium's ``fetch("poll?after=0", {credentials: "omit"})`` sends —
#: request line and headers, no body, no cookies — in bytes. ``tests/test_browser_headers.py``
#: measures it at the server's socket in Debian's headless Chromium and asserts it lies in this
#: range (measured: 499 bytes, Chromium 156 on 127.0.0.1 with a five-digit port: User-Agent,
#: three ``sec-ch-ua*``, three ``Sec-Fetch-*``, Referer, Accept-Encoding, Accept-Language,
#: Connection, Host, Accept). A site's cookies come on top. HPBN's estimate of ~800 bytes of
#: request and response headers per polling request (cookies not counted) is such a request
#: plus an answer's headers. A lesson quotes the range; the test keeps it true.
CHROMIUM_POLL_REQUEST_BYTES = (400, 700)

#: What Chromium's poll asks, from a page of the server, without cookies (see
#: :data:`CHROMIUM_POLL_REQUEST_BYTES` and :func:`chromium_poll_request`).
FETCH_POLL = """async () => {
    const resp = await fetch("poll?after=0", {credentials: "omit"});
    return [resp.status, (await resp.text()).length];   // the body is ASCII JSON
}"""


@dataclass(frozen=True)
class BrowserRequest:
    """One ``GET /poll`` sent by headless Chromium, as the server counted it at its socket."""

    request_bytes: int  # request line and headers (a GET has no body): the server's bytes_in
    response_bytes: int  # the answer, headers and body: the server's bytes_out
    body_bytes: int  # the answer's body, as the page received it
    header_names: tuple[str, ...]  # the request's header names, as Chromium sent them, sorted

    @property
    def response_header_bytes(self) -> int:
        return self.response_bytes - self.body_bytes


async def chromium_poll_request(srv: StatsPublisher) -> BrowserRequest:
    """Open the server's index page in headless Chromium and ``fetch()`` one empty poll.

    The same request a page that polls sends, measured in the run: the lesson compares it
    with HPBN's ~800 bytes instead of quoting a constant. Needs Debian's ``chromium`` and
    Playwright (:class:`~labserver.browser.BrowserMissing`, a ``RuntimeError``, without them;
    never a downloaded browser).
    """
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(srv.url + "/", wait_until="load")
        before = await srv.astats()
        async with page.expect_request(lambda r: "/poll?" in r.url) as request:
            status, body_bytes = await page.evaluate(FETCH_POLL)
        headers = await (await request.value).all_headers()
    used = stats_diff(before, await srv.astats())["transports"]["poll"]
    if status != 200 or used["requests"] != 1:
        raise RuntimeError(f"expected one answered poll, got {used['requests']} ({status})")
    return BrowserRequest(
        request_bytes=used["bytes_in"], response_bytes=used["bytes_out"],
        body_bytes=body_bytes,
        header_names=tuple(sorted(headers)),
    )
