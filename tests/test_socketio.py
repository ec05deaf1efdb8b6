"""Socket.IO at ``/socket.io/`` over real sockets: the contract of DESIGN.md, the Engine.IO
packets on the wire, the counters, the origin rule of ``/ws``, the polling-only fallback,
``POST /drop`` and resume, misbehaving and slow clients, the vendored official client and the
chapter's own page in Chromium.

Three kinds of client: python-socketio's ``AsyncClient`` (what a learner writes), Engine.IO
spoken by hand over aiohttp (to see and send the raw packets), and the official JS client in
Chromium.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from importlib import resources
from typing import Any

import aiohttp
import conftest
import pytest
import socketio
import websockets
from aiohttp import web

import labserver
from labserver.app import create_app
from labserver.keys import SIO

opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

#: The chapter's index.html (12.3), as the seed chapter prints it: the page must stay verbatim.
CHAPTER_PAGE = """\
<!-- index.html (client) -->
<script src="/socket.io/socket.io.js"></script>
<script>
    const socket = io.connect('http://localhost:8005', {
        path: '/socket.io',
        transports: ['websocket'], // use WebSocket from the start, skipping polling
    });

    socket.on('news', (data) => {
        console.log(data);
        socket.emit('reply', 'Hello Node.JS');
    });
</script>
"""

TRANSPORTS = {"default": None, "websocket": ["websocket"], "polling": ["polling"]}


def sio_stats(srv: labserver.Server) -> dict[str, int]:
    return srv.stats()["transports"]["socketio"]


async def wait_until(predicate: Any, what: str, timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.02)


wait_for_stat = functools.partial(conftest.wait_for_stat, transport="socketio")


class NewsClient:
    """A python-socketio ``AsyncClient`` that records the ``news`` it gets and resumes by id."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("reconnection_delay", 0.05)
        kwargs.setdefault("reconnection_delay_max", 0.1)
        self.sio = socketio.AsyncClient(**kwargs)
        self.events: list[dict[str, Any]] = []
        self.gaps: list[dict[str, int]] = []
        self.connects = 0
        self.sio.on("news", self.events.append)
        self.sio.on("gap", self.gaps.append)
        self.sio.on("connect", self._connected)

    def _connected(self) -> None:
        self.connects += 1

    @property
    def ids(self) -> list[int]:
        return [e["id"] for e in self.events]

    def auth(self) -> dict[str, int]:
        return {"after": self.ids[-1]} if self.ids else {}

    async def connect(self, srv: labserver.Server, transports: list[str] | None = None,
                      resume: bool = True, **kwargs: Any) -> NewsClient:
        await self.sio.connect(srv.url, transports=transports,
                               auth=self.auth if resume else None, wait_timeout=5, **kwargs)
        return self

    async def wait_for(self, n: int, timeout_s: float = 5) -> None:
        await wait_until(lambda: len(self.events) >= n, f"{n} news events", timeout_s)

    async def close(self) -> None:
        await self.sio.disconnect()


