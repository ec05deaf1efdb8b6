"""The production lesson's claims (08_production), each against a real nginx and a real Chromium.

One set of servers and proxies per module (starting them is most of the cost); each test makes
its own clients. Skipped with a reason where nginx or Chromium is missing, failing under
``CI=true`` (``require`` in conftest).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import statistics
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

import labserver
from labserver import production
from labserver.nginx import Nginx

pytestmark = pytest.mark.timeout(60)

#: ``proxy_ignore_headers X-Accel-Buffering``: nginx behaves as for a server that never sent it.
IGNORE = "proxy_ignore_headers X-Accel-Buffering;"


class Stack:
    """The servers and the nginx in front of them that the tests share."""

    def __init__(self, nginx_path: str) -> None:
        self.started: list[Any] = []
        self.srv = self.server()
        self.beating = self.server(heartbeat_s=0.4)
        self.trusting = self.server(trust_proxy=True)
        url = self.srv.url
        self.proxy = self.nginx([url])
        self.shipped = self.nginx([url], websocket=False)
        self.held = self.nginx([url], websocket=False, extra_location=IGNORE)
        self.off = self.nginx([url], websocket=False, buffering=False, extra_location=IGNORE)
        self.chunked = self.nginx([url], extra_location=IGNORE)  # HTTP/1.1 upstream, buffering on
        self.quiet_front = self.nginx([url], read_timeout_s=1)
        self.beating_front = self.nginx([self.beating.url], read_timeout_s=1)
        self.front = self.nginx([self.trusting.url])
        self.replacing = self.nginx([self.trusting.url], forwarded_for=False,
                                    extra_location="proxy_set_header X-Forwarded-For $remote_addr;")
        self.tls = self.nginx([url], tls=True, http2=True)
        # its own log of protocols and connections, for the streams page alone
        self.h2 = self.nginx([url], tls=True, http2=True, extra_http=production.PROTOCOL_LOG)

    def server(self, **options: Any) -> labserver.Server:
        server = labserver.start(**options)
        self.started.append(server)
        return server

    def nginx(self, upstreams: list[str], **options: Any) -> Nginx:
        proxy = Nginx(upstreams, **options).start()
        self.started.append(proxy)
        return proxy

    def stop(self) -> None:
        for thing in reversed(self.started):
            thing.stop()

    async def publish_one(self) -> str:
        """Publish an event; the text every demo page shows for it."""
        return f"event {await self.srv.apublish({'note': 'from the test'})}"


@pytest.fixture(scope="module")
def stack(nginx_path: str) -> Iterator[Stack]:
    built = Stack(nginx_path)
    try:
        yield built
    finally:
        built.stop()


async def test_the_websocket_upgrade_needs_the_upgrade_lines(stack: Stack) -> None:
    assert await production.upgrade_status(stack.shipped.url) == 400  # a plain GET arrived
    assert await production.socketio_transport(stack.shipped.url) == "polling"  # the fallback
    assert await production.upgrade_status(stack.proxy.url) == 101
    assert await production.socketio_transport(stack.proxy.url) == "websocket"
    assert "proxy_http_version" not in stack.shipped.config


async def sse_arrivals(base: str, received: dict[int, tuple[float, float]]) -> None:
    async with aiohttp.ClientSession() as session, session.get(base + "/sse") as response:
        async for line in response.content:
            if line.startswith(b"data: "):
                event = json.loads(line[6:])
                received[event["id"]] = (event["ts"], time.time())


async def test_sse_is_held_by_nginx_s_buffer_unless_told_not_to(stack: Stack) -> None:
    routes = {"held": stack.held, "shipped": stack.shipped, "off": stack.off,
              "chunked": stack.chunked}
    got: dict[str, dict[int, tuple[float, float]]] = {name: {} for name in routes}
    readers = [asyncio.create_task(sse_arrivals(p.url, got[name])) for name, p in routes.items()]
    try:
        deadline = time.monotonic() + 10
        while (await stack.srv.astats())["transports"]["sse"]["open"] < len(routes):
            assert time.monotonic() < deadline, "the streams never reached the server"
            await asyncio.sleep(0.02)
        ids = []
        for n in range(30):
            ids.append(await stack.srv.apublish({"n": n, "pad": "x" * 100}))
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.4)
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    held = got["held"]
    arrivals = [arrived for _, arrived in held.values()]
    # A 4 KiB buffer holds about 20 of these events: some arrived, together; the rest did not.
    assert 0 < len(held) < len(ids), len(held)
    assert max(arrivals) - min(arrivals) < 0.05
    assert statistics.median((a - p) * 1000 for p, a in held.values()) > 100
    for name in ("shipped", "off", "chunked"):  # header honoured, buffering off, chunked upstream
        assert sorted(got[name]) == ids, name
        latencies = [(a - p) * 1000 for p, a in got[name].values()]
        assert statistics.median(latencies) < 20 and max(latencies) < 200, name


async def test_idle_streams_are_cut_at_the_read_timeout_and_kept_by_heartbeats(
        stack: Stack) -> None:
    hold_s = 2.0
    lived = await asyncio.gather(
        production.idle_websocket(stack.quiet_front.url, hold_s),
        production.idle_sse(stack.quiet_front.url, hold_s),
        production.idle_websocket(stack.beating_front.url, hold_s),
        production.idle_sse(stack.beating_front.url, hold_s),
    )
    assert all(0.9 <= seconds < 1.8 for seconds in lived[:2]), lived  # nginx's 1 s timeout
    assert all(seconds >= hold_s for seconds in lived[2:]), lived  # 0.4 s heartbeats
    messages = production.nginx_messages(stack.quiet_front, "timed out")
    assert any("while proxying upgraded connection" in m for m in messages), messages
    assert any("while reading upstream" in m for m in messages), messages


async def whoami(base: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(base + "/whoami", headers=headers) as response:
            return await response.json()


async def test_x_forwarded_for_through_a_real_proxy(stack: Stack,
                                                    loopback_clients: list[str]) -> None:
    forged = {"X-Forwarded-For": "203.0.113.7"}
    assert (await whoami(stack.srv.url))["address"] == "127.0.0.2"
    assert (await whoami(stack.proxy.url))["address"] == "127.0.0.1"  # nginx, not the client
    assert (await whoami(stack.front.url))["address"] == "127.0.0.2"  # trust_proxy
    assert await whoami(stack.front.url, forged) == {
        "address": "127.0.0.2", "x_forwarded_for": "203.0.113.7, 127.0.0.2",
        "trusted_proxy": True}
    assert (await whoami(stack.trusting.url, forged))["address"] == "203.0.113.7"  # no proxy
    replaced = await whoami(stack.replacing.url, forged)  # the lesson's exercise 3
    assert replaced["x_forwarded_for"] == "127.0.0.2" and replaced["address"] == "127.0.0.2"


async def test_https_and_wss_on_a_certificate_made_in_the_run(stack: Stack) -> None:
    assert stack.tls.https_url is not None and stack.tls.cert_path is not None
    trust_it = ssl.create_default_context(cafile=stack.tls.cert_path)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):  # not trusted by default
            await session.get(stack.tls.https_url + "/stats")
        async with session.get(stack.tls.https_url + "/stats", ssl=trust_it) as response:
            assert response.status == 200
            assert response.version == aiohttp.HttpVersion(1, 1)  # aiohttp has no HTTP/2
        wss = stack.tls.https_url.replace("https", "wss", 1) + "/ws"
        async with session.ws_connect(wss, ssl=trust_it) as ws:
            sent = await stack.srv.apublish({"over": "wss"})
            assert (await ws.receive_json(timeout=5))["id"] == sent


async def test_an_https_page_may_not_open_ws_but_opens_wss(stack: Stack,
                                                          chromium_path: str) -> None:
    named = {scheme: url.replace("127.0.0.1", production.LAB_HOST) + "/mixed.html"
             for scheme, url in (("https", stack.tls.https_url), ("http", stack.tls.url))}
    loopback = f"{stack.tls.https_url}/mixed.html"
    over_https, over_http, over_loopback = await production.visit(
        [named["https"], named["http"], loopback], report="window.outcome",
        after_load=stack.publish_one)
    assert over_https["ws"] == {"state": "blocked", "error": "SecurityError", "events": []}
    assert over_https["wss"]["state"] == "open" and len(over_https["wss"]["events"]) == 1
    assert over_http["ws"]["state"] == "open" and len(over_http["ws"]["events"]) == 1
    assert over_http["wss"]["state"] == "failed"  # no TLS on the plain port
    # 127.0.0.1 counts as trustworthy: ws:// is tried (and fails on the TLS port), not blocked
    assert over_loopback["ws"]["error"] is None and over_loopback["ws"]["state"] == "failed"


async def test_six_connections_per_origin_over_http1_every_stream_over_http2(
        stack: Stack, chromium_path: str) -> None:
    pages = [f"{base}/streams.html?n=8&ws=2" for base in (stack.h2.url, stack.h2.https_url)]
    h1, h2 = await production.visit(
        pages, report="({protocol: window.protocol, streams: window.streams})",
        after_load=stack.publish_one, settle_s=0.5)

    def counts(report: dict[str, Any], kind: str) -> tuple[int, int]:
        streams = [s for s in report["streams"] if s["kind"] == kind]
        opened = [s for s in streams if s["openedMs"] is not None]
        assert all(len(s["events"]) == 1 for s in opened)  # each open stream got the event
        return len(opened), len(streams)

    assert h1["protocol"] == "http/1.1" and h2["protocol"] == "h2"
    assert counts(h1, "sse") == (6, 8) and counts(h1, "ws") == (2, 2)
    assert counts(h2, "sse") == (8, 8) and counts(h2, "ws") == (2, 2)
    logged = [r for r in await production.logged_requests(stack.h2)
              if r.path in ("/sse", "/ws")]
    over_h2 = [r for r in logged if r.protocol == "HTTP/2.0"]
    assert len(over_h2) == 8 and {r.path for r in over_h2} == {"/sse"}
    assert len({r.connection for r in over_h2}) == 1  # every stream on one connection
    over_h1_sse = [r for r in logged if r.protocol == "HTTP/1.1" and r.path == "/sse"]
    assert len(over_h1_sse) == 6 and len({r.connection for r in over_h1_sse}) == 6
    ws = [r for r in logged if r.path == "/ws"]
    assert [(r.protocol, r.status) for r in ws] == [("HTTP/1.1", 101)] * 4  # RFC 8441: not in nginx
    assert len({r.connection for r in ws}) == 4


async def test_http2_sends_a_repeated_poll_s_headers_as_a_few_bytes(
        stack: Stack, chromium_path: str) -> None:
    """HPACK (RFC 7541) in Chromium through the real nginx: over HTTP/1.1 every poll sends its
    whole head again; over HTTP/2 a repeat is tens of bytes, its fields indexes into the
    connection's table; a header whose value changes each time costs its value again."""
    with Nginx([stack.srv.url], tls=True, http2=True,
               extra_http=production.PROTOCOL_LOG) as h2:
        loops = {"plain": production.REPEATED_POLLS.format(n=5, init="{}"),
                 "nonce": production.REPEATED_POLLS.format(
                     n=5, init="{headers: {'x-nonce': crypto.randomUUID()}}")}
        for loop in loops.values():
            for base in (h2.url, h2.https_url):
                assert await production.visit([f"{base}/stats"], report=loop) == [5]
        polls = [r for r in await production.logged_requests(h2) if r.path == "/poll"]
    assert len(polls) == 20
    by_connection: dict[int, list[production.LoggedRequest]] = {}
    for r in polls:
        by_connection.setdefault(r.connection, []).append(r)
    (h1_plain, h2_plain, h1_nonce, h2_nonce) = [
        [r.request_length for r in rows] for rows in by_connection.values()]
    assert [r.protocol for rows in by_connection.values() for r in rows[:1]] == [
        "HTTP/1.1", "HTTP/2.0", "HTTP/1.1", "HTTP/2.0"]
    assert len(set(h1_plain)) == 1 and 400 <= h1_plain[0] <= 700  # the whole head, every time
    assert h2_plain[0] > max(h2_plain[1:]) and max(h2_plain[1:]) <= 40  # indexed: tens of bytes
    # the nonce's 36 characters are sent again (Huffman-coded) on every request, HTTP/2 or not
    assert min(h2_nonce[1:]) >= max(h2_plain[1:]) + 20
    assert min(h1_nonce) >= h1_plain[0] + 36


