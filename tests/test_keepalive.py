"""Kept-alive long polls served off aiohttp (labserver/_fast/keepalive.py), over real sockets.

Which side answered is visible on the wire: aiohttp sends a ``Server`` header, the connection's
own answers do not. Every test checks the same contract as tests/test_polling.py — JSON, counters,
bytes at the socket — on a connection that switches sides, and that whatever the fast path does
not serve reaches aiohttp intact.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import aiohttp
import conftest
import pytest

import labserver
from labserver._fast.keepalive import served_here
from labserver._fast.takeover import HeadLimits, parse_head


def parse_long_poll(head: bytes) -> tuple[int, float] | None:
    """What the light path makes of one head (without its blank line)."""
    parsed = parse_head(head + b"\r\n\r\n", HeadLimits())
    return served_here(parsed[0], "/long-poll") if parsed is not None and parsed[1] == 0 else None


class Http:
    """One keep-alive HTTP/1.1 connection by hand: requests out, responses in, bytes counted."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.sent = 0
        self.received = 0

    @classmethod
    async def open(cls, srv: labserver.Server) -> Http:
        return cls(*await asyncio.open_connection("127.0.0.1", srv.port))

    def send(self, data: bytes) -> None:
        self.sent += len(data)
        self.writer.write(data)

    def get(self, target: str, headers: str = "", version: str = "HTTP/1.1") -> None:
        self.send(f"GET {target} {version}\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode())

    async def response(self, timeout_s: float = 5) -> tuple[int, dict[str, str], bytes]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout_s)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in
                   (line.split(":", 1) for line in lines[1:] if line)}
        body = await asyncio.wait_for(
            self.reader.readexactly(int(headers["content-length"])), timeout_s)
        self.received += len(head) + len(body)
        return int(lines[0].split()[1]), headers, body

    async def poll(self, target: str) -> tuple[dict[str, object], bool]:
        """A request and its JSON answer, and whether aiohttp (not the fast path) answered."""
        self.get(target)
        status, headers, body = await self.response()
        assert status == 200, body
        return json.loads(body), "server" in headers

    def close(self) -> None:
        self.writer.close()


def long_poll_stats(srv: labserver.Server) -> dict[str, int]:
    return srv.stats()["transports"]["long_poll"]


async def test_next_long_polls_on_the_connection_skip_aiohttp(srv: labserver.Server) -> None:
    await srv.apublish("one")
    http = await Http.open(srv)
    first, by_aiohttp = await http.poll("/long-poll?after=0&timeout=5")
    assert not by_aiohttp  # taken over at once: the connection wrote the first answer too
    assert [e["id"] for e in first["events"]] == [1]  # type: ignore[index]
    held = asyncio.ensure_future(http.poll("/long-poll?after=1&timeout=5"))
    await asyncio.sleep(0.2)
    assert not held.done() and long_poll_stats(srv)["open"] == 1
    await srv.apublish("two")
    second, by_aiohttp = await asyncio.wait_for(held, 5)
    assert not by_aiohttp and second == {
        "events": second["events"], "last_id": 2, "gap": False}
    assert [e["id"] for e in second["events"]] == [2]  # type: ignore[index]
    http.close()


async def test_counters_and_socket_bytes_are_those_of_long_polling(srv: labserver.Server) -> None:
    before = srv.stats()
    http = await Http.open(srv)
    await http.poll("/long-poll?after=0&timeout=0")  # empty, at once
    held = asyncio.ensure_future(http.poll("/long-poll?after=0&timeout=5"))
    await asyncio.sleep(0.1)
    await srv.apublish("x")
    await held
    await http.poll("/long-poll?after=1&timeout=0.1")  # times out empty
    http.close()
    used = srv.stats_since(before)["transports"]["long_poll"]
    assert used["requests"] == 3 and used["messages_out"] == 1 and used["empty"] == 2
    assert used["bytes_in"] == http.sent and used["bytes_out"] == http.received
    assert used["open"] == 0