class EngineIO:
    """Engine.IO 4 spoken by hand over aiohttp: the raw packets a lesson shows."""

    def __init__(self, srv: labserver.Server, session: aiohttp.ClientSession) -> None:
        self.base = srv.url + "/socket.io/?EIO=4"
        self.ws_base = srv.url.replace("http://", "ws://", 1) + "/socket.io/?EIO=4"
        self.session = session
        self.sid = ""

    async def open_polling(self) -> dict[str, Any]:
        text = await self.get()
        assert text[0] == "0", text  # the open packet
        handshake = json.loads(text[1:])
        self.sid = handshake["sid"]
        return handshake

    async def get(self, **headers: str) -> str:
        sid = f"&sid={self.sid}" if self.sid else ""
        async with self.session.get(f"{self.base}&transport=polling{sid}",
                                    headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.text()

    async def post(self, body: str) -> tuple[int, str]:
        async with self.session.post(f"{self.base}&transport=polling&sid={self.sid}",
                                     data=body.encode()) as resp:
            return resp.status, await resp.text()

    async def upgrade(self) -> aiohttp.ClientWebSocketResponse:
        held = asyncio.create_task(self.get())  # a polling client always has a GET waiting
        ws = await self.session.ws_connect(f"{self.ws_base}&transport=websocket&sid={self.sid}")
        await ws.send_str("2probe")
        assert (await ws.receive_str(timeout=5)) == "3probe"
        assert await asyncio.wait_for(held, 5) == "6"  # the server ends the poll: noop
        await ws.send_str("5")  # upgrade: from now on the session is this WebSocket
        assert await next_text(ws) == "6"  # acknowledged with a noop
        return ws

    async def open_websocket(self) -> aiohttp.ClientWebSocketResponse:
        ws = await self.session.ws_connect(f"{self.ws_base}&transport=websocket")
        opened = await ws.receive_str(timeout=5)
        assert opened[0] == "0", opened
        self.sid = json.loads(opened[1:])["sid"]
        await ws.send_str("40")
        connected = await ws.receive_str(timeout=5)
        assert connected.startswith("40{"), connected
        return ws


async def next_text(ws: aiohttp.ClientWebSocketResponse, skip: str = "2") -> str:
    """The next text message that is not a ping (answered, as a client must)."""
    while True:
        text = await ws.receive_str(timeout=5)
        if text != skip:
            return text
        await ws.send_str("3")


# --- the contract: news out, reply in, acks -------------------------------------------------


@pytest.mark.parametrize("name", TRANSPORTS)
async def test_news_is_every_event_and_reply_is_counted_and_acked(srv, name: str) -> None:
    client = await NewsClient().connect(srv, TRANSPORTS[name])
    try:
        before = await srv.astats()
        ids = [await srv.apublish({"n": n, "text": "héllo"}) for n in range(3)]
        await client.wait_for(3)
        ack = await client.sio.call("reply", "Hello Node.JS", timeout=5)  # asks for an ack
        await client.sio.emit("reply", "no ack asked")  # counted, not acknowledged
        await wait_for_stat(srv, "messages_in", before["transports"]["socketio"]["messages_in"] + 2)
        expected_transport = "polling" if name == "polling" else "websocket"
        assert client.sio.transport() == expected_transport
    finally:
        await client.close()
    assert client.ids == ids
    polled = json.loads(opener.open(srv.url + "/poll?after=0").read())["events"]
    assert client.events == polled  # the same {"id", "data", "ts"} objects as every transport
    assert ack == {"ok": True}
    counts = srv.stats_since(before)["transports"]["socketio"]
    assert counts["messages_out"] == 3 and counts["messages_in"] == 2


async def test_engineio_packets_on_the_wire(make_server: Any) -> None:
    """Polling handshake, Socket.IO connect, an event, the upgrade, a ping: packet by packet."""
    srv = make_server(heartbeat_s=1, max_message_bytes=4096)
    async with aiohttp.ClientSession() as session:
        eio = EngineIO(srv, session)
        handshake = await eio.open_polling()
        assert handshake["upgrades"] == ["websocket"]
        assert handshake["pingInterval"] == 1000 and handshake["maxPayload"] == 4096
        assert await eio.post("40") == (200, "OK")  # connect to namespace "/"
        connected = await eio.get()
        assert connected.startswith('40{"sid":')
        event_id = await srv.apublish({"price": 101})
        polled = await eio.get()
        # The event's JSON text is the one the log made: spliced into the packet, not re-encoded.
        event_json = opener.open(f"{srv.url}/poll?after={event_id - 1}").read().decode()
        event_json = event_json[len('{"events":['):event_json.index('],"last_id"')]
        assert polled == f'42["news",{event_json}]'
        ws = await eio.upgrade()
        event_id = await srv.apublish("after the upgrade")
        news = json.loads((await next_text(ws))[2:])
        assert news[0] == "news" and news[1]["id"] == event_id
        assert await ws.receive_str(timeout=5) == "2"  # the server's ping, every heartbeat_s
        await ws.send_str("3")
        await ws.send_str('421["reply","hi"]')  # an event asking for ack 1
        assert await next_text(ws) == '431[{"ok":true}]'
        await ws.close()


async def test_every_engineio_request_and_the_upgrade_are_counted(srv: labserver.Server) -> None:
    before = srv.stats()
    async with aiohttp.ClientSession() as session:
        eio = EngineIO(srv, session)
        await eio.open_polling()  # 1: GET, the open packet
        await eio.post("40")  # 2: POST
        await eio.get()  # 3: GET, the connect answer
        ws = await eio.upgrade()  # 4: GET with Upgrade: websocket
        await srv.apublish("x")
        await next_text(ws)
        await ws.close()
        async with session.get(srv.url + "/socket.io/socket.io.js") as resp:  # no transport
            await resp.read()
    counts = srv.stats_since(before)["transports"]["socketio"]
    assert counts["requests"] == 5  # and 5: the GET held during the upgrade
    assert counts["messages_out"] == 1


async def test_bytes_are_counted_at_the_socket(srv: labserver.Server) -> None:
    """One polling handshake over a raw TCP connection: every byte either way, headers too."""
    before = srv.stats()
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    request = (f"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}"
               "\r\nConnection: close\r\n\r\n").encode()
    writer.write(request)
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200") and b'\r\n\r\n0{"sid":' in answer
    counts = srv.stats_since(before)["transports"]["socketio"]
    assert (counts["bytes_in"], counts["bytes_out"]) == (len(request), len(answer))


async def test_websocket_bytes_include_the_upgrade_and_frame_headers(srv) -> None:
    before = srv.stats()
    async with aiohttp.ClientSession() as session:
        ws = await EngineIO(srv, session).open_websocket()
        payload = "y" * 300
        event_id = await srv.apublish(payload)
        packet = await next_text(ws)
        await ws.close()
    assert json.loads(packet[2:])[1]["id"] == event_id
    counts = srv.stats_since(before)["transports"]["socketio"]
    # The 101 answer (~130 bytes), the open and connect packets and the event, each in a frame.
    assert counts["bytes_out"] > len(packet) + 2 + 4 + 130
    assert counts["requests"] == 1


def test_routes_reach_the_socketio_server_through_an_app_key() -> None:
    """The chapter's ``app.set('io', io)`` / ``req.app.get('io')``: ``request.app[SIO]``."""
    app = create_app()
    assert isinstance(app[SIO], socketio.AsyncServer)

    async def notice(request: web.Request) -> web.Response:
        await request.app[SIO].emit("notice", await request.json())
        return web.json_response({"ok": True})

    app.router.add_post("/notice", notice)

    async def scenario() -> dict[str, Any]:
        async with conftest.serving(app) as port:
            client = socketio.AsyncClient()
            got: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            client.on("notice", got.set_result)
            try:
                await client.connect(f"http://127.0.0.1:{port}", wait_timeout=5)
                async with aiohttp.ClientSession() as session:
                    await session.post(f"http://127.0.0.1:{port}/notice", json={"text": "hi"})
                return await asyncio.wait_for(got, 5)
            finally:
                await client.disconnect()

    assert asyncio.run(scenario()) == {"text": "hi"}


# --- origins: the /ws rule ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "status"),
    [
        (None, 200),  # not a browser
        ("http://127.0.0.1:{port}", 200),  # same origin
        ("https://127.0.0.1:{port}", 200),  # behind a TLS front end: the scheme is not compared
        ("http://localhost:{port}", 403),  # another host name is another origin
        ("http://127.0.0.1:1", 403),  # another port
        ("http://evil.example", 403),
        ("null", 403),  # a sandboxed or file:// page
    ],
)
async def test_origin_policy(srv: labserver.Server, origin: str | None, status: int) -> None:
    headers = {"Origin": origin.format(port=srv.port)} if origin else {}
    url = srv.url + "/socket.io/?EIO=4&transport=polling"
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers=headers) as resp:
            assert resp.status == status
            if status == 403:
                assert "not in allowed_origins" in (await resp.json())["error"]
        if status == 403:  # refused before the upgrade too
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(url.replace("polling", "websocket"), headers=headers)
            assert refused.value.status == 403


