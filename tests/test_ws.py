"""WebSocket ``/ws`` and ``/whoami`` over real sockets: the contract, the close codes, the origin
policy, the slow reader, replay, ``?every=``, and the bytes on the wire, handshake included.

Two kinds of client: the ``websockets`` library (what a learner writes), and :class:`RawSocket`,
a client written by hand on a TCP socket to send what a library will not (unmasked frames,
fragments with a ping between them, invalid UTF-8) and to count every byte.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import os
import socket
import time
import urllib.request
import zlib
from typing import Any

import aiohttp
import conftest
import pytest
import websockets
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
)
from websockets.frames import Frame, Opcode

import labserver
from labserver import ws as ws_module
from labserver.app import create_app
from labserver.keys import CONNECTIONS, COUNTERS
from labserver.options import fast_by_default

RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3's example key …
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # … and the Sec-WebSocket-Accept it must get

opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def own_protocol(why: str) -> pytest.MarkDecorator:
    """A test of labserver's own RFC 6455 (labserver.wsprotocol, the fast tier's /ws): with the
    fast tier off (LABSERVER_FAST=0) /ws is aiohttp's WebSocketResponse, which differs here."""
    return pytest.mark.own_protocol(why)  # conftest skips it in tests/fast_off


def ws_url(srv: labserver.Server, query: str = "") -> str:
    return srv.url.replace("http://", "ws://", 1) + "/ws" + query


def connect(srv: labserver.Server, query: str = "", **kwargs: Any) -> Any:
    """A ``websockets`` client, compression off unless asked, never through a proxy."""
    kwargs.setdefault("compression", None)
    return websockets.connect(ws_url(srv, query), proxy=None, open_timeout=5, **kwargs)


async def recv_json(ws: Any, timeout_s: float = 5) -> Any:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout_s))


async def closed_with(ws: Any, timeout_s: float = 5) -> websockets.ConnectionClosed:
    """Read until the server closes; return the ConnectionClosed (its ``rcvd`` frame)."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout_s)
    except websockets.ConnectionClosed as closed:
        return closed


def ws_stats(srv: labserver.Server) -> dict[str, int]:
    return srv.stats()["transports"]["ws"]


wait_for_stat = functools.partial(conftest.wait_for_stat, transport="ws")


class RawSocket:
    """A WebSocket client by hand: an HTTP upgrade, then RFC 6455 frames, every byte counted."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.sent = bytearray()
        self.received = bytearray()

    @classmethod
    async def open(cls, srv: labserver.Server, target: str = "/ws",
                   headers: dict[str, str] | None = None, extra: bytes = b"") -> RawSocket:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        raw = cls(reader, writer)
        raw.write(handshake_request(srv, target, headers) + extra)
        return raw

    def write(self, data: bytes) -> None:
        self.sent += data
        self.writer.write(data)

    async def read_response(self) -> tuple[int, dict[str, str], bytes]:
        """The HTTP answer to the handshake: status, headers (lower-case names), body."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        self.received += head
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, v in
                   (line.split(":", 1) for line in lines[1:] if line)}
        body = b""
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
            self.received += body
        return status, headers, body

    def send_frame(self, opcode: Opcode, payload: bytes, fin: bool = True,
                   mask: bool = True) -> bytes:
        data = Frame(opcode, payload, fin=fin).serialize(mask=mask)
        self.write(data)
        return data

    async def read_exactly(self, n: int) -> bytes:
        data = await asyncio.wait_for(self.reader.readexactly(n), 5)
        self.received += data
        return data

    async def read_frame(self) -> tuple[bool, int, bytes]:
        """One server frame: (fin, opcode, payload). Server frames are never masked."""
        b0, b1 = await self.read_exactly(2)
        assert not b1 & 0x80, "a server must not mask its frames (RFC 6455 §5.1)"
        length = b1 & 0x7F
        if length == 126:
            length = int.from_bytes(await self.read_exactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await self.read_exactly(8), "big")
        return bool(b0 & 0x80), b0 & 0x0F, await self.read_exactly(length)

    async def read_close(self) -> tuple[int, str]:
        """Skip to the server's Close frame; return its code and reason."""
        while True:
            _, opcode, payload = await self.read_frame()
            if opcode == Opcode.CLOSE:
                return int.from_bytes(payload[:2], "big"), payload[2:].decode()

    async def read_to_eof(self) -> bytes:
        data = await asyncio.wait_for(self.reader.read(), 5)
        self.received += data
        return data

    def close(self) -> None:
        self.writer.close()


def handshake_request(srv: labserver.Server, target: str = "/ws",
                      headers: dict[str, str] | None = None) -> bytes:
    fields = {
        "Host": f"127.0.0.1:{srv.port}",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": RFC_KEY,
        "Sec-WebSocket-Version": "13",
        **(headers or {}),
    }
    lines = [f"GET {target} HTTP/1.1"] + [f"{k}: {v}" for k, v in fields.items() if v]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# --- the contract ---------------------------------------------------------------------------


async def test_each_event_is_one_json_text_message(srv: labserver.Server) -> None:
    async with connect(srv) as ws:
        ids = [await srv.apublish({"n": n}) for n in range(3)]
        received = [await recv_json(ws) for _ in ids]
    assert [e["id"] for e in received] == ids == [1, 2, 3]
    assert [e["data"] for e in received] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert all(set(e) == {"id", "data", "ts"} and isinstance(e["ts"], float) for e in received)


