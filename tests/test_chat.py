"""The chat (``labserver.chat``) over real sockets: sessions shared between HTTP and Socket.IO,
the ``/chat`` namespace's rooms and acks, the chapter's targeted sends, route-then-socket, the
hand-set cookie, bounds and misbehaving clients, two nodes on a real Redis, and two users in
Chromium.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
import socketio

import labserver
from labserver.chat import (
    HISTORY_SIZE,
    MAX_ROOMS_PER_SOCKET,
    MAX_TEXT_CHARS,
    NO_SESSION,
    SESSION_COOKIE,
    session_key,
)

NS = "/chat"
EVENTS = ("chat", "joined", "left", "online", "whisper", "typing", "removed")


async def get_cookie(url: str, path: str = "/") -> str:
    """What a browser gets from ``GET /``: the session cookie's value."""
    async with aiohttp.ClientSession() as http, http.get(url + path) as resp:
        assert resp.status == 200
        return resp.cookies[SESSION_COOKIE].value


class ChatClient:
    """A python-socketio client of ``/chat`` that records every event it receives."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.got: dict[str, list[Any]] = defaultdict(list)
        self.refused: list[Any] = []
        self.disconnected = asyncio.Event()
        for name in EVENTS:
            self.sio.on(name, self._recorder(name), namespace=NS)
        self.sio.on("connect_error", self.refused.append, namespace=NS)
        self.sio.on("disconnect", lambda *a: self.disconnected.set(), namespace=NS)

    def _recorder(self, name: str) -> Any:
        return lambda data: self.got[name].append(data)

    async def call(self, event: str, *data: Any) -> Any:
        return await self.sio.call(event, data[0] if len(data) == 1 else tuple(data) or None,
                                   namespace=NS, timeout=5)

    @property
    def sid(self) -> str:
        return self.sio.get_sid(NS)


@asynccontextmanager
async def chat_client(url: str, cookie: str | None, transport: str = "websocket"
                      ) -> AsyncIterator[ChatClient]:
    client = ChatClient()
    headers = {"Cookie": f"{SESSION_COOKIE}={cookie}"} if cookie else {}
    await client.sio.connect(url, headers=headers, namespaces=[NS], transports=[transport],
                             wait_timeout=5)
    try:
        yield client
    finally:
        await client.sio.disconnect()


async def until(predicate: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def http_json(method: str, url: str, cookie: str | None = None, **kwargs: Any
                    ) -> tuple[int, Any]:
    headers = {"Cookie": f"{SESSION_COOKIE}={cookie}"} if cookie else {}
    async with aiohttp.ClientSession() as http, http.request(method, url, headers=headers,
                                                             **kwargs) as resp:
        return resp.status, await resp.json(content_type=None)


# --- sessions ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/chat.html"])
async def test_pages_give_a_signed_session_cookie_once(srv: labserver.Server, path: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(srv.url + path) as resp:
            morsel = resp.cookies[SESSION_COOKIE]
            assert morsel["httponly"] and morsel["samesite"] == "Lax" and morsel["path"] == "/"
            cookie = morsel.value
        # A browser that sends its cookie back keeps its session: no new cookie.
        async with http.get(srv.url + path,
                            headers={"Cookie": f"{SESSION_COOKIE}={cookie}"}) as resp:
            assert SESSION_COOKIE not in resp.cookies
        # Other routes do not touch sessions.
        async with http.get(srv.url + "/stats") as resp:
            assert SESSION_COOKIE not in resp.cookies


async def test_the_socket_knows_who_the_http_session_says(srv: labserver.Server) -> None:
    cookie = await get_cookie(srv.url)
    async with chat_client(srv.url, cookie) as a, chat_client(srv.url, cookie, "polling") as b:
        me_a, me_b = await a.call("whoami"), await b.call("whoami")
        assert me_a["user"] == me_b["user"] and me_a["color"] == me_b["color"]
        assert me_a["sid"] != me_b["sid"]  # one user, two sockets
    async with chat_client(srv.url, await get_cookie(srv.url)) as c:
        assert (await c.call("whoami"))["user"] != me_a["user"]  # another session, another name


@pytest.mark.parametrize("cookie", [None, "garbage", "gAAAAABnot-a-fernet-token"])
async def test_chat_without_a_valid_session_is_refused_but_news_is_open(
    srv: labserver.Server, cookie: str | None,
) -> None:
    client = ChatClient()
    headers = {"Cookie": f"{SESSION_COOKIE}={cookie}"} if cookie else {}
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.sio.connect(srv.url, headers=headers, namespaces=[NS],
                                 transports=["websocket"], wait_timeout=5)
    assert client.refused == [{"message": NO_SESSION}]
    # The "/" namespace needs no session (the chapter's page has none).
    news = socketio.AsyncClient(reconnection=False)
    await news.connect(srv.url, headers=headers, transports=["websocket"], wait_timeout=5)
    try:
        assert news.connected
    finally:
        await news.disconnect()


async def test_nodes_sharing_session_secret_accept_each_others_cookies(make_server: Any) -> None:
    secret = "a shared secret for the whole cluster"
    one, two = make_server(session_secret=secret), make_server(session_secret=secret)
    stranger = make_server(session_secret="another secret, another cluster")
    cookie = await get_cookie(one.url)
    async with chat_client(one.url, cookie) as a, chat_client(two.url, cookie) as b:
        assert (await a.call("whoami"))["user"] == (await b.call("whoami"))["user"]
    client = ChatClient()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.sio.connect(stranger.url, headers={"Cookie": f"{SESSION_COOKIE}={cookie}"},
                                 namespaces=[NS], transports=["websocket"], wait_timeout=5)
    assert client.refused == [{"message": NO_SESSION}]
    assert len(session_key("short secret 16ch")) == 32  # any secret becomes a 32-byte key


# --- rooms ------------------------------------------------------------------------------------


async def test_join_and_leave_are_acked_with_members_and_empty_rooms_go(srv) -> None:
    c1, c2 = await get_cookie(srv.url), await get_cookie(srv.url)
    async with chat_client(srv.url, c1) as a, chat_client(srv.url, c2) as b:
        assert await a.call("join", "lobby") == {"ok": True, "room": "lobby", "members": 1}
        assert await b.call("join", "lobby") == {"ok": True, "room": "lobby", "members": 2}
        assert await b.call("join", "lobby") == {"ok": True, "room": "lobby", "members": 2}
        assert (await http_json("GET", srv.url + "/rooms"))[1] == {
            "rooms": [{"room": "lobby", "members": 2, "messages": 0}]}
        assert await a.call("leave", "lobby") == {"ok": True, "room": "lobby", "members": 1}
        assert await a.call("leave", "lobby") == {"ok": False, "error": "not in room lobby"}
        await until(lambda: len(b.got["left"]) == 1)
        assert b.got["left"][0]["members"] == 1
        assert await b.call("leave", "lobby") == {"ok": True, "room": "lobby", "members": 0}
        assert (await http_json("GET", srv.url + "/rooms"))[1] == {"rooms": []}
        status, body = await http_json("GET", srv.url + "/rooms/lobby/messages")
        assert status == 404 and "no room lobby" in body["error"]
        # A disconnect leaves every room too.
        await b.call("join", "r1")
        await b.call("join", "r2")
    deadline = time.monotonic() + 5
    while (await http_json("GET", srv.url + "/rooms"))[1]["rooms"]:
        assert time.monotonic() < deadline, "rooms of a gone socket were not cleaned up"
        await asyncio.sleep(0.05)


async def test_messages_reach_their_room_only_with_the_sessions_identity(srv) -> None:
    cookies = [await get_cookie(srv.url) for _ in range(3)]
    async with (chat_client(srv.url, cookies[0]) as a, chat_client(srv.url, cookies[1]) as b,
                chat_client(srv.url, cookies[2], "polling") as c):
        await a.call("join", "red")
        await b.call("join", "red")
        await c.call("join", "blue")
        me = await a.call("whoami")
        ack = await a.call("chat", {"room": "red", "text": "hello red"})
        assert ack["ok"] is True and ack["room"] == "red"
        assert (await c.call("chat", {"room": "red", "text": "let me in"})) == {
            "ok": False, "error": "not in room red: join it first"}
        # Identity is the session's: a payload that names a user is refused, not believed.
        forged = await b.call("chat", {"room": "red", "text": "hi", "user": me["user"]})
        assert forged == {"ok": False,
                          "error": "user and color come from your session, not from the message"}
        await c.call("chat", {"room": "blue", "text": "hello blue"})
        await until(lambda: len(a.got["chat"]) == 1 and len(b.got["chat"]) == 1
                    and len(c.got["chat"]) == 1)
        await asyncio.sleep(0.2)  # anything misrouted would have arrived by now
        expected = {"room": "red", "text": "hello red", "user": me["user"], "color": me["color"],
                    "ts": ack["ts"]}
        assert a.got["chat"] == [expected] and b.got["chat"] == [expected]
        assert [m["text"] for m in c.got["chat"]] == ["hello blue"]
        assert (await http_json("GET", srv.url + "/rooms/red/messages"))[1] == {
            "room": "red", "messages": [expected]}


async def test_the_chapters_targeted_sends(srv: labserver.Server) -> None:
    """to one socket (whisper), to all but me (online), to the room but me (joined)."""
    cookies = [await get_cookie(srv.url) for _ in range(3)]
    async with chat_client(srv.url, cookies[0]) as a, chat_client(srv.url, cookies[1]) as b:
        await until(lambda: len(a.got["online"]) == 1)  # b came online: a is told, b is not
        async with chat_client(srv.url, cookies[2]) as c:
            await until(lambda: len(a.got["online"]) == 2 and len(b.got["online"]) == 1)
            assert c.got["online"] == []
            assert b.got["online"][0]["sid"] == c.sid
            await a.call("join", "r")
            await b.call("join", "r")
            await until(lambda: len(a.got["joined"]) == 1)
            assert b.got["joined"] == [] and c.got["joined"] == []  # the room but me
            assert await a.call("whisper", {"to": c.sid, "text": "psst"}) == {"ok": True}
            await until(lambda: len(c.got["whisper"]) == 1)
            await asyncio.sleep(0.1)
            assert a.got["whisper"] == [] and b.got["whisper"] == []  # one socket only
            assert c.got["whisper"][0]["from"] == a.sid and c.got["whisper"][0]["text"] == "psst"
            refused = await a.call("whisper", {"to": "no-such-sid", "text": "psst"})
            assert refused == {"ok": False, "error": "no such socket in /chat"}


@pytest.mark.parametrize("event,payload,reason", [
    ("join", "bad room!", "room must be"),
    ("join", "x" * 33, "room must be"),
    ("join", {"room": "r"}, "room must be"),
    ("leave", 42, "room must be"),
    ("chat", "just text", "chat takes"),
    ("chat", {"room": "r"}, "chat takes"),
    ("chat", {"room": "r", "text": ""}, "non-empty"),
    ("chat", {"room": "r", "text": 5}, "non-empty"),
    ("chat", {"room": "r", "text": "x" * (MAX_TEXT_CHARS + 1)}, "text too long"),
    ("whisper", {"to": 1}, "whisper takes"),
    ("post", {"room": "r", "text": "t", "cookie": "yes"}, "post takes"),
    ("shout", "hi", "unknown event"),
])
async def test_bad_payloads_are_refused_in_the_ack(srv, event: str, payload: Any,
                                                   reason: str) -> None:
    async with chat_client(srv.url, await get_cookie(srv.url)) as a:
        await a.call("join", "r")
        ack = await a.call(event, payload)
        assert ack["ok"] is False and reason in ack["error"]
        assert (await a.call("chat", {"room": "r", "text": "still here"}))["ok"] is True


async def test_room_limits(srv: labserver.Server) -> None:
    async with chat_client(srv.url, await get_cookie(srv.url)) as a:
        for i in range(MAX_ROOMS_PER_SOCKET):
            assert (await a.call("join", f"room{i}"))["ok"]
        ack = await a.call("join", "one-too-many")
        assert ack == {"ok": False,
                       "error": f"in too many rooms: at most {MAX_ROOMS_PER_SOCKET} at once"}


async def test_garbage_disconnects_the_sender_and_the_others_keep_chatting(srv) -> None:
    cookies = [await get_cookie(srv.url) for _ in range(2)]
    async with chat_client(srv.url, cookies[0]) as bad, chat_client(srv.url, cookies[1]) as good:
        await bad.call("join", "r")
        await good.call("join", "r")
        await bad.sio.emit("chat", {"room": "r", "text": b"\x00\xff binary"}, namespace=NS)
        await asyncio.wait_for(bad.disconnected.wait(), 5)
        assert (await good.call("chat", {"room": "r", "text": "fine"}))["ok"] is True
        await until(lambda: len(good.got["chat"]) == 1)
        assert (await good.call("join", "r"))["members"] == 1  # the bad one left the room


async def test_history_is_bounded(srv: labserver.Server) -> None:
    async with chat_client(srv.url, await get_cookie(srv.url)) as a:
        await a.call("join", "r")
        for i in range(HISTORY_SIZE + 5):
            assert (await a.call("chat", {"room": "r", "text": f"m{i}"}))["ok"]
        _, body = await http_json("GET", srv.url + "/rooms/r/messages")
        assert [m["text"] for m in body["messages"]] == [f"m{i}" for i in
                                                         range(5, HISTORY_SIZE + 5)]


# --- route, then socket ---------------------------------------------------------------------


async def test_post_stores_then_emits_to_the_room(srv: labserver.Server) -> None:
    c1, c2 = await get_cookie(srv.url), await get_cookie(srv.url)
    async with chat_client(srv.url, c1) as a, chat_client(srv.url, c2) as outsider:
        await a.call("join", "r")
        await outsider.call("join", "elsewhere")
        me = await a.call("whoami")
        status, message = await http_json("POST", srv.url + "/rooms/r/messages", c2,
                                          json={"text": "from the route"})
        assert status == 200
        # The speaker is the poster's session (c2), not a member's.
        assert message["user"] != me["user"] and message["text"] == "from the route"
        await until(lambda: len(a.got["chat"]) == 1)
        assert a.got["chat"] == [message]
        assert (await http_json("GET", srv.url + "/rooms/r/messages"))[1]["messages"] == [message]
        await asyncio.sleep(0.1)
        assert outsider.got["chat"] == []


@pytest.mark.parametrize("path,cookie,body,status,reason", [
    ("/rooms/r/messages", False, {"text": "hi"}, 401, "no session"),
    ("/rooms/bad%20room/messages", True, {"text": "hi"}, 400, "room must be"),
    ("/rooms/r/messages", True, {"text": "hi", "user": "mallory"}, 400, "body must be"),
    ("/rooms/r/messages", True, ["hi"], 400, "body must be"),
    ("/rooms/r/messages", True, {"text": "x" * (MAX_TEXT_CHARS + 1)}, 400, "text too long"),
    ("/rooms/nobody-here/messages", True, {"text": "hi"}, 404, "no room nobody-here"),
])
async def test_post_refusals_are_json(srv, path: str, cookie: bool, body: Any, status: int,
                                      reason: str) -> None:
    own = await get_cookie(srv.url)
    async with chat_client(srv.url, own) as a:
        await a.call("join", "r")
        got, answer = await http_json("POST", srv.url + path, own if cookie else None, json=body)
        assert got == status and reason in answer["error"]
        await asyncio.sleep(0.1)
        assert a.got["chat"] == []
    async with aiohttp.ClientSession() as http, http.post(
        srv.url + "/rooms/r/messages", data=b"{not json",
        headers={"Cookie": f"{SESSION_COOKIE}={own}"},
    ) as resp:
        assert resp.status in (400, 404)  # 404 once the room is gone, 400 while it exists


async def test_typing_reaches_the_room_but_the_typist(srv: labserver.Server) -> None:
    """``typing`` (room): the room's other members hear who types; the typist and other rooms
    do not; a room one is not in is refused in the ack."""
    cookies = [await get_cookie(srv.url) for _ in range(3)]
    async with chat_client(srv.url, cookies[0]) as a, chat_client(srv.url, cookies[1]) as b, \
            chat_client(srv.url, cookies[2]) as outsider:
        await a.call("join", "r")
        await b.call("join", "r")
        await outsider.call("join", "elsewhere")
        me = await a.call("whoami")
        assert await a.call("typing", "r") == {"ok": True}
        await until(lambda: len(b.got["typing"]) == 1)
        assert b.got["typing"] == [{"room": "r", "user": me["user"], "color": me["color"]}]
        assert (await outsider.call("typing", "r"))["error"] == "not in room r: join it first"
        assert (await a.call("typing", "bad room"))["ok"] is False
        await asyncio.sleep(0.1)
        assert a.got["typing"] == [] and outsider.got["typing"] == [] and len(b.got["typing"]) == 1


async def test_delete_room_through_the_route_tells_its_members(srv: labserver.Server) -> None:
    """``DELETE /rooms/{room}``: a member's session deletes the room and its history; the
    members hear ``removed`` and are out of it; 401 without a cookie (the book's server-side
    call without its hand-set cookie), 403 for a non-member, 404 for no such room."""
    c1, c2, c3 = [await get_cookie(srv.url) for _ in range(3)]
    async with chat_client(srv.url, c1) as a, chat_client(srv.url, c2) as b:
        await a.call("join", "r")
        await b.call("join", "r")
        me = await a.call("whoami")
        await a.call("chat", {"room": "r", "text": "soon gone"})
        url = srv.url + "/rooms/r"
        assert (await http_json("DELETE", url))[0] == 401
        status, body = await http_json("DELETE", url, c3)
        assert status == 403 and "only a member" in body["error"]
        assert await http_json("DELETE", url, c1) == (200, {"room": "r", "deleted": True,
                                                              "messages": 1})
        await until(lambda: len(b.got["removed"]) == 1)
        assert b.got["removed"] == [{"room": "r", "user": me["user"], "color": me["color"]}]
        assert (await http_json("GET", srv.url + "/rooms"))[1]["rooms"] == []
        assert (await http_json("DELETE", url, c1))[0] == 404
        assert (await b.call("chat", {"room": "r", "text": "x"}))["ok"] is False  # out of it
        assert (await b.call("join", "r"))["members"] == 1  # a new, empty room
        assert (await http_json("GET", srv.url + "/rooms/r/messages"))[1]["messages"] == []


async def test_a_socket_handler_calling_its_own_route_must_set_the_cookie(srv) -> None:
    """12.5: the server's own request to its route carries no browser cookie."""
    async with chat_client(srv.url, await get_cookie(srv.url)) as a:
        await a.call("join", "r")
        me = await a.call("whoami")
        without = await a.call("post", {"room": "r", "text": "no cookie", "cookie": False})
        assert without["ok"] is False and without["status"] == 401
        assert without["error"] == NO_SESSION
        with_cookie = await a.call("post", {"room": "r", "text": "hand-set cookie"})
        assert with_cookie["ok"] is True and with_cookie["status"] == 200
        assert with_cookie["route"]["user"] == me["user"]
        await until(lambda: len(a.got["chat"]) == 1)
        assert [m["text"] for m in a.got["chat"]] == ["hand-set cookie"]