async def test_other_requests_go_back_to_aiohttp_on_the_same_connection(
        srv: labserver.Server) -> None:
    http = await Http.open(srv)
    assert not (await http.poll("/long-poll?after=0&timeout=0"))[1]
    page, by_aiohttp = await http.poll("/poll?after=0")  # another route: handed back
    assert by_aiohttp and page["last_id"] == 0
    body = b'{"data": "over the same connection"}'
    http.send(b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    assert json.loads((await http.response())[2]) == {"id": 1}
    page, by_aiohttp = await http.poll("/long-poll?after=0&timeout=5")
    assert not by_aiohttp and [e["id"] for e in page["events"]] == [1]  # type: ignore[index]
    http.close()


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("/long-poll?after=-1", "after must be a non-negative integer"),
        ("/long-poll?timeout=99", "timeout must be between 0 and 60 seconds"),
        ("/long-poll?timeout=nan", "timeout must be between 0 and 60 seconds"),
    ],
)
async def test_bad_parameters_after_a_takeover_get_aiohttps_400(
        srv: labserver.Server, target: str, reason: str) -> None:
    http = await Http.open(srv)
    assert not (await http.poll("/long-poll?after=0&timeout=0"))[1]
    http.get(target)
    status, headers, body = await http.response()
    assert status == 400 and "server" in headers
    assert json.loads(body) == {"error": reason}
    http.close()


async def test_pipelined_requests_are_answered_in_order(srv: labserver.Server) -> None:
    http = await Http.open(srv)
    assert not (await http.poll("/long-poll?after=0&timeout=0"))[1]
    http.get("/long-poll?after=0&timeout=5")  # held …
    http.get("/stats")  # … and behind it, a request for aiohttp
    http.get("/long-poll?after=0&timeout=0")
    await asyncio.sleep(0.2)
    await srv.apublish("released")
    answers = [await http.response() for _ in range(3)]
    assert [a[0] for a in answers] == [200, 200, 200]
    assert [e["id"] for e in json.loads(answers[0][2])["events"]] == [1]
    assert "transports" in json.loads(answers[1][2])
    assert json.loads(answers[2][2])["last_id"] == 1
    http.close()


@pytest.mark.parametrize(
    "head",
    [
        b"GET /long-poll?after=0 HTTP/1.1\r\nHost: x\r\nConnection: close",
        b"GET /long-poll?after=0 HTTP/1.0\r\nHost: x",
        b"GET /long-poll?after=0 HTTP/1.1\r\nHost: x\r\nContent-Length: 3",
        b"GET /long-poll?after=0 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked",
        b"GET /long-poll?after=0 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade",
        b"GET /long-poll?after=0 HTTP/1.1\r\nHost: x\r\nExpect: 100-continue",
        b"HEAD /long-poll?after=0 HTTP/1.1\r\nHost: x",
        b"GET /long-poll?after=0 HTTP/1.1",  # no Host: llhttp refuses HTTP/1.1 without one
        b"GET /long-poll?after=0 HTTP/1.1\r\nHost: x\r\nHost: y",
        b"GET /long-poll/?after=0 HTTP/1.1\r\nHost: x",
        b"POST /long-poll?after=0 HTTP/1.1\r\nHost: x",
        b"GET /long-poll?after=0 HTTP/1.1\r\nHost: x\r\n folded",
        b"GET /long-poll?after=0 HTTP/1.1\r\nBad Name: x",
    ],
)
async def test_the_fast_path_takes_only_the_plain_shape(head: bytes) -> None:
    assert parse_long_poll(head) is None


@pytest.mark.parametrize(
    ("head", "params"),
    [
        (b"GET /long-poll?after=%30 HTTP/1.1\r\nHost: x", (0, 25.0)),  # yarl decodes it
        (b"GET /long-poll?after=0&after=1 HTTP/1.1\r\nHost: x", (0, 25.0)),  # the first
        (b"GET /long-poll?after=3 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket", (3, 25.0)),
    ],
)
def test_targets_are_read_as_aiohttp_reads_them(head: bytes, params: tuple[int, float]) -> None:
    """What aiohttp's route serves, the light path serves the same: ``request.query`` is
    ``yarl.URL.query`` of the target, and an ``Upgrade`` without ``Connection: Upgrade`` is no
    upgrade (llhttp's reading)."""
    assert parse_long_poll(head) == params


