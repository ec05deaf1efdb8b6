"""The kept-alive long-poll path answers exactly what aiohttp answers (issue 14).

Two servers run in this process (the real ``serve()``, in a thread with its own event loop),
with the events' timestamps frozen so that answers compare byte for byte. The same request
bytes go

* to server A as the *next* requests of a kept-alive connection whose first request was a
  plain ``GET /long-poll`` — served by :mod:`labserver._fast.keepalive` once aiohttp handed the
  connection over;
* to server B on a fresh connection, where aiohttp answers them all.

Both end with a request that asks to close. What comes back must be the same bytes, but for
the ``Server`` header (the light path sends none) and ``Date``; and so must the side effects:
``/stats`` counts per transport and the events published. The servers see the same
sequence of examples, so their event logs stay equal.

A seeded, bounded property test generates request heads and pipelines (bare LF and CR,
duplicate and missing headers, control and 8-bit bytes, odd encodings of the target, bodies,
``HEAD``, HTTP/1.0); the regression tests below it send the exact bytes of the issue's findings.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
import types
from collections.abc import Iterator
from typing import Any

import conftest
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from labserver import events
from labserver.app import create_app

HOST = b"Host: 127.0.0.1\r\n"
#: The kept-alive connection's first request: aiohttp serves it, then hands the connection over.
FIRST = b"GET /long-poll?after=0&timeout=0 HTTP/1.1\r\n" + HOST + b"\r\n"
#: Every exchange ends with this: a 404 and the connection closed.
END = b"GET /differential-end HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r\n"
#: How long an exchange may wait for the server to close (a request left incomplete): long
#: enough that a loaded machine, not a difference, leaves one of the two servers slower.
QUIET_S = 1.0
#: Counters compared (bytes are not: a hand-back counts bytes as aiohttp does, not per request).
COUNTED = ("requests", "empty", "messages_out", "messages_in", "open")


class Servers:
    """Servers A (labserver as it is) and B (the same app with the fast tier off: its long-poll
    route is plain aiohttp, no takeover), in a thread of their own, until :meth:`stop`."""

    def __init__(self) -> None:
        self.ports: list[int] = []
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.stopping: asyncio.Event | None = None
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self.run(),),
                                       daemon=True)
        self.thread.start()
        assert self.ready.wait(10), "the servers did not start"

    async def run(self) -> None:
        self.stopping = asyncio.Event()
        aiohttp_only = create_app(fast=False)  # B: the long-poll route, never taken over
        async with conftest.serving(create_app(fast=True)) as a, (
                conftest.serving(aiohttp_only)) as b:
            self.ports = [a, b]
            self.ready.set()
            await self.stopping.wait()

    def stop(self) -> None:
        assert self.stopping is not None
        self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(events, "time", types.SimpleNamespace(time=lambda: 1.5))  # frozen "ts"
        started = Servers()
        try:
            for port in started.ports:  # one event in each log: after=0 is answered at once
                exchange(port, b"POST /publish HTTP/1.1\r\n" + HOST + body_headers(b'{"data":0}'))
            yield started
        finally:
            started.stop()


def body_headers(body: bytes) -> bytes:
    return b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def read_response(sock: socket.socket) -> bytes:
    """One response with a Content-Length (the first long poll's answer)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def exchange(port: int, data: bytes, first: bytes = b"", quiet_s: float = 5) -> tuple[bytes,
                                                                                     bytes]:
    """``first`` (answered and read), then ``data`` and :data:`END` in one write; returns the
    first answer and everything after it until the server closes (which :data:`END` asks for:
    a well-formed ``data`` gets ``quiet_s``, a loaded machine's margin, not :data:`QUIET_S`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        answer = b""
        if first:
            sock.sendall(first)
            answer = read_response(sock)
        sock.sendall(data + END)
        return answer, read_until_closed(sock, quiet_s)


def read_until_closed(sock: socket.socket, quiet_s: float = QUIET_S) -> bytes:
    sock.settimeout(quiet_s)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        received += b"<still open>"
    except ConnectionResetError:
        received += b"<reset>"
    return received


def normalized(data: bytes) -> bytes:
    data = re.sub(rb"\r\nServer: [^\r\n]*", b"", data)
    return re.sub(rb"\r\nDate: [^\r\n]*", b"\r\nDate: -", data)


def stats(port: int) -> dict[str, Any]:
    _, received = exchange(port, b"GET /stats HTTP/1.1\r\n" + HOST + b"\r\n")
    snapshot = json.loads(received.split(b"\r\n\r\n", 2)[1].split(b"HTTP/1.1")[0])
    return {"published": snapshot["events"]["published"],
            **{f"{t}.{k}": v for t, c in snapshot["transports"].items() for k, v in c.items()
               if k in COUNTED}}


def diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


def both(servers: Servers, data: bytes, first: bytes = FIRST) -> tuple[tuple[bytes, dict],
                                                                      tuple[bytes, dict]]:
    """``first`` then ``data`` on one connection to A and one to B: what came back after
    ``first`` (normalized) and the side effects of ``data``, for each. On A, ``first`` (a plain
    long poll) hands the connection to the light path; on B, aiohttp answers everything."""
    results = []
    for port, kept_alive in zip(servers.ports, (True, False), strict=True):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            if first:
                sock.sendall(first)
                answer = read_response(sock)
                assert (b"\r\nServer:" not in answer) == kept_alive, "who answered the first?"
            before = stats(port)  # after the first request: only ``data`` counts
            sock.sendall(data + END)
            received = read_until_closed(sock)
        results.append((normalized(received), diff(before, stats(port))))
    return results[0], results[1]


def assert_same(servers: Servers, data: bytes, first: bytes = FIRST) -> tuple[bytes, dict]:
    light, aiohttp_only = both(servers, data, first)
    assert light == aiohttp_only, f"labserver differs from plain aiohttp on {first + data!r}"
    return aiohttp_only


# --- generated heads and pipelines --------------------------------------------------------

EOL = st.sampled_from([b"\r\n"] * 8 + [b"\n", b"\r", b"\r\r\n", b"\n\r"])
AFTER = st.sampled_from([b"0", b"00", b"%30", b"99999999", b"-1", b"x", b"", b"1.0", b"+0",
                         b"0%00", b"\xef\xbc\x91", b"%EF%BC%91", b"0&after=1", b"0+"])
TIMEOUT = st.sampled_from([b"&timeout=0", b"&timeout=0.0", b"&timeout=%30", b"&timeout=-0",
                           b"&timeout=nan", b"&timeout=1e400", b"&timeout=", b"&timeout=abc",
                           b"&timeout=\xa00", b"&timeout=%C2%A00", b"&timeout=%200",
                           b"&timeout=0#frag", b"", b"&timeout=0&timeout=9"])
TARGET = st.one_of(
    st.builds(lambda a, t: b"/long-poll?after=" + a + t, AFTER, TIMEOUT),
    st.sampled_from([b"/long-poll/?after=0", b"/long%2Dpoll?after=0&timeout=0",
                     b"/poll?after=0", b"/nope", b"*", b"/long-poll?after=0\x01",
                     b"/long-poll?after=0 x", b"http://127.0.0.1/long-poll?after=0&timeout=0",
                     b"//long-poll?after=0", b"/long-poll?after=0&timeout=0\x7f"]),
)
METHOD = st.sampled_from([b"GET"] * 6 + [b"HEAD", b"POST", b"PUT", b"get", b"OPTIONS",
                                          b"GET\t"])
VERSION = st.sampled_from([b"HTTP/1.1"] * 6 + [b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0",
                                                 b"http/1.1", b"HTTP/1.1 "])
VALUE_BYTES = st.sampled_from([b"1", b"a b", b"\x00", b"\x01", b"\x7f", b"\x0b", b"\x0c",
                               b"\xa0", b"\xff", b"\t", b"x\ry", b"x\ny", b"\r\n folded"])
HEADER = st.one_of(
    st.just(HOST), st.just(HOST),
    st.sampled_from([b"Host: 127.0.0.1:1\r\n", b"Connection: keep-alive\r\n",
                     b"Connection: close\r\n", b"Connection: Upgrade\r\n",
                     b"Upgrade: websocket\r\n", b"Content-Length: 0\r\n",
                     b"Content-Length:\x0b0\r\n", b"Content-Length: 0\x0c\r\n",
                     b"Content-Length: 3\r\n", b"Content-Length: -1\r\n",
                     b"Transfer-Encoding: chunked\r\n", b"Transfer-Encoding: gzip\r\n",
                     b"Expect: 100-continue\r\n", b"Expect: nothing\r\n",
                     b"Accept-Encoding: gzip\r\n", b"Bad Name: x\r\n", b": empty\r\n",
                     b"X-Many: x\r\n" * 129]),
    st.builds(lambda v, e: b"X-A: " + v + e, VALUE_BYTES, EOL),
)
BODY = st.sampled_from([b"", b"", b"", b"abc", b"0\r\n\r\n", b"3\r\nabc\r\n0\r\n\r\n"])


@st.composite
def requests(draw: Any) -> bytes:
    """A plain long poll with one to three things changed: its method, target, version, a
    line end, a header added or Host taken away, a body."""
    method, target, version = b"GET", b"/long-poll?after=0&timeout=0", b"HTTP/1.1"
    line_ends, headers, body = [b"\r\n"] * 3, [HOST], b""
    for change in draw(st.lists(st.integers(0, 6), min_size=1, max_size=3)):
        if change == 0:
            method = draw(METHOD)
        elif change == 1:
            target = draw(TARGET)
        elif change == 2:
            version = draw(VERSION)
        elif change == 3:
            line_ends[draw(st.integers(0, 2))] = draw(EOL)
        elif change == 4:
            headers.insert(draw(st.integers(0, len(headers))), draw(HEADER))
        elif change == 5:
            headers = [h for h in headers if h != HOST] or [HOST, HOST]
        else:
            body = draw(BODY)
    line = method + b" " + target + b" " + version + line_ends[0]
    return line + b"".join(headers).replace(b"\r\n", line_ends[1]) + line_ends[2] + body


PUBLISH = b"POST /publish HTTP/1.1\r\n" + HOST + body_headers(b'{"data":"generated"}')
HEAD = b"HEAD /long-poll?after=0&timeout=0 HTTP/1.1\r\n" + HOST + b"\r\n"


@settings(derandomize=True, database=None, max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(pipeline=st.lists(st.one_of(requests(), st.sampled_from([PUBLISH, FIRST, HEAD])),
                         min_size=1, max_size=3),
       kept_alive=st.booleans())
def test_generated_pipelines_get_what_aiohttp_answers(
        servers: Servers, pipeline: list[bytes], kept_alive: bool) -> None:
    """Generated requests and well-formed ones, in any order, in one write: after a plain
    long poll (the light path has the connection) or as the connection's first requests.

    When one read holds good requests and then bytes llhttp refuses, aiohttp answers only its
    400 (the good requests parsed in the same read are lost with it); so does the light path.
    """
    assert_same(servers, b"".join(pipeline), FIRST if kept_alive else b"")


# --- the issue's findings, their exact bytes --------------------------------------------

SMUGGLED = b"POST /publish HTTP/1.1\r\n" + HOST + body_headers(b'{"data":"smuggled"}')


@pytest.mark.parametrize("separator", [
    b"X-A: 1\nContent-Length: %d\r\n\r\n",  # the issue's bytes: a bare LF after a value
    b"X-A: 1\nTransfer-Encoding: chunked\r\n\r\n",
    b"X-A: 1\n\rContent-Length: %d\r\n\r\n",  # a bare CR behind the LF
])
def test_finding_3_no_request_smuggling(servers: Servers, separator: bytes) -> None:
    """Issue 14, finding 3: a long poll whose head hides a Content-Length behind a bare LF,
    followed by a whole ``POST /publish``: the hand parser answered the poll and then ran the
    body as a request (an event was published). aiohttp refuses the head; so does the light
    path now, and nothing is published."""
    assert len(SMUGGLED) == 114  # the issue's body: 114 bytes
    head = b"GET /long-poll?after=1&timeout=0 HTTP/1.1\r\n" + HOST
    if b"%d" in separator:
        separator = separator % len(SMUGGLED)
    answer, effects = assert_same(servers, head + separator + SMUGGLED)
    assert re.match(rb"HTTP/1\.[01] 400 Bad Request", answer)
    assert b"Missing expected CR after header value" in answer or (
        b"Missing expected LF" in answer), answer
    assert "published" not in effects


@pytest.mark.parametrize("first_too", [False, True])
def test_finding_2_head_gets_no_body(servers: Servers, first_too: bool) -> None:
    """Issue 14, finding 2: ``HEAD /long-poll`` was answered with a JSON body (even as the
    first request), which a pooled client then read as the next status line."""
    head = b"HEAD /long-poll?after=0&timeout=0 HTTP/1.1\r\n" + HOST + b"\r\n"
    get = b"GET /long-poll?after=0&timeout=0 HTTP/1.1\r\n" + HOST + b"\r\n"
    received, _ = assert_same(servers, head + get, b"" if first_too else FIRST)
    first, rest = received.split(b"\r\n\r\n", 1)
    assert first.startswith(b"HTTP/1.1 200 OK") and b"Content-Length" in first
    assert rest.startswith(b"HTTP/1.1 200 OK"), "HEAD's answer carried a body"


FINDING_4 = [
    b"GET /long-poll?after=0&timeout=0 HTTP/1.1\r\n\r\n",  # no Host
    b"GET /long-poll?after=0&timeout=0 HTTP/1.1\r\n" + HOST + HOST + b"\r\n",  # two
    b"GET /long-poll?after=0&timeout=0 HTTP/1.1\r\n" + HOST + b"X-A: a\x01b\r\n\r\n",
    b"GET /long-poll?after=0&timeout=0 HTTP/1.1\r\n" + HOST + b"X-A: a\rb\r\n\r\n",
    b"GET /long-poll?after=0&timeout=0 HTTP/1.1\r\n" + HOST
    + b"Content-Length: 0\r\nContent-Length: 0\r\n\r\n",
    b"GET /long-poll?after=0&timeout=0 HTTP/1.1\r\n" + HOST + b"Content-Length:\x0b0\r\n\r\n",
    b"GET /long-poll?after=0&timeout=0 HTTP/1.1\r\n" + HOST + b"Content-Length: 0\x0c\r\n\r\n",
    b"GET /long-poll?after=0&timeout=0 HTTP/1.1\r\n" + HOST
    + b"".join(b"X-%d: x\r\n" % n for n in range(129)) + b"\r\n",  # more than 128 headers
    b"GET /long-poll?after=0&timeout=\xa00 HTTP/1.1\r\n" + HOST + b"\r\n",  # 8-bit target
    b"GET /long-poll?after=0&timeout=0\x01 HTTP/1.1\r\n" + HOST + b"\r\n",  # control byte
    b"GET /long-poll?after=0&timeout=0 HTTP/1.1\n" + HOST.replace(b"\r\n", b"\n") + b"\n",
]


@pytest.mark.parametrize("data", FINDING_4)
def test_finding_4_heads_aiohttp_refuses_are_refused(servers: Servers, data: bytes) -> None:
    """Issue 14, finding 4: heads llhttp refuses, which the hand parser served as long polls
    (the last, ending in bare LFs, was not answered until the idle sweep)."""
    answer, effects = assert_same(servers, data)
    assert re.match(rb"HTTP/1\.[01] 400 Bad Request", answer), answer[:200]
    assert b"<still open>" not in answer
    assert effects == {}  # nothing counted as a long poll: the parser refused it first


def test_finding_4_http10_keep_alive_is_aiohttps(servers: Servers) -> None:
    """HTTP/1.0 with ``Connection: keep-alive`` was answered without that header, yet kept."""
    data = (b"GET /long-poll?after=0&timeout=0 HTTP/1.0\r\n" + HOST
            + b"Connection: keep-alive\r\n\r\n")
    answer, effects = assert_same(servers, data)
    assert answer.startswith(b"HTTP/1.0 200 OK") and b"Connection: keep-alive" in answer
    assert effects["long_poll.requests"] == 1 and "long_poll.empty" not in effects


def test_a_good_request_and_refused_bytes_in_one_read_get_only_the_400(servers: Servers) -> None:
    """aiohttp reads per read: a good long poll and bytes llhttp refuses, in one write, get
    aiohttp's 400 alone; the light path gives such a read back whole instead of answering the
    long poll first."""
    data = FIRST + b"abc"
    answer, effects = assert_same(servers, data)
    assert re.match(rb"HTTP/1\.[01] 400 Bad Request", answer) and effects == {}


# --- a held poll, and pipelines split across reads (issue 19) ----------------------------

#: Between two writes of a split pipeline: long enough that the server reads them apart.
READ_GAP_S = 0.04


def last_id(port: int) -> int:
    _, received = exchange(port, b"GET /stats HTTP/1.1\r\n" + HOST + b"\r\n")
    return json.loads(received.split(b"\r\n\r\n", 2)[1].split(b"HTTP/1.1")[0])["events"][
        "last_id"]


def held_poll(port: int) -> bytes:
    """A long poll that is held: its cursor is the log's last id (woken by :func:`wake`)."""
    return b"GET /long-poll?after=%d&timeout=5 HTTP/1.1\r\n" % last_id(port) + HOST + b"\r\n"