async def test_handshake_answer_is_rfc6455_101(srv: labserver.Server) -> None:
    raw = await RawSocket.open(srv)
    status, headers, _ = await raw.read_response()
    raw.close()
    assert status == 101
    assert headers["upgrade"].lower() == "websocket"
    assert headers["connection"].lower() == "upgrade"
    assert headers["sec-websocket-accept"] == RFC_ACCEPT
    expected = base64.b64encode(hashlib.sha1(
        (RFC_KEY + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
    assert expected == RFC_ACCEPT  # the accept value is SHA-1(key + GUID), as §4.2.2 says


async def test_after_replays_missed_events_then_goes_live(srv: labserver.Server) -> None:
    for n in range(5):
        await srv.apublish(n)
    async with connect(srv, "?after=2") as ws:
        replayed = [(await recv_json(ws))["id"] for _ in range(3)]
        live = await srv.apublish("live")
        assert (await recv_json(ws))["id"] == live
    assert replayed == [3, 4, 5] and live == 6
    assert ws_stats(srv)["messages_out"] == 4  # replays are deliveries too


async def test_replay_racing_the_publisher_loses_and_repeats_nothing(srv: labserver.Server) -> None:
    """Subscribe first, then read the log, then skip what was sent: exactly 1..N, in order."""
    total = 60

    async def publish_all() -> None:
        for n in range(total):
            await srv.apublish(n)

    publisher = asyncio.create_task(publish_all())
    await asyncio.sleep(0.02)  # some events are in the log, more are coming
    async with connect(srv, "?after=0") as ws:
        ids = [(await recv_json(ws))["id"] for _ in range(total)]
    await publisher
    assert ids == list(range(1, total + 1))


async def test_replay_across_a_gap_says_so_first(make_server: Any) -> None:
    srv = make_server(log_size=3)
    for n in range(6):
        await srv.apublish(n)  # the log keeps 4, 5, 6
    async with connect(srv, "?after=1") as ws:
        notice = await recv_json(ws)
        ids = [(await recv_json(ws))["id"] for _ in range(3)]
    assert notice == {"gap": {"after": 1, "oldest": 4}}
    assert ids == [4, 5, 6]


async def test_cursor_from_before_a_restart_gets_the_log_and_new_events(srv) -> None:
    await srv.apublish("a")
    async with connect(srv, "?after=100") as ws:
        assert await recv_json(ws) == {"gap": {"after": 100, "oldest": 1}}
        assert (await recv_json(ws))["id"] == 1
        await srv.apublish("b")
        assert (await recv_json(ws))["id"] == 2  # not skipped as "already seen"


async def test_echo_round_trips_any_json(srv: labserver.Server) -> None:
    async with connect(srv) as ws:
        for value in ({"x": [1, 2.5, None]}, "text", 0, None):
            await ws.send(json.dumps({"echo": value}))
            assert await recv_json(ws) == {"echo": value}
    assert ws_stats(srv)["messages_in"] == 4


async def test_other_text_is_counted_and_logged_truncated(srv: labserver.Server) -> None:
    async with connect(srv) as ws:
        await ws.send("Hello Node.JS")  # the chapter's client sends plain text
        await ws.send('{"reply": "not an echo"}')
        await ws.send("z" * 5000)
        await ws.send(json.dumps({"echo": 1}))
        assert await recv_json(ws) == {"echo": 1}  # the socket stayed open
    await wait_for_stat(srv, "open", 0)
    assert ws_stats(srv)["messages_in"] == 4
    with open(srv.log_path, encoding="utf-8") as log_file:
        logged = log_file.read()
    assert "Hello Node.JS" in logged and '{"reply": "not an echo"}' in logged
    assert "z" * ws_module.LOGGED_TEXT_CHARS in logged
    assert "z" * (ws_module.LOGGED_TEXT_CHARS + 1) not in logged  # bounded
    assert "Traceback" not in logged and "task failed" not in logged


async def test_counters_requests_open_messages(srv: labserver.Server) -> None:
    async with connect(srv) as ws1, connect(srv) as ws2:
        await wait_for_stat(srv, "open", 2)
        await srv.apublish("x")
        await recv_json(ws1)
        await recv_json(ws2)
        await ws1.send("hi")
    await wait_for_stat(srv, "open", 0)
    stats = ws_stats(srv)
    assert (stats["requests"], stats["messages_out"], stats["messages_in"]) == (2, 2, 1)


async def test_plain_get_without_upgrade_is_400_json(srv: labserver.Server) -> None:
    async with aiohttp.ClientSession() as session, session.get(srv.url + "/ws") as resp:
        assert resp.status == 400
        assert "WebSocket upgrade" in (await resp.json())["error"]


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("?after=-1", "after must be a non-negative integer"),
        ("?every=0", "every must be between 0.05 and 3600 seconds"),
        ("?every=nan", "every must be between 0.05 and 3600 seconds"),
        ("?every=soon", "every must be a number of seconds"),
    ],
)
async def test_bad_parameters_are_400_before_the_upgrade(srv, query, reason) -> None:
    raw = await RawSocket.open(srv, "/ws" + query)
    status, headers, body = await raw.read_response()
    raw.close()
    assert status == 400 and headers["content-type"].startswith("application/json")
    assert json.loads(body) == {"error": reason}


# --- close codes (RFC 6455 §7.4.1); the other client keeps receiving -----------------------


async def assert_other_client_still_receives(srv: labserver.Server, other: Any) -> None:
    event_id = await srv.apublish("still here")
    message = await recv_json(other)
    assert message["id"] == event_id


async def test_binary_is_refused_with_1003(srv: labserver.Server) -> None:
    async with connect(srv) as other, connect(srv) as ws:
        await ws.send(b"\x00\x01binary")
        closed = await closed_with(ws)
        assert closed.rcvd is not None and closed.rcvd.code == 1003
        await assert_other_client_still_receives(srv, other)


async def test_too_big_is_refused_with_1009(make_server: Any) -> None:
    srv = make_server(max_message_bytes=1024)
    async with connect(srv) as other, connect(srv) as ws:
        await ws.send(json.dumps({"echo": "x" * 1000}))  # under the limit: fine
        assert len((await recv_json(ws))["echo"]) == 1000
        await ws.send("y" * 1025)
        closed = await closed_with(ws)
        assert closed.rcvd is not None and closed.rcvd.code == 1009
        await assert_other_client_still_receives(srv, other)


@pytest.mark.parametrize("text", ['{"echo": oops', "[" * 40_000], ids=["broken", "too deep"])
async def test_text_that_must_be_json_and_is_not_gets_1007(srv: labserver.Server,
                                                           text: str) -> None:
    async with connect(srv) as other, connect(srv) as ws:
        await ws.send(text)
        closed = await closed_with(ws)
        assert closed.rcvd is not None and closed.rcvd.code == 1007
        assert "must be valid JSON" in closed.rcvd.reason
        await assert_other_client_still_receives(srv, other)


async def test_invalid_utf8_text_gets_1007(srv: labserver.Server) -> None:
    async with connect(srv) as other:
        raw = await RawSocket.open(srv)
        assert (await raw.read_response())[0] == 101
        raw.send_frame(Opcode.TEXT, b'{"echo": "\xff\xfe"}')
        code, _ = await raw.read_close()
        raw.close()
        assert code == 1007
        await assert_other_client_still_receives(srv, other)


@own_protocol("aiohttp's reader takes an unmasked client frame")
async def test_unmasked_client_frame_fails_the_connection_with_1002(srv: labserver.Server) -> None:
    """RFC 6455 §5.1: the server MUST close on an unmasked client frame; aiohttp alone doesn't."""
    async with connect(srv) as other:
        raw = await RawSocket.open(srv)
        assert (await raw.read_response())[0] == 101
        raw.send_frame(Opcode.TEXT, json.dumps({"echo": "masked"}).encode())
        assert json.loads((await raw.read_frame())[2]) == {"echo": "masked"}
        raw.send_frame(Opcode.TEXT, json.dumps({"echo": "unmasked"}).encode(), mask=False)
        code, _ = await raw.read_close()  # aiohttp sends its protocol errors without a reason
        await raw.read_to_eof()
        raw.close()
        assert code == 1002
        await assert_other_client_still_receives(srv, other)


@own_protocol("seeing bytes aiohttp read ahead needs its private _messages")
async def test_data_before_the_handshake_answer_is_refused(srv: labserver.Server) -> None:
    frame = Frame(Opcode.TEXT, b'{"echo": 1}').serialize(mask=True)
    raw = await RawSocket.open(srv, extra=frame)  # RFC 6455 §4.1: wait for the 101 first
    status, _, body = await raw.read_response()
    raw.close()
    assert status == 400 and "handshake" in json.loads(body)["error"]


async def test_fragments_with_a_ping_between_them_make_one_message(srv: labserver.Server) -> None:
    raw = await RawSocket.open(srv)
    assert (await raw.read_response())[0] == 101
    raw.send_frame(Opcode.TEXT, b'{"ec', fin=False)
    raw.send_frame(Opcode.CONT, b'ho": "frag', fin=False)
    raw.send_frame(Opcode.PING, b"are you there")  # control frames may interleave (§5.4)
    raw.send_frame(Opcode.CONT, b'ments"}', fin=True)
    assert await raw.read_frame() == (True, Opcode.PONG, b"are you there")
    assert await raw.read_frame() == (True, Opcode.TEXT, b'{"echo":"fragments"}')
    raw.close()


async def test_heartbeat_pings_and_cuts_a_client_that_never_pongs(make_server: Any) -> None:
    srv = make_server(heartbeat_s=0.2)
    async with connect(srv) as healthy:  # the library answers pings by itself
        raw = await RawSocket.open(srv)
        assert (await raw.read_response())[0] == 101
        fin, opcode, _ = await raw.read_frame()
        assert (fin, opcode) == (True, Opcode.PING)
        assert await raw.read_to_eof() == b""  # no pong within heartbeat_s / 2: cut off
        raw.close()
        await asyncio.sleep(0.5)  # more than two heartbeats
        await assert_other_client_still_receives(srv, healthy)
    await wait_for_stat(srv, "open", 0)


async def test_drop_closes_with_1001_and_after_resumes(srv: labserver.Server) -> None:
    async with connect(srv) as ws:
        first = await srv.apublish("before")
        assert (await recv_json(ws))["id"] == first
        assert await asyncio.to_thread(srv.drop, "ws") == 1
        closed = await closed_with(ws)
    assert closed.rcvd is not None and closed.rcvd.code == 1001
    missed = await srv.apublish("while away")
    async with connect(srv, f"?after={first}") as ws:
        assert (await recv_json(ws))["id"] == missed
    await wait_for_stat(srv, "open", 0)


# --- the slow reader ------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads RSS from /proc")
@own_protocol("aiohttp cannot send a Close behind an unread backlog: a slow client is aborted")
async def test_a_client_that_stops_reading_is_closed_1008_and_stalls_nobody(make_server) -> None:
    srv = make_server(queue_size=8, log_size=20)
    payload = "x" * 32_000
    events = 600  # about 19 MB: far more than socket buffers and the send queue hold
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.connect(("127.0.0.1", srv.port))
    slow = await websockets.connect(ws_url(srv), sock=sock, proxy=None, compression=None,
                                    max_queue=4)  # the library stops reading at 4 messages
    slow_ids: list[int] = []
    healthy_ids: list[int] = []

    async def read_slow_once_dropped() -> websockets.ConnectionClosed:
        await wait_for_stat(srv, "open", 1, timeout_s=30)  # the server gave up on it …
        try:
            async for message in slow:  # … now it reads: its backlog, then the Close frame
                slow_ids.append(json.loads(message)["id"])
        except websockets.ConnectionClosed as closed:
            return closed
        raise AssertionError("the slow client was not closed")

    async with connect(srv, max_size=None) as healthy:
        async def read_all() -> None:
            while len(healthy_ids) < events:
                healthy_ids.append((await recv_json(healthy))["id"])

        reader = asyncio.create_task(read_all())
        slow_reader = asyncio.create_task(read_slow_once_dropped())
        rss_before = rss_bytes(srv.pid)
        publish_s = await conftest.timed_publishes(srv, events, payload)
        rss_growth = rss_bytes(srv.pid) - rss_before
        await asyncio.wait_for(reader, 20)
        closed = await asyncio.wait_for(slow_reader, 30)

    assert healthy_ids == list(range(1, events + 1))  # the healthy one got every event
    assert closed.rcvd is not None
    assert (closed.rcvd.code, closed.rcvd.reason) == (1008, "send queue full")
    assert slow_ids == list(range(1, len(slow_ids) + 1)) and len(slow_ids) < events
    assert rss_growth < events * len(payload) / 3, rss_growth  # nothing piled up for the slow one
    publish_s.sort()
    assert publish_s[len(publish_s) // 2] < 0.25  # the publisher was never held up


# --- ?every=S: the chapter's setInterval, cleared on close ----------------------------------


async def test_every_sends_status_messages_that_are_not_events(srv: labserver.Server) -> None:
    async with connect(srv, "?every=0.05") as ws:
        statuses = [await recv_json(ws) for _ in range(3)]
    assert all(set(s) == {"status", "ts"} for s in statuses)
    assert statuses[0]["status"] == "A message from the server."
    assert statuses[0]["ts"] < statuses[1]["ts"] < statuses[2]["ts"]
    assert ws_stats(srv)["messages_out"] == 0  # status messages are not events


async def test_every_keeps_its_rate_when_the_loop_is_late(monkeypatch: pytest.MonkeyPatch) -> None:
    """``?every=S`` is setInterval: the n-th status is due at n×S after the open, not S after
    the previous one was sent, so a late tick does not push back every later one. Each status
    here blocks the server's loop 20 ms (its clock read made slow): ten at 50 ms then span
    0.5 s, where re-arming after each send would make 0.7 s."""
    import types

    slow_clock = types.SimpleNamespace(time=lambda: (time.sleep(0.02), time.time())[1],
                                       monotonic=time.monotonic, perf_counter=time.perf_counter)
    monkeypatch.setattr(ws_module, "time", slow_clock)
    async with conftest.serving(create_app()) as port:
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws?every=0.05", proxy=None) as ws:
            await recv_json(ws)
            first = time.monotonic()
            for _ in range(10):
                await recv_json(ws)
            span = time.monotonic() - first
    assert span < 0.62, f"ten statuses took {span:.3f} s: the timer drifts by each late tick"


@pytest.mark.parametrize("how", ["close handshake", "connection dropped", "server drop"])
@own_protocol("LabSocket's timer (aiohttp's path cancels its status task)")
async def test_every_timer_is_cancelled_when_the_socket_closes(how: str) -> None:
    """In-process server (the real ``serve()``, real sockets) so the test can see its timer."""
    app = create_app()
    async with conftest.serving(app) as port:
        url = f"ws://127.0.0.1:{port}/ws?every=0.05"
        ws = await websockets.connect(url, proxy=None, compression=None)
        await recv_json(ws)  # a status message: the timer runs
        (connection,) = app[ws_module.OPEN]
        timer = connection.handler.every_timer
        assert timer is not None and not timer.cancelled()
        if how == "close handshake":
            await ws.close()
        elif how == "connection dropped":
            ws.transport.abort()  # no Close frame: the TCP connection just ends
        else:
            assert await app[CONNECTIONS].drop("ws") == 1
        deadline = time.monotonic() + 5
        while app[ws_module.OPEN] or app[COUNTERS]["ws"].open:
            assert time.monotonic() < deadline, "the connection outlived its socket"
            await asyncio.sleep(0.02)
        assert timer.cancelled()  # the chapter's clearInterval
        assert connection.transport is not None
        deadline = time.monotonic() + 5
        while not connection.transport.is_closing():
            assert time.monotonic() < deadline, "the TCP connection stayed open"
            await asyncio.sleep(0.02)


# --- origin policy --------------------------------------------------------------------------


async def handshake_status(srv: labserver.Server, headers: dict[str, str]) -> tuple[int, bytes]:
    raw = await RawSocket.open(srv, headers=headers)
    status, _, body = await raw.read_response()
    raw.close()
    return status, body


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 101),  # no Origin: not a browser
        ({"Origin": "http://127.0.0.1:{port}"}, 101),  # same origin
        ({"Origin": "https://127.0.0.1:{port}"}, 101),  # same host:port behind a TLS front end
        ({"Origin": "http://evil.example"}, 403),
        ({"Origin": "http://127.0.0.1:1"}, 403),  # another port is another origin
        ({"Origin": "http://localhost:{port}"}, 403),  # another host name too
        ({"Origin": "null"}, 403),  # sandboxed or file:// page
        ({"Origin": "https://hub.example", "Host": "hub.example"}, 101),  # default port
        ({"Origin": "http://hub.example", "Host": "hub.example"}, 101),
        ({"Origin": "https://hub.example:8443", "Host": "hub.example"}, 403),
        ({"Origin": "http://[::1]:{port}", "Host": "[::1]:{port}"}, 101),
    ],
)
async def test_origin_policy(srv: labserver.Server, headers: dict[str, str], status: int) -> None:
    headers = {k: v.format(port=srv.port) for k, v in headers.items()}
    got, body = await handshake_status(srv, headers)
    assert got == status
    if status == 403:
        assert "may not open /ws" in json.loads(body)["error"]
        assert ws_stats(srv)["open"] == 0


