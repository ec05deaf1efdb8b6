"""Server-Sent Events over real sockets: the wire format, resume and gap, heartbeats,
disconnects, slow readers, ``POST /drop``, and a real Chromium ``EventSource``.

The stream is read with :class:`EventStreamParser`, a transcription of the HTML Living
Standard's "Interpreting an event stream" (§9.2.6), so that the tests check what a browser would
make of the bytes — not what our own server code thinks it wrote.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import re
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

import labserver
from labserver.process import STOP_TIMEOUT_S

# --- a client that reads the stream as the standard says ---------------------------------


@dataclass
class Dispatched:
    type: str
    data: str
    last_event_id: str


@dataclass
class EventStreamParser:
    """The standard's event-stream interpretation, fed with bytes as they arrive.

    Lines end with CRLF, LF or CR; a blank line dispatches the event; ``:`` starts a comment;
    ``field: value`` loses one leading space of its value; ``data`` lines are joined with LF;
    ``id`` is kept across events (the *last event ID buffer*) unless it contains NULL;
    ``retry`` counts only when all ASCII digits; a block without data dispatches nothing.
    """

    events: list[Dispatched] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retry_ms: int | None = None
    last_event_id: str = ""
    _data: str = ""
    _type: str = ""
    _line: str = ""
    _skip_lf: bool = False  # the previous chunk ended with CR: a LF next is the same line end
    _started: bool = False

    def __post_init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, chunk: bytes) -> None:
        text = self._decoder.decode(chunk)
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")  # one leading BOM is ignored
        if self._skip_lf and text:
            text = text.removeprefix("\n")
            self._skip_lf = False
        parts = re.split(r"\r\n|\r|\n", self._line + text)
        self._line = parts.pop()  # the unfinished line waits for more bytes
        if text.endswith("\r"):
            self._skip_lf = True
        for line in parts:
            self._process(line)

    def _process(self, line: str) -> None:
        if line == "":
            self._dispatch()
            return
        if line.startswith(":"):
            self.comments.append(line[1:].removeprefix(" "))
            return
        name, colon, value = line.partition(":")
        value = value.removeprefix(" ") if colon else ""
        if name == "event":
            self._type = value
        elif name == "data":
            self._data += value + "\n"
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self.retry_ms = int(value)

    def _dispatch(self) -> None:
        if self._data == "":
            self._type = ""
            return
        data = self._data.removesuffix("\n")
        self.events.append(Dispatched(self._type or "message", data, self.last_event_id))
        self._data = self._type = ""

    def news(self) -> list[dict[str, Any]]:
        """The ``news`` events, decoded: ``{"id", "data", "ts"}``."""
        return [json.loads(e.data) for e in self.events if e.type == "news"]

    def ids(self) -> list[int]:
        return [e["id"] for e in self.news()]


def parse(stream: bytes) -> EventStreamParser:
    parser = EventStreamParser()
    parser.feed(stream)
    return parser


class SseClient:
    """An aiohttp client reading ``/sse`` through :class:`EventStreamParser`."""

    def __init__(self, session: aiohttp.ClientSession, url: str,
                 last_event_id: int | None = None, query: str = "") -> None:
        self.session, self.url = session, url + "/sse" + query
        self.headers = {"Accept": "text/event-stream"}
        self.parser = EventStreamParser()
        if last_event_id is not None:  # as an EventSource reconnecting with the id it kept
            self.headers["Last-Event-ID"] = self.parser.last_event_id = str(last_event_id)
        self.raw = b""
        self.response: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> SseClient:
        self.response = await self.session.get(self.url, headers=self.headers)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.response is not None:
            self.response.close()

    async def read_until(self, done: Any, timeout_s: float = 10) -> EventStreamParser:
        """Read until ``done(parser)`` is true (or the stream ends); bounded by ``timeout_s``."""
        assert self.response is not None

        async def read() -> None:
            assert self.response is not None
            while not done(self.parser):
                chunk = await self.response.content.readany()
                if not chunk:
                    return
                self.raw += chunk
                self.parser.feed(chunk)

        await asyncio.wait_for(read(), timeout_s)
        return self.parser


async def wait_for_stat(srv: labserver.Server, key: str, value: int,
                        timeout_s: float = 5) -> float:
    """Wait until ``stats()["transports"]["sse"][key] == value``; returns the seconds it took."""
    started = time.monotonic()
    while (await srv.astats())["transports"]["sse"][key] != value:
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"sse {key} did not reach {value} within {timeout_s} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


# --- the parser itself, against the standard's examples ----------------------------------


def test_parser_follows_the_standard() -> None:
    # Multi-line data is joined with LF; a final LF is removed.
    p = parse(b"data: YHOO\ndata: +2\ndata: 10\n\n")
    assert p.events == [Dispatched("message", "YHOO\n+2\n10", "")]
    # A comment dispatches nothing; an id is kept until another id (even an empty one) replaces
    # it; only one space after the colon is removed; a block cut off by the end is discarded.
    p = parse(b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\n"
              b"data:  third event\n\ndata: never dispatched")
    assert p.events == [Dispatched("message", "first event", "1"),
                        Dispatched("message", "second event", ""),
                        Dispatched("message", " third event", "")]
    assert p.comments == ["test stream"]
    # Blocks without data dispatch nothing; retry counts only when it is all digits.
    p = parse(b"retry: 250\n\nretry: 1.5\n\nevent: x\n\ndata\n\n")
    assert p.retry_ms == 250 and p.events == [Dispatched("message", "", "")]


def test_parser_takes_every_line_end_split_anywhere() -> None:
    stream = b"\xef\xbb\xbfid: 7\r\nevent: news\rdata: a\r\ndata: b\n\r\n"
    whole = parse(stream)
    assert whole.events == [Dispatched("news", "a\nb", "7")]
    byte_by_byte = EventStreamParser()
    for i in range(len(stream)):
        byte_by_byte.feed(stream[i:i + 1])
    assert byte_by_byte.events == whole.events


def test_encode_block_round_trips_through_the_standard() -> None:
    from labserver.sse import encode_block

    block = encode_block("line one\nline two\n\nafter a blank", id=3, event="news")
    assert block == (b"id: 3\nevent: news\ndata: line one\ndata: line two\ndata: \n"
                     b"data: after a blank\n\n")
    assert parse(block).events == [Dispatched("news", "line one\nline two\n\nafter a blank", "3")]
    assert encode_block(retry_ms=3000) == b"retry: 3000\n\n"
    assert encode_block(comment="ping") == b": ping\n\n"


# --- the stream on the wire ----------------------------------------------------------------


def read_until_eof(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def dechunk(body: bytes) -> bytes:
    """Undo ``Transfer-Encoding: chunked`` (RFC 9112 §7.1): size line, data, CRLF … ``0``."""
    out = b""
    while True:
        size_line, body = body.split(b"\r\n", 1)
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return out
        out += body[:size]
        assert body[size:size + 2] == b"\r\n"
        body = body[size + 2:]


def test_stream_format_on_the_wire(srv: labserver.Server) -> None:
    srv.publish({"price": 101})
    srv.publish("two\nlines")  # a newline inside the data: JSON escapes it, one data: line
    before = srv.stats()
    request = (f"GET /sse HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n"
               "Accept: text/event-stream\r\nLast-Event-ID: 0\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(request)
        time.sleep(0.3)
        srv.publish(None)  # a live event after the replay
        time.sleep(0.3)
        assert srv.drop("sse") == 1  # ends the stream and closes the connection
        received = read_until_eof(sock)
    used = srv.stats_since(before)["transports"]["sse"]

    head, body = received.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 200 OK"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["Content-Type"] == "text/event-stream"
    assert headers["Cache-Control"] == "no-cache"
    assert headers["X-Accel-Buffering"] == "no"
    assert headers["Transfer-Encoding"] == "chunked"
    stream = dechunk(body)

    assert b"\r" not in stream  # lines end with LF alone
    assert stream.startswith(b"retry: 3000\n\n")  # retry first, a block of its own
    blocks = stream.decode().split("\n\n")
    assert blocks[-1] == ""  # the stream ends at the end of a block
    events = [b for b in blocks[1:-1]]
    for n, block in enumerate(events, start=1):
        id_line, event_line, data_line = block.split("\n")  # field order: id, event, data
        assert id_line == f"id: {n}" and event_line == "event: news"
        assert data_line.startswith("data: {")
        assert json.loads(data_line.removeprefix("data: "))["id"] == n

    parser = parse(stream)
    assert parser.retry_ms == 3000
    assert [e.last_event_id for e in parser.events] == ["1", "2", "3"]
    assert [e.type for e in parser.events] == ["news"] * 3
    assert [e["data"] for e in parser.news()] == [{"price": 101}, "two\nlines", None]
    assert all(set(e) == {"id", "data", "ts"} for e in parser.news())

    # Counters: one request, three events, every byte both ways counted at the socket.
    assert used["requests"] == 1 and used["messages_out"] == 3 and used["open"] == 0
    assert (used["bytes_in"], used["bytes_out"]) == (len(request), len(received))


async def test_live_events_only_without_an_id(srv: labserver.Server) -> None:
    srv.publish("before")
    async with aiohttp.ClientSession() as session, SseClient(session, srv.url) as client:
        await client.read_until(lambda p: p.retry_ms is not None)
        await wait_for_stat(srv, "open", 1)
        await srv.apublish("after")
        parser = await client.read_until(lambda p: p.news())
    assert parser.ids() == [2]


# --- resume and gap --------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["header", "query"])
async def test_resume_replays_exactly_the_missed_events(srv: labserver.Server, how: str) -> None:
    for n in range(5):
        srv.publish(n)
    async with aiohttp.ClientSession() as session:
        kwargs = {"last_event_id": 2} if how == "header" else {"query": "?last_event_id=2"}
        async with SseClient(session, srv.url, **kwargs) as client:
            await client.read_until(lambda p: len(p.news()) == 3)
            await srv.apublish(5)
            parser = await client.read_until(lambda p: len(p.news()) == 4)
    assert parser.ids() == [3, 4, 5, 6]
    assert [e.type for e in parser.events] == ["news"] * 4  # no gap: all were in the log


async def test_the_header_wins_over_the_query(srv: labserver.Server) -> None:
    """A browser opened at ``sse?last_event_id=1`` reconnects to the same URL with a newer id."""
    for n in range(5):
        srv.publish(n)
    async with aiohttp.ClientSession() as session, SseClient(
        session, srv.url, last_event_id=4, query="?last_event_id=1"
    ) as client:
        parser = await client.read_until(lambda p: len(p.news()) >= 1)
        await asyncio.sleep(0.2)
    assert parser.ids() == [5]


async def test_cut_and_resume_loses_and_duplicates_nothing(srv: labserver.Server) -> None:
    """A publisher runs all along, through the cut and the reconnection (subscribe-then-read)."""
    received: list[int] = []
    stop = asyncio.Event()

    async def publisher() -> list[int]:
        ids = []
        while not stop.is_set():
            ids.append(await srv.apublish(len(ids)))
            await asyncio.sleep(0.005)
        return ids

    async with aiohttp.ClientSession() as session:
        publishing = asyncio.create_task(publisher())
        async with SseClient(session, srv.url, last_event_id=0) as first:
            await first.read_until(lambda p: len(p.news()) >= 10)
        received += first.parser.ids()  # cut: the connection is closed mid-stream
        await asyncio.sleep(0.1)  # events keep coming while this client is away
        last_id = int(first.parser.last_event_id)
        assert last_id == received[-1]
        async with SseClient(session, srv.url, last_event_id=last_id) as second:
            await second.read_until(lambda p: len(p.news()) >= 30)
            stop.set()
            ids = await publishing
            await second.read_until(lambda p: p.ids()[-1:] == [ids[-1]])
        received += second.parser.ids()
    assert received == ids == list(range(1, len(ids) + 1))


async def test_gap_when_the_log_dropped_the_missed_events(make_server: Any) -> None:
    srv = make_server(log_size=3)
    for n in range(6):
        srv.publish(n)
    async with aiohttp.ClientSession() as session:
        async with SseClient(session, srv.url, last_event_id=1) as client:
            parser = await client.read_until(lambda p: len(p.news()) == 3)
        gap, *news = parser.events
        assert (gap.type, json.loads(gap.data)) == ("gap", {"after": 1, "oldest": 4})
        assert gap.last_event_id == "1"  # the gap carries no id: the client's id is unchanged
        assert parser.ids() == [4, 5, 6]
        assert client.raw.startswith(b'retry: 3000\n\nevent: gap\ndata: {"after": 1, "oldest": 4}')

        # No gap when the log still holds everything after the id.
        async with SseClient(session, srv.url, last_event_id=3) as client:
            parser = await client.read_until(lambda p: len(p.news()) == 3)
        assert [e.type for e in parser.events] == ["news"] * 3


async def test_gap_when_the_id_is_from_an_earlier_life_of_the_server(
    srv: labserver.Server,
) -> None:
    srv.publish("a")
    srv.publish("b")
    async with aiohttp.ClientSession() as session, SseClient(
        session, srv.url, last_event_id=500
    ) as client:
        parser = await client.read_until(lambda p: len(p.news()) == 2)
    assert (parser.events[0].type, json.loads(parser.events[0].data)) == (
        "gap", {"after": 500, "oldest": 1})
    assert parser.ids() == [1, 2] and parser.last_event_id == "2"


NOT_AN_ID = " must be a non-negative integer (an event id)"


@pytest.mark.parametrize(
    ("headers", "query", "reason"),
    [
        ({"Last-Event-ID": "abc"}, "", "Last-Event-ID" + NOT_AN_ID),
        ({"Last-Event-ID": "-1"}, "", "Last-Event-ID" + NOT_AN_ID),
        ({}, "?last_event_id=1.5", "last_event_id" + NOT_AN_ID),
        ({}, "?last_event_id=%C2%B2", "last_event_id" + NOT_AN_ID),  # a superscript two
    ],
)
async def test_a_bad_id_is_a_400_json_answer(
    srv: labserver.Server, headers: dict[str, str], query: str, reason: str
) -> None:
    async with aiohttp.ClientSession() as session, session.get(
        srv.url + "/sse" + query, headers=headers
    ) as response:
        assert response.status == 400
        assert await response.json() == {"error": reason}
    assert srv.stats()["transports"]["sse"]["open"] == 0


async def test_head_is_refused(srv: labserver.Server) -> None:
    async with aiohttp.ClientSession() as session, session.head(srv.url + "/sse") as response:
        assert response.status == 405


# --- heartbeats ------------------------------------------------------------------------------


async def test_heartbeats_fill_silence_only(make_server: Any) -> None:
    srv = make_server(heartbeat_s=0.2)
    async with aiohttp.ClientSession() as session, SseClient(session, srv.url) as client:
        await client.read_until(lambda p: p.retry_ms is not None)
        await wait_for_stat(srv, "open", 1)
        started = time.monotonic()
        await client.read_until(lambda p: time.monotonic() - started > 1.1, timeout_s=5)
        idle_pings = len(client.parser.comments)
        assert client.parser.events == []  # comments dispatch nothing

        # Events every 50 ms leave no silence of 200 ms to fill.
        for n in range(20):
            await srv.apublish(n)
            await asyncio.sleep(0.05)
        await client.read_until(lambda p: len(p.news()) == 20)
        busy_pings = len(client.parser.comments) - idle_pings
    assert set(client.parser.comments) == {"ping"}
    assert b": ping\n\n" in client.raw
    assert 3 <= idle_pings <= 7  # about 1.1 s / 0.2 s
    assert busy_pings <= 1


# --- disconnects, drop, slow readers -------------------------------------------------------


async def test_a_client_that_leaves_is_noticed_at_once(srv: labserver.Server) -> None:
    """The default heartbeat is 15 s: the server notices the closed socket, not a failed write."""
    async with aiohttp.ClientSession() as session:
        async with SseClient(session, srv.url) as client:
            await client.read_until(lambda p: p.retry_ms is not None)
            await wait_for_stat(srv, "open", 1)
        took_s = await wait_for_stat(srv, "open", 0, timeout_s=5)
    assert took_s < srv.options.heartbeat_s / 3
    assert srv.publish("nobody listens") == 1  # and the server carries on


async def test_drop_ends_every_stream_and_they_resume(srv: labserver.Server) -> None:
    async with aiohttp.ClientSession() as session:
        clients = [SseClient(session, srv.url, last_event_id=0) for _ in range(3)]
        for client in clients:
            await client.__aenter__()
            await client.read_until(lambda p: p.retry_ms is not None)
        await wait_for_stat(srv, "open", 3)
        await srv.apublish("one")
        for client in clients:
            await client.read_until(lambda p: p.ids() == [1])
        assert srv.drop("sse") == 3
        for client in clients:  # read to the end: the stream ended cleanly, block complete
            await client.read_until(lambda p: False)
            assert client.raw.endswith(b"\n\n") and client.parser._line == ""
            await client.__aexit__()
        assert (await srv.astats())["transports"]["sse"]["open"] == 0
        await srv.apublish("while away")
        async with SseClient(session, srv.url,
                             last_event_id=int(clients[0].parser.last_event_id)) as again:
            parser = await again.read_until(lambda p: p.news())
        assert parser.ids() == [2]


async def test_stop_ends_open_streams_cleanly_and_promptly() -> None:
    srv = labserver.start()
    try:
        async with aiohttp.ClientSession() as session:
            clients = [SseClient(session, srv.url) for _ in range(3)]
            for client in clients:
                await client.__aenter__()
                await client.read_until(lambda p: p.retry_ms is not None)
            await wait_for_stat(srv, "open", 3)
            started = time.monotonic()
            await asyncio.to_thread(srv.stop)
            took_s = time.monotonic() - started
            for client in clients:  # each stream ended with its last chunk, not a reset
                await client.read_until(lambda p: False)
                assert client.response is not None and client.response.content.is_eof()
                await client.__aexit__()
    finally:
        srv.stop()
    assert took_s < STOP_TIMEOUT_S  # past it, stop() would have had to terminate the child


async def test_a_slow_reader_is_dropped_without_slowing_the_others(make_server: Any) -> None:
    srv = make_server(queue_size=8)
    payload = "x" * 32_000
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window, then no reads
    slow.settimeout(10)
    slow.connect(("127.0.0.1", srv.port))
    slow.sendall(f"GET /sse HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n\r\n".encode())
    try:
        async with aiohttp.ClientSession() as session, SseClient(session, srv.url) as fast:
            await fast.read_until(lambda p: p.retry_ms is not None)
            await wait_for_stat(srv, "open", 2)
            reader = asyncio.create_task(fast.read_until(lambda p: False, timeout_s=60))
            published = 0
            # Publish until the server gives up on the slow reader (bounded: 20 MB at most).
            while published < 640:
                for _ in range(20):
                    await srv.apublish({"n": published, "text": payload})
                    published += 1
                if (await srv.astats())["transports"]["sse"]["open"] == 1:
                    break
            assert (await srv.astats())["transports"]["sse"]["open"] == 1, "slow reader kept"
            for _ in range(10):  # the fast client keeps getting every event afterwards
                await srv.apublish({"n": published, "text": "after"})
                published += 1
            while len(fast.parser.news()) < published and not reader.done():
                await asyncio.sleep(0.05)
            reader.cancel()
            assert fast.parser.ids() == list(range(1, published + 1))

        # The slow reader's connection was aborted: what it can still read ends in a reset or
        # EOF, short of the events published.
        slow_bytes = b""
        try:
            while chunk := slow.recv(65536):
                slow_bytes += chunk
        except ConnectionResetError:
            pass
        assert len(slow_bytes) < published * len(payload)
    finally:
        slow.close()


# --- a real browser ----------------------------------------------------------------------------


async def test_the_index_links_the_demo(srv: labserver.Server) -> None:
    async with aiohttp.ClientSession() as session, session.get(srv.url + "/") as response:
        assert 'href="sse.html"' in await response.text()


def test_browser_event_source_receives_and_resumes_after_drop(
    make_server: Any, browser_page: Any,
) -> None:
    """Chromium's own EventSource: events published from Python appear in the page; the page's
    drop button (POST drop) ends the stream; events published while it is away are replayed
    when the browser reconnects with Last-Event-ID, none lost, none twice."""
    srv = make_server(retry_ms=1500)  # long enough to publish while the browser is away
    page = browser_page
    page.goto(srv.url + "/sse.html")
    page.wait_for_function("document.getElementById('state').textContent === 'OPEN'",
                           timeout=10_000)
    first = srv.publish({"from": "python"})
    page.locator(f'#events li[data-id="{first}"]').wait_for(timeout=10_000)
    assert page.locator("#last-id").text_content() == str(first)

    page.click("#drop")
    page.wait_for_function("document.getElementById('message').textContent.includes('dropped 1')",
                           timeout=10_000)
    assert srv.stats()["transports"]["sse"]["open"] == 0
    missed = [srv.publish({"while": "away", "n": n}) for n in range(3)]
    assert srv.stats()["transports"]["sse"]["open"] == 0, "published while the page was away"
    assert page.locator("#state").text_content() == "CONNECTING"

    page.locator(f'#events li[data-id="{missed[-1]}"]').wait_for(timeout=10_000)
    assert page.locator("#opens").text_content() == "2"  # the browser reconnected by itself
    live = srv.publish({"after": "resume"})
    page.locator(f'#events li[data-id="{live}"]').wait_for(timeout=10_000)

    ids = page.eval_on_selector_all("#events li[data-id]", "els => els.map(e => +e.dataset.id)")
    assert sorted(ids) == [first, *missed, live] and len(set(ids)) == len(ids)
    assert page.locator("#events li.replayed").count() == 3  # the missed ones, from the log
    assert "every id once, in order" in page.locator("#check").text_content()
    assert "Last-Event-ID: 1" in page.locator("#events li.marker").first.text_content()