async def test_allowed_origins_let_a_listed_site_in_with_cors(make_server: Any) -> None:
    srv = make_server(allowed_origins=["http://localhost:8888"])
    url = srv.url + "/socket.io/?EIO=4&transport=polling"
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers={"Origin": "http://localhost:8888"}) as resp:
            assert resp.status == 200
            assert resp.headers["Access-Control-Allow-Origin"] == "http://localhost:8888"
        async with session.get(url, headers={"Origin": "http://localhost:9999"}) as resp:
            assert resp.status == 403


async def test_forwarded_host_counts_only_behind_a_trusted_proxy(make_server: Any) -> None:
    headers = {"Origin": "https://hub.example", "X-Forwarded-Host": "hub.example:443"}
    for trust_proxy, status in ((False, 403), (True, 200)):
        srv = make_server(trust_proxy=trust_proxy)
        async with aiohttp.ClientSession() as session, session.get(
            srv.url + "/socket.io/?EIO=4&transport=polling", headers=headers
        ) as resp:
            assert resp.status == status


# --- the fallback: a server that refuses WebSocket ------------------------------------------


async def test_polling_only_server_refuses_websocket_and_the_default_client_works(
    make_server: Any,
) -> None:
    srv = make_server(socketio_transports=["polling"])
    async with aiohttp.ClientSession() as session:
        handshake = await EngineIO(srv, session).open_polling()
        assert handshake["upgrades"] == []  # no upgrade offered
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(srv.url + "/socket.io/?EIO=4&transport=websocket")
        assert refused.value.status == 400
    client = await NewsClient().connect(srv)  # default transports: polling, then upgrade
    try:
        ids = [await srv.apublish(n) for n in range(5)]
        await client.wait_for(5)
        assert client.sio.transport() == "polling"
        with pytest.raises(socketio.exceptions.ConnectionError):
            await NewsClient(reconnection=False).connect(srv, ["websocket"])
    finally:
        await client.close()
    assert client.ids == ids