async def test_allowed_origins_let_a_listed_site_in(make_server: Any) -> None:
    srv = make_server(allowed_origins=["http://partner.example"])
    assert (await handshake_status(srv, {"Origin": "http://partner.example"}))[0] == 101
    assert (await handshake_status(srv, {"Origin": "http://partner.example:80"}))[0] == 101
    assert (await handshake_status(srv, {"Origin": "http://other.example"}))[0] == 403


async def test_forwarded_host_counts_only_behind_a_trusted_proxy(make_server: Any) -> None:
    headers = {"Origin": "https://hub.example", "X-Forwarded-Host": "hub.example"}
    plain = make_server()
    assert (await handshake_status(plain, headers))[0] == 403
    proxied = make_server(trust_proxy=True)
    assert (await handshake_status(proxied, headers))[0] == 101


async def test_websockets_library_refused_with_a_foreign_origin(srv: labserver.Server) -> None:
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with connect(srv, origin="http://evil.example"):
            pass
    assert refused.value.response.status_code == 403


# --- bytes at the socket --------------------------------------------------------------------


async def test_every_byte_on_the_wire_is_counted_handshake_included(srv: labserver.Server) -> None:
    before = await srv.astats()
    raw = await RawSocket.open(srv, "/ws?after=0")
    assert (await raw.read_response())[0] == 101
    event_id = await srv.apublish({"n": 1})
    fin, opcode, payload = await raw.read_frame()
    assert (fin, opcode, json.loads(payload)["id"]) == (True, Opcode.TEXT, event_id)
    raw.send_frame(Opcode.TEXT, b'{"echo": 7}')
    assert (await raw.read_frame())[2] == b'{"echo":7}'
    raw.send_frame(Opcode.CLOSE, (1000).to_bytes(2, "big") + b"bye")
    assert (await raw.read_frame())[1] == Opcode.CLOSE
    assert await raw.read_to_eof() == b""
    raw.close()
    await wait_for_stat(srv, "open", 0)
    used = labserver.stats_diff(before, await srv.astats())["transports"]["ws"]
    assert used["bytes_in"] == len(raw.sent)
    assert used["bytes_out"] == len(raw.received)
    # a small frame costs 2 header bytes from the server, 2 + 4 (mask) from the client:
    assert len(raw.received) == len(raw.received.split(b"\r\n\r\n")[0]) + 4 + (
        2 + len(payload)) + (2 + len(b'{"echo":7}')) + (2 + 2)
    assert used["messages_out"] == 1 and used["messages_in"] == 1 and used["requests"] == 1