def wake(port: int) -> None:
    exchange(port, b"POST /publish HTTP/1.1\r\n" + HOST + body_headers(b'{"data":"wake"}'))


def both_in_reads(servers: Servers, reads: list[bytes], first: bytes = FIRST,
                  hold: bool = True) -> tuple[tuple[bytes, dict], tuple[bytes, dict]]:
    """As :func:`both`, but ``reads`` go in writes of their own (:data:`END` with the last),
    and with ``hold`` behind a long poll that the server holds until they are all sent."""
    results = []
    for port, kept_alive in zip(servers.ports, (True, False), strict=True):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if first:
                sock.sendall(first)
                answer = read_response(sock)
                assert (b"\r\nServer:" not in answer) == kept_alive, "who answered the first?"
            before = stats(port)
            if hold:
                sock.sendall(held_poll(port))
            for data in [*reads[:-1], reads[-1] + END]:
                time.sleep(READ_GAP_S)
                sock.sendall(data)
            if hold:
                time.sleep(READ_GAP_S)
                wake(port)
            received = read_until_closed(sock)
        results.append((normalized(received), diff(before, stats(port))))
    return results[0], results[1]


STATS = b"GET /stats HTTP/1.1\r\n" + HOST + b"\r\n"
POLL = b"GET /poll?after=0 HTTP/1.1\r\n" + HOST + b"\r\n"  # the same answer from A and B
REFUSED = b"abc\r\n\r\n"