# --- drop, resume, gaps ---------------------------------------------------------------------


@pytest.mark.parametrize("name", TRANSPORTS)
async def test_drop_disconnects_and_the_client_resumes_with_after(srv, name: str) -> None:
    client = await NewsClient().connect(srv, TRANSPORTS[name])
    try:
        await srv.apublish("before")
        await client.wait_for(1)
        await wait_for_stat(srv, "open", 1)
        assert await asyncio.to_thread(srv.drop, "socketio") == 1
        for n in range(3):  # published while the client is away or reconnecting
            await srv.apublish(n)
        await wait_until(lambda: client.connects == 2, "a reconnection")
        await srv.apublish("after")
        await client.wait_for(5)
        await wait_for_stat(srv, "open", 1)
    finally:
        await client.close()
    assert client.ids == [1, 2, 3, 4, 5]  # every event once, in order
    await wait_for_stat(srv, "open", 0)


async def test_resume_across_a_gap_says_so_first(make_server: Any) -> None:
    srv = make_server(log_size=3)
    for n in range(6):
        await srv.apublish(n)
    client = NewsClient()
    client.events.append({"id": 1})  # as if event 1 was received by an earlier connection
    await client.connect(srv)
    await client.wait_for(4)
    await client.close()
    assert client.gaps == [{"after": 1, "oldest": 4}]
    assert client.ids == [1, 4, 5, 6]


async def test_cursor_from_before_a_restart_gets_the_log(srv: labserver.Server) -> None:
    for n in range(2):
        await srv.apublish(n)
    client = NewsClient()
    client.events.append({"id": 100})
    await client.connect(srv)
    await client.wait_for(3)
    await client.close()
    assert client.gaps == [{"after": 100, "oldest": 1}]
    assert client.ids == [100, 1, 2]


async def test_replay_racing_the_publisher_loses_and_repeats_nothing(srv) -> None:
    for n in range(20):
        await srv.apublish(n)

    async def publish_more() -> None:
        for n in range(60):
            await srv.apublish(n)

    publisher = asyncio.create_task(publish_more())
    clients = []
    for after in (0, 5, 10):
        client = NewsClient()
        client.events.append({"id": after})  # as if received earlier: auth {"after": after}
        clients.append(await client.connect(srv))
        await asyncio.sleep(0.05)
    await publisher
    for client, after in zip(clients, (0, 5, 10), strict=True):
        await client.wait_for(81 - after)
        await client.close()
        assert client.ids == list(range(after, 81))