def test_the_plain_shape_and_its_parameters() -> None:
    head = (b"GET /long-poll?after=12&timeout=0.5&_=1700000 HTTP/1.1\r\nHost: x\r\n"
            b"Connection: keep-alive\r\nAccept: */*\r\nContent-Length: 0")
    assert parse_long_poll(head) == (12, 0.5)
    assert parse_long_poll(b"GET /long-poll HTTP/1.1\r\nHost: x") == (0, 25.0)


async def test_an_oversized_head_goes_to_aiohttp_which_refuses_it(srv: labserver.Server) -> None:
    http = await Http.open(srv)
    assert not (await http.poll("/long-poll?after=0&timeout=0"))[1]
    http.get("/long-poll?after=0", headers="X-Big: " + "y" * 9000 + "\r\n")
    status, headers, body = await http.response()
    assert status in (400, 431) and "server" in headers
    http.close()
    event_id = await srv.apublish("still serving")  # and the server goes on
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{srv.url}/long-poll?after=0&timeout=5") as response:
            assert (await response.json())["last_id"] == event_id


async def test_a_client_that_leaves_while_held_is_released(srv: labserver.Server) -> None:
    http = await Http.open(srv)
    assert not (await http.poll("/long-poll?after=0&timeout=0"))[1]
    http.get("/long-poll?after=0&timeout=30")
    await asyncio.sleep(0.2)
    assert long_poll_stats(srv)["open"] == 1
    http.close()
    deadline = time.monotonic() + 5
    while long_poll_stats(srv)["open"]:
        assert time.monotonic() < deadline, "the held poll outlived its connection"
        await asyncio.sleep(0.05)
    await srv.apublish("nobody is waiting")  # waking nobody breaks nothing
    assert long_poll_stats(srv)["open"] == 0


async def test_many_kept_alive_clients_each_get_every_event_once(srv: labserver.Server) -> None:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> list[int]:
            ids: list[int] = []
            after = 0
            while len(ids) < 10:
                async with session.get(f"{srv.url}/long-poll",
                                       params={"after": after, "timeout": 10}) as response:
                    assert "Server" not in response.headers  # the fast path served it
                    page = await response.json()
                ids += [e["id"] for e in page["events"]]
                after = page["last_id"]
            return ids

        clients = [asyncio.create_task(client()) for _ in range(50)]
        for n in range(10):
            await asyncio.sleep(0.05)
            await srv.apublish(n)
        results = await asyncio.wait_for(asyncio.gather(*clients), 20)
    assert results == [list(range(1, 11))] * 50


async def test_stop_closes_held_kept_alive_polls(make_server) -> None:
    srv = make_server()
    http = await Http.open(srv)
    assert not (await http.poll("/long-poll?after=0&timeout=0"))[1]
    http.get("/long-poll?after=0&timeout=30")
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await asyncio.to_thread(srv.stop)
    assert await asyncio.wait_for(http.reader.read(), 5) == b""  # closed, not left hanging
    assert time.monotonic() - started < 5


async def test_idle_connections_are_closed_by_one_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process server (the real ``serve()``) with a short keep-alive period."""
    from labserver._fast import keepalive
    from labserver.app import create_app

    monkeypatch.setattr(keepalive, "KEEPALIVE_S", 0.2)
    app = create_app()
    async with conftest.serving(app) as port:
        idle = Http(*await asyncio.open_connection("127.0.0.1", port))
        held = Http(*await asyncio.open_connection("127.0.0.1", port))
        for http in (idle, held):
            assert not (await http.poll("/long-poll?after=0&timeout=0"))[1]
        held.get("/long-poll?after=0&timeout=1")  # held across several sweeps: kept
        assert await asyncio.wait_for(idle.reader.read(), 2) == b""  # closed when idle
        status, _, body = await held.response()
        assert status == 200 and json.loads(body)["events"] == []  # its timeout, not a sweep
        assert len(app[keepalive.OPEN]) == 1  # an answer is activity: not closed at once


#: A page's long-poll loop with a relative URL: each answer's ``Server`` header and event ids.
POLL_FROM_PAGE = """() => {
  window.polls = [];
  (async () => {
    let after = 0;
    while (window.polls.length < 3) {
      const r = await fetch(`long-poll?after=${after}&timeout=10`);
      const page = await r.json();
      window.polls.push({server: r.headers.get('server'), ids: page.events.map(e => e.id)});
      after = page.last_id;
    }
  })();
}"""


def browser_long_polls(srv: labserver.Server, page: Any, url: str) -> list[dict[str, Any]]:
    """Open ``url`` (the index page), run the page's poll loop, publish three events."""
    page.goto(url)
    page.evaluate(POLL_FROM_PAGE)
    ids = []
    for n in range(3):
        deadline = time.monotonic() + 10
        while long_poll_stats(srv)["open"] != 1:  # the page's poll is held
            assert time.monotonic() < deadline, "the page's long poll never arrived"
            time.sleep(0.02)
        ids.append(srv.publish({"to": "the browser", "n": n}))
        page.wait_for_function(f"window.polls.length === {n + 1}", timeout=10_000)
    polls = page.evaluate("window.polls")
    assert [i for poll in polls for i in poll["ids"]] == ids  # every event's id, once, in order
    return polls