async def test_the_head_of_a_stream_is_counted(stack: Stack) -> None:
    head = await production.response_head_bytes(stack.srv.url)
    assert 100 < head < 1000  # status line and headers, up to the blank line


def test_the_demo_pages_show_a_published_id(browser_page: Any) -> None:
    """Served directly (HTTP/1.1, 127.0.0.1): each page shows the event published from Python."""
    with labserver.start() as srv:
        page = browser_page
        page.goto(srv.url + "/streams.html?n=2&ws=1")
        page.wait_for_function("window.streams.every(s => s.openedMs !== null)", timeout=10_000)
        event_id = srv.publish({"to": "streams"})
        for row in ("sse-0", "sse-1", "ws-0"):
            page.locator(f"#{row}", has_text=f"event {event_id}").wait_for(timeout=10_000)
        page.goto(srv.url + "/mixed.html")
        page.wait_for_function("window.outcome.ws.state === 'open'", timeout=10_000)
        event_id = srv.publish({"to": "mixed"})
        page.locator("#ws .event", has_text=f"event {event_id}").wait_for(timeout=10_000)


def test_the_demo_pages_work_behind_the_hub_proxy(jupyter_proxy: Any, browser_page: Any) -> None:
    """Relative URLs only: the same pages through jupyter-server-proxy's /proxy/PORT/."""
    with labserver.start() as srv:
        page = browser_page
        page.goto(jupyter_proxy.url_for(srv.port, "streams.html?n=2&ws=1"))
        page.wait_for_function("window.streams.every(s => s.openedMs !== null)", timeout=15_000)
        event_id = srv.publish({"through": "the proxy"})
        for row in ("sse-0", "sse-1", "ws-0"):
            page.locator(f"#{row}", has_text=f"event {event_id}").wait_for(timeout=10_000)


async def test_chromium_poll_request_is_measured_at_the_socket(
        srv: labserver.Server, chromium_path: str) -> None:
    browser = await production.chromium_poll_request(srv)
    low, high = production.CHROMIUM_POLL_REQUEST_BYTES
    assert low <= browser.request_bytes <= high
    assert {"user-agent", "sec-fetch-mode", "referer", "host"} <= set(browser.header_names)
    assert browser.body_bytes > 0 and 100 <= browser.response_header_bytes <= 250
    assert srv.stats()["transports"]["poll"]["requests"] == 1  # the page itself polls nothing