async def test_a_bad_after_is_refused_with_a_reason(srv: labserver.Server) -> None:
    client = socketio.AsyncClient(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(srv.url, auth={"after": -1}, wait_timeout=5)
    async with aiohttp.ClientSession() as session:
        eio = EngineIO(srv, session)
        await eio.open_polling()
        await eio.post('40{"after":"yesterday"}')
        refused = await eio.get()
    assert refused.startswith("44")  # CONNECT_ERROR, with the reason
    assert "non-negative integer" in json.loads(refused[2:])["message"]


# --- misbehaving and slow clients -----------------------------------------------------------


@pytest.mark.parametrize(
    ("packet", "close_code"),
    [
        ("x", None),  # not an Engine.IO packet: the connection is cut
        ("4garbage", 1000),  # an Engine.IO message that is not a Socket.IO packet
        ("42", 1000),  # an event without its JSON array
        ('42["reply",{', 1000),  # unfinished JSON
        ('42["reply","' + "y" * 2000 + '"]', 1009),  # over max_message_bytes
    ],
)
async def test_a_misbehaving_websocket_client_is_dropped_and_others_keep_receiving(
    make_server: Any, packet: str, close_code: int | None,
) -> None:
    srv = make_server(max_message_bytes=1024)
    good = await NewsClient().connect(srv)
    try:
        await srv.apublish("first")
        async with aiohttp.ClientSession() as session:
            bad = await EngineIO(srv, session).open_websocket()
            await wait_for_stat(srv, "open", 2)
            await bad.send_str(packet)
            message = await bad.receive(timeout=5)
            while message.type == aiohttp.WSMsgType.TEXT:  # what was queued before the drop
                message = await bad.receive(timeout=5)
            assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            if close_code is not None:
                assert message.data == close_code
            await wait_for_stat(srv, "open", 1)
        await srv.apublish("second")
        await good.wait_for(2)
    finally:
        await good.close()
    assert good.ids == [1, 2]


@pytest.mark.parametrize("body", ["4garbage", '42["reply","' + "y" * 2000 + '"]'])
async def test_a_misbehaving_polling_client_is_dropped(make_server: Any, body: str) -> None:
    srv = make_server(max_message_bytes=1024)
    good = await NewsClient().connect(srv, ["polling"])
    try:
        async with aiohttp.ClientSession() as session:
            bad = EngineIO(srv, session)
            await bad.open_polling()
            await bad.post("40")
            await bad.get()
            await wait_for_stat(srv, "open", 2)
            held = asyncio.create_task(bad.get())  # a polling client always has a GET waiting
            await asyncio.sleep(0.1)
            status, _ = await bad.post(body)
            answer = await asyncio.wait_for(held, 5)
            assert status == 400 or answer in ("", "1")
            await wait_for_stat(srv, "open", 1)
            async with session.get(f"{bad.base}&transport=polling&sid={bad.sid}") as resp:
                assert resp.status == 400  # the session is gone
        await srv.apublish("still here")
        await good.wait_for(1)
    finally:
        await good.close()


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="small socket buffers")
async def test_a_client_that_stops_reading_is_dropped_and_stalls_nobody(make_server) -> None:
    srv = make_server(queue_size=8, log_size=20)
    payload = "x" * 32_000
    events = 300  # about 10 MB: more than socket buffers hold
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.connect(("127.0.0.1", srv.port))
    ws_url = srv.url.replace("http://", "ws://", 1) + "/socket.io/?EIO=4&transport=websocket"
    slow = await websockets.connect(ws_url, sock=sock, proxy=None, compression=None,
                                    max_queue=4)  # the library stops reading at 4 messages
    assert (await slow.recv()).startswith("0{")
    await slow.send("40")
    healthy = await NewsClient().connect(srv, ["websocket"])
    try:
        await wait_for_stat(srv, "open", 2)
        publish_s = await conftest.timed_publishes(srv, events, payload)
        await wait_for_stat(srv, "open", 1, timeout_s=20)  # the slow one was dropped …
        await healthy.wait_for(events, timeout_s=30)
        with pytest.raises(websockets.ConnectionClosed):  # … and its connection cut
            async with asyncio.timeout(10):
                async for _ in slow:  # its backlog, then the end of the connection
                    pass
    finally:
        await healthy.close()
        sock.close()
    assert healthy.ids == list(range(1, events + 1))
    publish_s.sort()
    assert publish_s[len(publish_s) // 2] < 0.25  # the publisher was never held up


# --- the vendored client and the chapter's page ---------------------------------------------


def static_bytes(*parts: str) -> bytes:
    return resources.files("labserver").joinpath("static", *parts).read_bytes()


def test_the_official_client_is_served_where_node_serves_it(srv: labserver.Server) -> None:
    before = srv.stats()
    with opener.open(srv.url + "/socket.io/socket.io.js") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/javascript; charset=utf-8"
        body = resp.read()
    assert body == static_bytes("socket.io", "socket.io.min.js")
    assert body.startswith(b"/*!\n * Socket.IO v4.")  # protocol 5, what python-socketio speaks
    version = body.split(b"\n")[1].split(b"v")[1].decode()
    readme = static_bytes("socket.io", "README").decode()
    assert f"socket.io-client {version}" in readme
    assert "MIT License" in static_bytes("socket.io", "LICENSE").decode()
    counts = srv.stats_since(before)["transports"]["socketio"]
    assert counts["requests"] == counts["bytes_out"] == 0  # not Socket.IO traffic


def test_the_chapters_page_is_served_verbatim(srv: labserver.Server) -> None:
    with opener.open(srv.url + "/chapter12.html") as resp:
        assert resp.headers["Content-Type"].startswith("text/html")
        assert resp.read().decode() == CHAPTER_PAGE


def test_the_demo_is_linked_from_the_index(srv: labserver.Server) -> None:
    index = opener.open(srv.url + "/").read().decode()
    assert 'href="socketio.html"' in index and 'href="chapter12.html"' in index


# --- real Chromium --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "history"),
    [
        ("", ["polling", "websocket"]),  # polling first, then the upgrade
        ("?transports=websocket", ["websocket"]),  # the chapter's option
        ("?transports=polling", ["polling"]),
    ],
)
def test_browser_official_client_news_reply_ack(
    srv: labserver.Server, browser_page: Any, query: str, history: list[str],
) -> None:
    page = browser_page
    page.goto(srv.browser_url + "socketio.html" + query)
    page.wait_for_function("document.getElementById('state').textContent === 'connected'",
                           timeout=10_000)
    if len(history) > 1:
        page.wait_for_function("document.getElementById('transport').textContent === "
                               "'websocket'", timeout=10_000)
    before = srv.stats()
    event_id = srv.publish({"from": "python"})
    page.wait_for_selector(f"#events li[data-id='{event_id}'][data-acked='true']",
                           timeout=10_000)
    assert page.inner_text("#transport") == history[-1]
    shown = [step.split(" (")[0] for step in page.inner_text("#history").split(" → ")]
    assert shown == history
    assert f'42["news",{{"id":{event_id},' in page.inner_text("#wire")
    counts = srv.stats_since(before)["transports"]["socketio"]
    assert counts["messages_out"] == 1 and counts["messages_in"] == 1