def test_a_browser_long_polls_through_the_light_path(srv: labserver.Server,
                                                     browser_page: Any) -> None:
    polls = browser_long_polls(srv, browser_page, srv.url + "/")
    assert [poll["server"] for poll in polls] == [None] * 3  # Chromium's requests, parsed here


def test_a_browser_long_polls_through_the_hub_proxy(jupyter_proxy: Any,
                                                    browser_page: Any) -> None:
    with labserver.start() as srv:
        browser_long_polls(srv, browser_page, jupyter_proxy.url_for(srv.port))


async def test_thousands_of_pipelined_polls_are_answered_in_order(srv: labserver.Server) -> None:
    await srv.apublish("one")
    http = await Http.open(srv)
    assert not (await http.poll("/long-poll?after=0&timeout=0"))[1]
    count = 3000  # answered one after another in a loop, not by recursion
    http.send(b"GET /long-poll?after=0&timeout=5 HTTP/1.1\r\nHost: x\r\n\r\n" * count)
    answers = [await http.response() for _ in range(count)]
    assert all(status == 200 and json.loads(body)["last_id"] == 1
               for status, _, body in answers)
    http.close()


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads RSS from /proc")
async def test_bytes_sent_while_a_poll_is_held_are_bounded(srv: labserver.Server) -> None:
    http = await Http.open(srv)
    assert not (await http.poll("/long-poll?after=0&timeout=0"))[1]
    rss_before = rss_kib(srv.pid)
    http.get("/long-poll?after=0&timeout=30")
    deadline = time.monotonic() + 5
    while long_poll_stats(srv)["open"] != 1:  # held: the junk comes in later reads (in the same
        assert time.monotonic() < deadline  # read, aiohttp would answer only its 400, and so
        await asyncio.sleep(0.02)  # does the light path: tests/test_differential.py)
    junk = b"x" * 65536
    for _ in range(300):  # about 20 MB that is no request: the server stops reading it
        http.send(junk)
        try:
            await asyncio.wait_for(http.writer.drain(), 0.05)
        except TimeoutError:
            break  # the socket buffers are full: the server is not reading
    assert rss_kib(srv.pid) - rss_before < 8 * 1024  # nothing piled up in the server
    await srv.apublish("answers the held poll")
    # The held poll is answered; then the junk goes to aiohttp, which refuses it and closes the
    # connection (with a reset, since the client still has bytes on the way: what the client
    # reads depends on timing, so the server's counters tell).
    deadline = time.monotonic() + 5
    while long_poll_stats(srv)["messages_out"] != 1:
        assert time.monotonic() < deadline, "the held poll was not answered"
        await asyncio.sleep(0.02)
    http.close()
    async with aiohttp.ClientSession() as session:  # and the server goes on
        async with session.get(f"{srv.url}/long-poll?after=0&timeout=5") as response:
            assert (await response.json())["last_id"] == 1


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


# --- issue 14: the exact bytes of its findings 1, 2 and 5 (3, 4: tests/test_differential.py) ---