async def test_compression_is_negotiated_when_offered(srv: labserver.Server) -> None:
    bytes_out = {}
    for compression in (None, "deflate"):
        before = await srv.astats()
        async with connect(srv, compression=compression) as ws:
            extensions = ws.response.headers.get("Sec-WebSocket-Extensions", "")
            await srv.apublish({"text": "x" * 500})
            assert len((await recv_json(ws))["data"]["text"]) == 500
        await wait_for_stat(srv, "open", 0)
        bytes_out[compression] = labserver.stats_diff(
            before, await srv.astats())["transports"]["ws"]["bytes_out"]
        assert ("permessage-deflate" in extensions) == (compression == "deflate")
    assert bytes_out["deflate"] < bytes_out[None] - 400  # 500 x's travel compressed


# --- /whoami and trust_proxy ----------------------------------------------------------------


def whoami(srv: labserver.Server, headers: dict[str, str] | None = None) -> dict[str, Any]:
    req = urllib.request.Request(srv.url + "/whoami", headers=headers or {})
    with opener.open(req, timeout=10) as resp:
        return json.loads(resp.read())


def test_whoami_believes_the_socket_by_default(srv: labserver.Server) -> None:
    assert whoami(srv) == {"address": "127.0.0.1", "x_forwarded_for": None,
                           "trusted_proxy": False}
    spoofed = whoami(srv, {"X-Forwarded-For": "203.0.113.7"})
    assert spoofed == {"address": "127.0.0.1", "x_forwarded_for": "203.0.113.7",
                       "trusted_proxy": False}