def test_browser_default_client_falls_back_on_a_polling_only_server(
    make_server: Any, browser_page: Any,
) -> None:
    srv = make_server(socketio_transports=["polling"])
    page = browser_page
    page.goto(srv.browser_url + "socketio.html")  # default transports: polling, then upgrade
    page.wait_for_function("document.getElementById('state').textContent === 'connected'",
                           timeout=10_000)
    event_id = srv.publish("over polling")
    page.wait_for_selector(f"#events li[data-id='{event_id}'][data-acked='true']",
                           timeout=10_000)
    history = page.inner_text("#history")
    assert history.startswith("polling (") and "→" not in history  # no upgrade was offered
    assert page.inner_text("#transport") == "polling"


def test_browser_resumes_after_drop(srv: labserver.Server, browser_page: Any) -> None:
    page = browser_page
    page.goto(srv.browser_url + "socketio.html")
    page.wait_for_function("document.getElementById('transport').textContent === 'websocket'",
                           timeout=10_000)
    first = srv.publish("first")
    page.wait_for_selector(f"#events li[data-id='{first}']", timeout=10_000)
    assert srv.drop("socketio") == 1
    missed = [srv.publish(f"while away {n}") for n in range(3)]
    page.wait_for_function("document.getElementById('connects').textContent === '2'",
                           timeout=10_000)
    last = srv.publish("after")
    page.wait_for_selector(f"#events li[data-id='{last}']", timeout=10_000)
    ids = page.eval_on_selector_all("#events li[data-id]", "els => els.map(e => +e.dataset.id)")
    assert sorted(ids) == [first, *missed, last] and len(set(ids)) == len(ids)
    assert page.get_attribute("#check", "class") == "good"


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def chapter_server() -> Iterator[str]:
    """``python -m labserver --port 8005``, the chapter's port, in a terminal of its own."""
    if not port_is_free(8005):
        message = "port 8005 is taken on this machine"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; CI must run this test")
        pytest.skip(message)
    process = subprocess.Popen([sys.executable, "-m", "labserver", "--port", "8005"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        while "labserver on http" not in line and line:
            line = process.stdout.readline().decode()
        assert line, "python -m labserver --port 8005 did not start"
        yield "http://127.0.0.1:8005"
    finally:
        process.terminate()
        process.wait(5)


def test_browser_the_chapters_page_unchanged_on_port_8005(
    chapter_server: str, browser_page: Any,
) -> None:
    page = browser_page
    page.goto("http://localhost:8005/chapter12.html")
    page.wait_for_function("typeof io === 'function' && socket.connected", timeout=10_000)
    request = urllib.request.Request(chapter_server + "/publish", method="POST",
                                     data=json.dumps({"data": "Hello Socket.IO"}).encode(),
                                     headers={"Content-Type": "application/json"})
    # the page's console.log(data), not a console error the browser may log meanwhile (a 404)
    with page.expect_console_message(lambda m: m.type == "log", timeout=10_000) as logged:
        event_id = json.loads(opener.open(request).read())["id"]
    message = logged.value
    assert message.args[0].json_value()["id"] == event_id  # console.log(data)
    deadline = time.monotonic() + 5
    while True:  # socket.emit('reply', 'Hello Node.JS') reached the server
        stats = json.loads(opener.open(chapter_server + "/stats").read())
        if stats["transports"]["socketio"]["messages_in"] == 1:
            break
        assert time.monotonic() < deadline, "the page's reply never arrived"
        time.sleep(0.05)
    assert stats["transports"]["socketio"]["requests"] == 1  # WebSocket from the start


def test_the_parts_of_python_engineio_its_docs_do_not_promise_are_there() -> None:
    """socketio.py and chat.py use four parts of python-engineio that are public by name but
    not documented: ``AsyncServer.handlers`` (python-socketio's own handlers, which
    LabAsyncServer wraps), ``AsyncServer.sockets`` (the sessions by sid, for a session's transport
    and its forced close), ``AsyncSocket.close(abort=, reason=)``, and the aiohttp request in
    the WSGI-style environ (``environ["aiohttp.request"]``: the cookie, the origin, the client
    address). The fast tier's canary cannot cover them (with the tier off they are still
    used), so this test names the package and version when one of them goes."""
    import importlib.metadata
    import inspect

    import engineio
    from engineio import async_socket
    from engineio.async_drivers import aiohttp as driver

    version = f"python-engineio {importlib.metadata.version('python-engineio')}"
    assert isinstance(engineio.AsyncServer(async_mode="aiohttp").sockets, dict), \
        f"{version}: AsyncServer.sockets is no longer the dict of sessions"
    close = inspect.signature(async_socket.AsyncSocket.close).parameters
    assert {"abort", "reason"} <= set(close), f"{version}: AsyncSocket.close lost abort=, reason="
    handlers = socketio.AsyncServer(async_mode="aiohttp").eio.handlers
    assert {"connect", "message", "disconnect"} <= set(handlers), \
        f"{version}: python-socketio no longer registers its handlers in eio.handlers"
    assert "'aiohttp.request': request" in inspect.getsource(driver.translate_request), \
        f"{version}: the aiohttp driver no longer puts the request in environ['aiohttp.request']"