def test_the_chat_page_is_linked_from_the_index(srv: labserver.Server) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(srv.url + "/", timeout=5) as resp:
        assert 'href="chat.html"' in resp.read().decode()
    with opener.open(srv.url + "/chat.html", timeout=5) as resp:
        page = resp.read().decode()
    assert 'src="socket.io/socket.io.js"' in page and 'io("/chat"' in page


# --- scale-out ------------------------------------------------------------------------------


async def test_a_chat_message_crosses_nodes_through_redis(make_server: Any,
                                                          redis_server: Any) -> None:
    secret = "one cluster, one session secret"
    one = make_server(redis_url=redis_server.url, session_secret=secret)
    two = make_server(redis_url=redis_server.url, session_secret=secret)
    c1, c2 = await get_cookie(one.url), await get_cookie(two.url)
    async with chat_client(one.url, c1) as a, chat_client(two.url, c2) as b:
        await a.call("join", "r")
        await b.call("join", "r")
        me = await a.call("whoami")
        await until(lambda: len(b.got["joined"]) + len(a.got["joined"]) >= 1)
        assert (await a.call("chat", {"room": "r", "text": "across nodes"}))["ok"]
        await until(lambda: len(b.got["chat"]) == 1 and len(a.got["chat"]) == 1)
        await asyncio.sleep(0.3)  # a copy echoed back through Redis would have arrived by now
        assert len(a.got["chat"]) == len(b.got["chat"]) == 1
        assert b.got["chat"][0]["user"] == me["user"]
        # news on "/" is still emitted once per client, by the client's own node.
        news = socketio.AsyncClient(reconnection=False)
        got: list[Any] = []
        news.on("news", got.append)
        await news.connect(two.url, transports=["websocket"], wait_timeout=5)
        try:
            event_id = await one.apublish({"n": 1})
            await until(lambda: len(got) >= 1)
            await asyncio.sleep(0.3)
            assert [e["id"] for e in got] == [event_id]
        finally:
            await news.disconnect()