def test_whoami_behind_a_trusted_proxy_takes_the_entry_the_proxy_added(make_server) -> None:
    srv = make_server(trust_proxy=True)
    assert whoami(srv)["address"] == "127.0.0.1"  # no header: the socket
    assert whoami(srv, {"X-Forwarded-For": "203.0.113.7"})["address"] == "203.0.113.7"
    # a client's own header, then what the proxy appended: the proxy's entry wins
    both = whoami(srv, {"X-Forwarded-For": "6.6.6.6, 198.51.100.2"})
    assert both == {"address": "198.51.100.2", "x_forwarded_for": "6.6.6.6, 198.51.100.2",
                    "trusted_proxy": True}
    assert whoami(srv, {"X-Forwarded-For": "not-an-address"})["address"] == "127.0.0.1"


# --- a real browser: Chromium's WebSocket on the demo page ----------------------------------

OPEN_STATE = "document.getElementById('state').textContent === 'OPEN (1)'"


def history(page: Any) -> list[str]:
    """The states the page saw, oldest first."""
    return page.eval_on_selector_all("#history li[data-state]",
                                     "els => els.map(e => e.dataset.state)")


def test_browser_demo_walks_the_states_and_shows_events(srv: labserver.Server,
                                                         browser_page: Any) -> None:
    page = browser_page
    page.goto(srv.url + "/ws.html")
    page.wait_for_function(OPEN_STATE, timeout=10_000)
    event_id = srv.publish({"from": "python"})
    event = page.locator(f'#events li[data-id="{event_id}"]')
    event.wait_for(timeout=10_000)
    assert '{"from":"python"}' in event.text_content()

    page.fill("#text", "round trip")
    page.click("#echo")
    page.locator('#messages li[data-kind="echo"]').wait_for(timeout=10_000)
    assert '{"echo":"round trip"}' in page.locator('#messages li[data-kind="echo"]').text_content()
    page.click("#send")  # plain text: counted, logged, not answered
    page.click("#close")
    page.locator('#history li[data-code="1000"]').wait_for(timeout=10_000)
    assert history(page) == ["CONNECTING", "OPEN", "CLOSING", "CLOSED"]

    page.click("#send")  # after CLOSED: the browser discards it without an exception
    assert "not sent: CLOSED" in page.locator('#messages li[data-kind="send"]').first.text_content()
    deadline = time.monotonic() + 5
    while ws_stats(srv)["open"]:  # the server's handler ends just after the close handshake
        assert time.monotonic() < deadline
        time.sleep(0.02)
    stats = ws_stats(srv)
    assert (stats["messages_in"], stats["messages_out"]) == (2, 1)

    page.click("#early")  # before OPEN: the browser throws
    error = page.locator('#messages li[data-kind="send-error"]')
    error.wait_for(timeout=10_000)
    assert "send() in CONNECTING: InvalidStateError" in error.text_content()


