"""What a browser's poll costs before it carries anything: Chromium's request headers, measured.

HPBN's XHR chapter estimates about 800 bytes of request and response headers (cookies not
counted) for every polling request; the Python clients of the lessons send far fewer. The lesson
``06_compare`` measures its Python client and quotes the browser's figure,
:data:`labserver.production.CHROMIUM_POLL_REQUEST_BYTES`, which this test keeps true: a real
headless Chromium ``fetch()``es ``/poll`` from a page of the server, and the server
counts the request's bytes at its socket.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import aiohttp

import labserver
from labserver.production import CHROMIUM_POLL_REQUEST_BYTES

#: The page's fetch, without cookies (the measured figure is headers the browser always sends).
FETCH_POLL = """async () => {
    const resp = await fetch("poll?after=0", {credentials: "omit"});
    return [resp.status, await resp.json()];
}"""


def python_request_bytes(srv: labserver.Server) -> int:
    """The same request from aiohttp's client, counted the same way."""

    async def fetch() -> None:
        async with aiohttp.ClientSession() as session, session.get(
            srv.url + "/poll", params={"after": 0}
        ) as resp:
            await resp.read()

    before = srv.stats()
    with ThreadPoolExecutor(1) as thread:  # Playwright's sync API holds this thread's loop
        thread.submit(asyncio.run, fetch()).result(10)
    return srv.stats_since(before)["transports"]["poll"]["bytes_in"]


def test_chromium_poll_request_bytes(srv: labserver.Server, browser_page) -> None:
    browser_page.goto(srv.url + "/")  # a page of the server: the fetch is same-origin
    before = srv.stats()
    status, page = browser_page.evaluate(FETCH_POLL)
    used = srv.stats_since(before)["transports"]["poll"]
    assert status == 200 and page["events"] == [] and page["gap"] is False
    assert used["requests"] == 1  # one GET, no preflight, nothing else charged to /poll

    chromium = used["bytes_in"]  # a GET has no body: request line and headers only
    low, high = CHROMIUM_POLL_REQUEST_BYTES
    assert low <= chromium <= high, f"Chromium sent {chromium} bytes, outside {low}–{high}"

    python = python_request_bytes(srv)
    assert 100 <= python <= 250  # request line, Host, Accept, Accept-Encoding, User-Agent
    assert chromium > 2.5 * python