# --- the browser ----------------------------------------------------------------------------


def test_browser_two_users_chat_and_a_third_room_hears_nothing(
    srv: labserver.Server, browser_context_factory: Any,
) -> None:
    pages = [browser_context_factory() for _ in range(3)]
    names = []
    for page, room in zip(pages, ("alpha", "alpha", "beta"), strict=True):
        page.goto(srv.url + "/chat.html")
        page.wait_for_function("document.getElementById('sid').textContent.length > 15")
        names.append(page.text_content("#me"))
        page.fill("#room-name", room)
        page.click("#join")
        page.wait_for_function(f"document.getElementById('current').textContent === '{room}'")
    assert len(set(names)) == 3  # three contexts, three cookies, three users
    ann, bob, carol = pages
    ann.fill("#text", "hi bob")
    ann.click("#send")
    bob.wait_for_selector("#messages li.msg >> text=hi bob")
    bob.fill("#text", "hi ann")
    bob.click("#send")
    ann.wait_for_selector("#messages li.msg >> text=hi ann")
    carol.fill("#text", "anyone in beta?")
    carol.click("#send")
    carol.wait_for_selector("#messages li.msg >> text=anyone in beta?")
    ann.wait_for_timeout(300)
    # Each message shows its sender's name in the sender's colour.
    line = ann.locator("#messages li.msg", has_text="hi ann").locator("b")
    assert line.text_content() == names[1]
    assert line.evaluate("b => b.style.color") != ""
    texts = {n: [li.text_content() for li in p.query_selector_all("#messages li.msg")]
             for n, p in zip(names, pages, strict=True)}
    assert texts[names[0]] == [f"[alpha] {names[0]}: hi bob", f"[alpha] {names[1]}: hi ann"]
    assert texts[names[1]] == texts[names[0]]
    assert texts[names[2]] == [f"[beta] {names[2]}: anyone in beta?"]
    # The room list (GET rooms) shows both rooms with their members.
    ann.click("#refresh")
    ann.wait_for_selector("#rooms >> text=beta")
    assert "2 in" in ann.text_content("#rooms")


def test_browser_chat_page_works_through_the_hub_proxy(
    srv: labserver.Server, jupyter_proxy: Any, browser_page: Any,
) -> None:
    """Relative URLs: the session cookie, the namespace and the routes behind /proxy/PORT/."""
    page = browser_page
    page.goto(jupyter_proxy.url_for(srv.port, "chat.html"))
    page.wait_for_function("document.getElementById('sid').textContent.length > 15",
                           timeout=15_000)
    page.fill("#room-name", "proxied")
    page.click("#join")
    page.wait_for_function("document.getElementById('current').textContent === 'proxied'")
    page.fill("#text", "through the proxy")
    page.check("#via-route")  # POST rooms/proxied/messages, relative to the page
    page.click("#send")
    page.wait_for_selector("#messages li.msg >> text=through the proxy")
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
        srv.url + "/rooms/proxied/messages", timeout=5
    ) as resp:
        body = json.loads(resp.read())
    assert [m["text"] for m in body["messages"]] == ["through the proxy"]