def test_browser_resumes_with_after_once_the_server_drops_it(srv: labserver.Server,
                                                             browser_page: Any) -> None:
    page = browser_page
    page.goto(srv.url + "/ws.html")
    page.wait_for_function(OPEN_STATE, timeout=10_000)
    first = srv.publish("before")
    page.locator(f'#events li[data-id="{first}"]').wait_for(timeout=10_000)
    page.click("#drop")
    page.locator('#history li[data-code="1001"]').wait_for(timeout=10_000)  # going away
    missed = srv.publish("while away")  # WebSocket has no automatic reconnection …
    page.click("#connect")  # … the page reconnects with ?after=<last id>
    page.locator(f'#events li[data-id="{missed}"]').wait_for(timeout=10_000)
    assert f"after={first}" in page.locator("#url").text_content()
    ids = page.eval_on_selector_all("#events li[data-id]", "els => els.map(e => +e.dataset.id)")
    assert sorted(ids) == [first, missed]


OPEN_FROM_PAGE = """url => new Promise(resolve => {
  const ws = new WebSocket(url);
  ws.onopen = () => { resolve("open"); ws.close(); };
  ws.onclose = (e) => resolve("closed " + e.code);
})"""


@pytest.mark.parametrize("allowed", [False, True])
def test_browser_page_from_a_foreign_site_is_refused(make_server: Any, browser_page: Any,
                                                     allowed: bool) -> None:
    """Cross-site WebSocket hijacking: another site's page opens a socket to our server.

    The other site is another labserver on another port (another origin; both on loopback,
    so that Chromium's own Private Network Access rules are not what refuses it).
    """
    foreign = make_server()
    srv = make_server(allowed_origins=[foreign.url] if allowed else [])
    page = browser_page
    page.goto(foreign.url + "/")
    outcome = page.evaluate(OPEN_FROM_PAGE, ws_url(srv))
    assert outcome == ("open" if allowed else "closed 1006")  # a browser hides the 403
    stats = ws_stats(srv)
    assert stats["requests"] == 1 and stats["messages_out"] == 0


# --- RFC 6455 edge cases on the bare socket ---------------------------------------------------

DEFLATE_TAIL = b"\x00\x00\xff\xff"  # RFC 7692 §7.2.1: dropped by the sender, added back to read


async def open_with_deflate(srv: labserver.Server, offer: str = "permessage-deflate") -> RawSocket:
    """A RawSocket that offered permessage-deflate; the 101 answer must accept it."""
    raw = await RawSocket.open(srv, headers={"Sec-WebSocket-Extensions": offer})
    status, headers, _ = await raw.read_response()
    assert status == 101
    assert headers["sec-websocket-extensions"] == "permessage-deflate"
    return raw