def statuses(received: bytes) -> list[bytes]:
    return re.findall(rb"HTTP/1\.[01] (\d{3})", received)


@pytest.mark.parametrize("second", [STATS, POLL], ids=["stats", "poll"])
@pytest.mark.parametrize("first", [FIRST, b""], ids=["kept-alive", "first-requests"])
def test_issue_19_held_poll_then_a_request_then_refused_bytes_in_three_reads(
        servers: Servers, first: bytes, second: bytes) -> None:
    """Issue 19: a long poll is held; ``GET /stats`` comes in a second read, bytes llhttp
    refuses in a third. aiohttp answers the poll, ``/stats`` (its read parsed) and then its
    400; the light path gave both reads back to aiohttp as one, and ``/stats`` was lost."""
    light, aiohttp_only = both_in_reads(servers, [second, REFUSED], first)
    assert statuses(aiohttp_only[0]) == [b"200", b"200", b"400"], aiohttp_only[0]
    assert statuses(light[0]) == statuses(aiohttp_only[0]), light[0]
    if second == POLL:  # /stats differs in its bytes counters
        assert light == aiohttp_only


# No shrinking: an example that loses a publish leaves the two logs apart, and every example
# after it fails too; the first failing example is the one to read.
@settings(derandomize=True, database=None, max_examples=25, deadline=None,
          phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(pipeline=st.lists(st.one_of(requests(), st.sampled_from([PUBLISH, FIRST, HEAD, POLL,
                                                                REFUSED])),
                         min_size=1, max_size=3),
       splits=st.lists(st.booleans(), min_size=2, max_size=2),
       kept_alive=st.booleans(), hold=st.booleans())
def test_generated_pipelines_split_across_reads_get_what_aiohttp_answers(
        servers: Servers, pipeline: list[bytes], splits: list[bool], kept_alive: bool,
        hold: bool) -> None:
    """Generated requests in one to three reads (a read boundary between two requests where
    ``splits`` says so), behind a held long poll or not: aiohttp parses per read, and the
    light path must answer as it does."""
    reads = [pipeline[0]]
    for request, split in zip(pipeline[1:], splits, strict=False):
        if split:
            reads.append(request)
        else:
            reads[-1] += request
    light, aiohttp_only = both_in_reads(servers, reads, FIRST if kept_alive else b"", hold)
    assert light == aiohttp_only, f"labserver differs from plain aiohttp on {reads!r}"