FIRST_POLL = b"GET /long-poll?after=0&timeout=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
SPLIT_BODY = b'{"data": "split"}'
NEXT_REQUESTS = {
    "publish": b"POST /publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n%s" % (len(SPLIT_BODY), SPLIT_BODY),
    "long poll": b"GET /long-poll?after=0&timeout=0&_=2 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
}


@pytest.mark.parametrize("name", NEXT_REQUESTS)
async def test_finding_5_a_request_split_at_any_offset_is_answered(
        srv: labserver.Server, name: str) -> None:
    """Issue 14, finding 5: when the first long poll and the start of the next request came in
    one write, aiohttp's parser had consumed those bytes and the takeover lost them (the next
    request was answered 400, a publish silently lost). Now they are handed over: two writes,
    split at every offset, and both requests are answered, the first by the light path."""
    data = FIRST_POLL + NEXT_REQUESTS[name]
    for offset in range(1, len(data)):
        http = await Http.open(srv)
        http.send(data[:offset])
        await http.writer.drain()
        await asyncio.sleep(0.005)  # two reads on the server's side
        http.send(data[offset:])
        first, second = await http.response(), await http.response()
        assert first[0] == 200 and "server" not in first[1], offset  # taken over
        assert second[0] == 200, (offset, second)
        if name == "publish":
            assert json.loads(second[2]) == {"id": offset}, offset  # published once, in order
        else:
            assert "server" not in second[1], offset  # served by the light path too
        http.close()
    stats = srv.stats()
    assert stats["events"]["published"] == (len(data) - 1 if name == "publish" else 0)
    assert long_poll_stats(srv)["requests"] == (len(data) - 1) * (1 if name == "publish" else 2)


async def test_finding_2_a_pooled_client_sends_head_and_get(srv: labserver.Server) -> None:
    """Issue 14, finding 2: ``HEAD /long-poll`` was answered with a JSON body, which a pooled
    ``aiohttp.ClientSession`` then read as the next status line (``400 Bad status line``)."""
    await srv.apublish("one")
    connector = aiohttp.TCPConnector(limit=1)  # one connection: every request reuses it
    async with aiohttp.ClientSession(connector=connector) as session:
        for method in ("GET", "HEAD", "GET", "HEAD", "HEAD", "GET"):
            async with session.request(method, f"{srv.url}/long-poll?after=0&timeout=0") as r:
                body = await r.read()
                assert r.status == 200 and r.headers["Content-Type"].startswith(
                    "application/json"), method
                assert (body == b"") == (method == "HEAD"), method
                if method == "GET":
                    assert json.loads(body)["last_id"] == 1
    assert long_poll_stats(srv)["requests"] == 6


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads RSS from /proc")
async def test_finding_1_pipelined_polls_are_answered_only_while_the_client_reads(
        srv: labserver.Server) -> None:
    """Issue 14, finding 1: 400 pipelined long polls in one 24.8 KB write, never read, with
    about 318 KB to answer each: every answer was queued at once (127 MB, +118 MB RSS). Now
    answering stops while the transport's buffer is over its high-water mark, and goes on as
    the client reads: all 400 arrive, in order."""
    for n in range(300):  # about 1 KB each: each answer is about 318 KB
        await srv.apublish({"n": n, "pad": "x" * 1000})
    http = await Http.open(srv)
    assert not (await http.poll("/long-poll?after=0&timeout=0"))[1]
    request = b"GET /long-poll?after=0&timeout=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    rss_before = rss_kib(srv.pid)
    http.send(request * 400)
    assert len(request * 400) == 24_800
    await asyncio.sleep(1.0)  # the client reads nothing meanwhile
    answered = long_poll_stats(srv)["requests"] - 1
    grown_kib = rss_kib(srv.pid) - rss_before
    # What the kernel's socket buffers take (a few MB on loopback), not 400 answers.
    assert answered < 100, answered
    assert grown_kib < 32 * 1024, grown_kib  # was +118 MB
    answers = [await http.response(timeout_s=20) for _ in range(400)]
    assert [json.loads(body)["last_id"] for _, _, body in answers] == [300] * 400
    assert {len(body) for _, _, body in answers} == {len(answers[0][2])} and len(
        answers[0][2]) > 300_000
    http.close()