def deflated(data: bytes) -> bytes:
    """A client's compressed message payload: deflate, sync flush, the tail dropped."""
    compressor = zlib.compressobj(wbits=-15)
    return (compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


def with_first_byte(frame: bytes, first_byte: int) -> bytes:
    """A frame ``websockets`` will not build (RSV1 by hand, a long control frame): one of its
    frames with FIN, RSV and the opcode replaced."""
    return bytes((first_byte,)) + frame[1:]


async def test_compressed_client_message_is_inflated_and_echoed(srv: labserver.Server) -> None:
    async with connect(srv, compression="deflate") as ws:
        assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
        before = await srv.astats()
        await ws.send(json.dumps({"echo": "x" * 2000}))
        assert await recv_json(ws) == {"echo": "x" * 2000}
        used = labserver.stats_diff(before, await srv.astats())["transports"]["ws"]
    assert used["messages_in"] == 1
    assert used["bytes_in"] < 200  # the 2 kB message crossed the wire compressed
    assert used["bytes_out"] < 200  # and so did the echo


async def test_fragmented_compressed_message_is_one_message(srv: labserver.Server) -> None:
    """RFC 7692 §6.1: RSV1 on the first fragment only; the fragments' payloads, joined, are one
    compressed message (``websockets``' own encoder builds them)."""
    raw = await open_with_deflate(srv)
    encoder = PerMessageDeflate(remote_no_context_takeover=False, local_no_context_takeover=False,
                                remote_max_window_bits=15, local_max_window_bits=15)
    text = "y" * 3000
    for opcode, data, fin in [(Opcode.TEXT, b'{"echo": "', False),
                              (Opcode.CONT, text.encode(), False),
                              (Opcode.PING, b"between", True),  # not compressed: a control frame
                              (Opcode.CONT, b'"}', True)]:
        raw.write(Frame(opcode, data, fin=fin).serialize(mask=True, extensions=[encoder]))
    assert await raw.read_frame() == (True, Opcode.PONG, b"between")
    fin, opcode, payload = await raw.read_frame()
    inflated = zlib.decompressobj(wbits=-15).decompress(payload + DEFLATE_TAIL)
    assert (fin, opcode, json.loads(inflated)) == (True, Opcode.TEXT, {"echo": text})
    assert len(payload) < 100  # the echo came back compressed too
    raw.close()


@own_protocol("aiohttp closes with 1009 but no reason")
async def test_compressed_zip_bomb_over_the_limit_is_1009(make_server: Any) -> None:
    srv = make_server(max_message_bytes=64 * 1024)
    async with connect(srv) as other:
        raw = await open_with_deflate(srv)
        bomb = deflated(bytes(1 << 20))  # 1 MB of zeros in about 1 kB: under the frame limit
        assert len(bomb) < 2000
        raw.write(with_first_byte(Frame(Opcode.TEXT, bomb).serialize(mask=True), 0x80 | 0x40 | 1))
        code, reason = await raw.read_close()
        assert (code, reason) == (1009, f"a message may have at most {64 * 1024} bytes")
        assert await raw.read_to_eof() == b""
        raw.close()
        await assert_other_client_still_receives(srv, other)


@own_protocol("aiohttp bounds a message's bytes, not its fragments")
async def test_a_flood_of_empty_continuation_frames_is_1009(srv: labserver.Server) -> None:
    """Issue 14, finding 6, its bytes: a text frame with FIN=0, then empty continuation frames
    (6 bytes each) — they once grew the message's list of parts without bound. Now each counts
    64 bytes against max_message_bytes: the 1024th closes the connection with 1009."""
    async with connect(srv) as other:
        raw = await RawSocket.open(srv)
        assert (await raw.read_response())[0] == 101
        raw.send_frame(Opcode.TEXT, b"x", fin=False)
        empty = Frame(Opcode.CONT, b"", fin=False).serialize(mask=True)
        assert len(empty) == 6
        raw.write(empty * 2000)  # one read: the server closes with nothing left unread
        code, reason = await raw.read_close()
        assert (code, reason) == (1009, f"a message may have at most {64 * 1024} bytes, each "
                                        "continuation frame counting 64 more")
        raw.close()
        await assert_other_client_still_receives(srv, other)


async def test_ping_payload_comes_back_in_the_pong(srv: labserver.Server) -> None:
    raw = await RawSocket.open(srv)
    assert (await raw.read_response())[0] == 101
    for payload in (b"", b"\x00\xffany bytes", b"p" * 125):  # up to the control frame limit
        raw.send_frame(Opcode.PING, payload)
        assert await raw.read_frame() == (True, Opcode.PONG, payload)
    raw.close()


async def test_control_frame_of_126_bytes_is_1002(srv: labserver.Server) -> None:
    async with connect(srv) as other:
        raw = await RawSocket.open(srv)
        assert (await raw.read_response())[0] == 101
        ping = with_first_byte(Frame(Opcode.BINARY, b"p" * 126).serialize(mask=True), 0x89)
        raw.write(ping)  # §5.5: a control frame's payload is 125 bytes at most
        code, _ = await raw.read_close()
        assert code == 1002
        assert await raw.read_to_eof() == b""  # no Pong: the connection failed
        raw.close()
        await assert_other_client_still_receives(srv, other)


@own_protocol("aiohttp answers a Close without a code with 1000")
async def test_close_without_a_code_gets_an_empty_close_then_eof(srv: labserver.Server) -> None:
    async with connect(srv) as other:
        await wait_for_stat(srv, "open", 1)
        raw = await RawSocket.open(srv)
        assert (await raw.read_response())[0] == 101
        raw.send_frame(Opcode.CLOSE, b"")
        assert await raw.read_frame() == (True, Opcode.CLOSE, b"")  # no code to echo (§5.5.1)
        assert await raw.read_to_eof() == b""  # the server closes the TCP connection (§7.1.1)
        raw.close()
        await wait_for_stat(srv, "open", 1)
        await assert_other_client_still_receives(srv, other)


@own_protocol("aiohttp closes with 1002 but no reason")
async def test_close_with_code_1005_is_1002(srv: labserver.Server) -> None:
    async with connect(srv) as other:
        raw = await RawSocket.open(srv)
        assert (await raw.read_response())[0] == 101
        raw.send_frame(Opcode.CLOSE, (1005).to_bytes(2, "big"))  # "no code": never sent (§7.4.1)
        code, reason = await raw.read_close()
        assert code == 1002 and "1005" in reason
        assert await raw.read_to_eof() == b""
        raw.close()
        await assert_other_client_still_receives(srv, other)


async def test_no_pong_once_the_server_has_sent_close(srv: labserver.Server) -> None:
    """§5.5.1: nothing follows a Close frame, not even a Pong."""
    async with connect(srv) as other:
        raw = await RawSocket.open(srv)
        assert (await raw.read_response())[0] == 101
        raw.send_frame(Opcode.BINARY, b"\x00")
        assert (await raw.read_close())[0] == 1003
        raw.send_frame(Opcode.PING, b"late")
        raw.send_frame(Opcode.CLOSE, (1000).to_bytes(2, "big"))  # completes the close handshake
        assert await raw.read_to_eof() == b""  # no Pong before the end
        raw.close()
        await assert_other_client_still_receives(srv, other)


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-WebSocket-Version": "8"},
        {"Sec-WebSocket-Key": "not a key"},
        {"Sec-WebSocket-Key": base64.b64encode(bytes(15)).decode()},  # 15 bytes, not 16
        {"Sec-WebSocket-Key": ""},  # missing
    ],
)
async def test_bad_handshake_is_400_json_before_the_upgrade(srv: labserver.Server,
                                                            headers: dict[str, str]) -> None:
    if headers.get("Sec-WebSocket-Version") == "8" and not fast_by_default():
        pytest.skip("aiohttp's WebSocketResponse also speaks versions 7 and 8 (fast tier off)")
    async with connect(srv) as other:
        raw = await RawSocket.open(srv, headers=headers)
        status, answer, body = await raw.read_response()
        raw.close()
        assert status == 400 and answer["content-type"].startswith("application/json")
        assert "WebSocket upgrade" in json.loads(body)["error"]
        assert answer["sec-websocket-version"] == "13"  # §4.4: the version this server speaks
        assert ws_stats(srv)["open"] == 1
        await assert_other_client_still_receives(srv, other)


async def test_unreadable_deflate_offer_is_declined_not_an_error(srv: labserver.Server) -> None:
    """RFC 7692 §7.1.2: a window size is ASCII digits; any other offer is declined, and the
    socket opens without compression."""
    offer = "permessage-deflate; server_max_window_bits=\u00b2"  # a superscript two
    raw = await RawSocket.open(srv, headers={"Sec-WebSocket-Extensions": offer})
    status, headers, _ = await raw.read_response()
    assert status == 101 and "sec-websocket-extensions" not in headers
    raw.send_frame(Opcode.TEXT, b'{"echo": 1}')
    assert await raw.read_frame() == (True, Opcode.TEXT, b'{"echo":1}')
    raw.close()


@own_protocol("aiohttp reads the first Sec-WebSocket-Extensions line only")
async def test_extension_offers_on_several_header_lines_are_one_list(srv: labserver.Server) -> None:
    """RFC 6455 §9.1: ``Sec-WebSocket-Extensions`` may be repeated; the lines make one list."""
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    request = handshake_request(srv).replace(
        b"\r\n\r\n", b"\r\nSec-WebSocket-Extensions: x-unknown-extension"
                     b"\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n")
    raw = RawSocket(reader, writer)
    raw.write(request)
    status, headers, _ = await raw.read_response()
    raw.close()
    assert status == 101 and headers["sec-websocket-extensions"] == "permessage-deflate"


@pytest.mark.parametrize(
    ("offer", "answer"),
    [
        ({"server_no_context_takeover": True}, "permessage-deflate; server_no_context_takeover"),
        ({"server_max_window_bits": 10}, "permessage-deflate; server_max_window_bits=10"),
    ],
)
async def test_deflate_parameters_work_end_to_end(srv: labserver.Server, offer: dict[str, Any],
                                                  answer: str) -> None:
    extension = ClientPerMessageDeflateFactory(client_max_window_bits=None, **offer)
    async with connect(srv, extensions=[extension]) as ws:
        assert ws.response.headers["Sec-WebSocket-Extensions"] == answer
        data = {"text": "z" * 500}
        ids = [await srv.apublish(data) for _ in range(3)]
        received = [await recv_json(ws) for _ in ids]
        await ws.send(json.dumps({"echo": "w" * 1000}))
        assert await recv_json(ws) == {"echo": "w" * 1000}
    assert [(e["id"], e["data"]) for e in received] == [(i, data) for i in ids]
