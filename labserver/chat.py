"""Rooms, namespaces and a session shared with HTTP: the chapter's chat app (12.4, 12.5, 12.7.4).

The chapter's GIF chat puts its rooms in a Socket.IO *namespace* of their own, gives every
browser a session (a colour) through ``express-session``, hands the same session to the socket,
and — its closing lesson — posts each message through an HTTP route that stores it and *then*
notifies the room over the socket (``req.app.get('io').of('/chat').to(room).emit(...)``).
This module is all of that on python-socketio and aiohttp:

* **The session** (:func:`setup_sessions`): ``GET /`` and ``GET /chat.html`` give a browser an
  encrypted, signed cookie (aiohttp-session's ``EncryptedCookieStorage``: Fernet, AES + HMAC)
  holding a random name and colour. The key is derived from ``session_secret``, so every node of
  a cluster started with the same secret accepts every other node's cookies.
* **The namespace** :class:`ChatNamespace` (``/chat``): its ``connect`` handler reads the same
  cookie from the Engine.IO handshake's HTTP request and refuses a connection without a valid
  session; ``/`` and the chapter's page connect without one. Events in: ``join``, ``leave``,
  ``chat``, ``whisper``, ``typing``, ``post``, ``whoami``. The ``user`` and ``color`` of every
  message come from the session, never from the payload.
* **The chapter's three targeted sends** (12.5's API list), each where a chat needs it:

  ======================================  ==========================================  ==========
  chapter (Node)                          here (python-socketio)                      event
  ======================================  ==========================================  ==========
  ``socket.to(socketId).emit(…)``         ``emit(…, to=sid)``                         ``whisper``
  ``socket.broadcast.emit(…)``            ``emit(…, skip_sid=sid)``                   ``online``
  ``socket.broadcast.to(room).emit(…)``   ``emit(…, room=room, skip_sid=sid)``        ``joined``
  ``io.of('/chat').to(room).emit(…)``     ``emit(…, room=room)`` (sender included)    ``chat``
  ======================================  ==========================================  ==========

* **Route, then socket** (12.7.4): ``POST /rooms/{room}/messages`` validates and stores, then
  emits through the Socket.IO server it reaches as ``request.app[SIO]`` (the Python form of
  ``req.app.get('io')``). ``GET /rooms/{room}/messages`` is the room's history, ``GET /rooms``
  the list of rooms. ``DELETE /rooms/{room}`` (a member's session only) deletes a room and its
  history, then tells its members ``removed`` and takes them out of it (the book's
  ``DELETE /room/:id``, which its ``socket.js`` calls with the hand-set cookie).
* **The hand-set cookie** (12.5, the chapter's ``socket.js`` calling its own route with axios):
  the ``post`` event makes the *server* call its own HTTP route. That request comes from the
  server, not from the browser, so it carries no cookie unless the handler copies the client's
  session cookie into it by hand (``{"cookie": false}`` leaves it out: the route answers 401).

Bounds, each a named constant below: message text, room names, rooms per socket, rooms in all,
history per room. A room exists while it has members here; when its last member leaves, it and
its history are gone (the book deletes a room when its last user leaves).

Scale-out: with ``redis_url`` every emit goes through python-socketio's ``AsyncRedisManager``,
so a ``chat`` reaches the members of the room on every node. Member counts, the room list and
the history are **per node** (python-socketio cannot list another node's participants either):
a message sent on a node is in that node's history, ``POST /rooms/{room}/messages`` needs a
member of the room on the node it reaches, and ``whisper`` reaches sockets of its own node.
"""

from __future__ import annotations

import colorsys
import hashlib
import re
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import socketio
from aiohttp import web
from aiohttp_session.cookie_storage import EncryptedCookieStorage
from socketio.packet import Packet

from .errors import bad_request, json_error
from .keys import LISTENING, OPTIONS, SIO
from .params import read_json_object

#: The session cookie (the chapter's ``connect.sid``).
SESSION_COOKIE = "labserver_session"
#: A session lasts a week; a browser that comes back later gets a new name.
SESSION_MAX_AGE_S = 7 * 24 * 3600
#: Longest message, in characters: a chat line, not a document.
MAX_TEXT_CHARS = 500
#: Room names: 1 to 32 letters, digits, ``-`` or ``_`` — safe in a URL path and in HTML.
ROOM_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
#: Messages a room remembers for ``GET /rooms/{room}/messages`` and for late joiners.
HISTORY_SIZE = 50
#: Rooms one socket may be in at once, and rooms on this node in all.
MAX_ROOMS_PER_SOCKET = 8
MAX_ROOMS = 1000
#: How long the server waits for its own route in ``post`` (the hand-set-cookie call).
SELF_CALL_TIMEOUT_S = 5.0

NAMESPACE = "/chat"
NO_SESSION = "no session: load the page (GET /) first to get a session cookie"

_ADJECTIVES = ("brave", "calm", "eager", "fuzzy", "gentle", "happy", "jolly", "kind",
               "lively", "proud", "quick", "sunny", "witty", "zesty")
_ANIMALS = ("otter", "falcon", "panda", "tiger", "koala", "heron", "lynx", "whale", "fox",
            "gecko", "bison", "crane", "moose", "raven")


def session_key(session_secret: str) -> bytes:
    """The 32-byte cookie key, derived from ``session_secret`` (any length of at least 16)."""
    return hashlib.sha256(session_secret.encode()).digest()


def new_identity() -> dict[str, str]:
    """A random name and a readable colour, as the book gives each session a colour."""
    name = f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_ANIMALS)}-{secrets.randbelow(100):02d}"
    red, green, blue = colorsys.hls_to_rgb(secrets.randbelow(360) / 360, 0.38, 0.65)
    color = "#{:02x}{:02x}{:02x}".format(*(round(c * 255) for c in (red, green, blue)))
    return {"user": name, "color": color}


def identity_of(session: Any) -> dict[str, str] | None:
    """``{"user", "color"}`` from a session, or ``None`` when it has none (no valid cookie)."""
    user, color = session.get("user"), session.get("color")
    if isinstance(user, str) and isinstance(color, str):
        return {"user": user, "color": color}
    return None


def check_room(room: Any) -> str | None:
    """``None`` when ``room`` is a valid room name, else the reason it is not."""
    if not isinstance(room, str) or not ROOM_NAME.fullmatch(room):
        return "room must be 1 to 32 letters, digits, '-' or '_'"
    return None


def check_text(text: Any) -> str | None:
    if not isinstance(text, str) or not text.strip():
        return "text must be a non-empty string"
    if len(text) > MAX_TEXT_CHARS:
        return f"text too long: at most {MAX_TEXT_CHARS} characters"
    return None


# --- the rooms: members and history (this node's) -------------------------------------------


@dataclass
class Room:
    name: str
    members: set[str] = field(default_factory=set)  # socket ids of /chat on this node
    history: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=HISTORY_SIZE))


class Rooms:
    """The rooms of this node: created by the first ``join``, deleted when the last member goes."""

    def __init__(self) -> None:
        self.rooms: dict[str, Room] = {}
        self.joined: dict[str, set[str]] = {}  # socket id → the rooms it is in

    def join(self, sid: str, name: str) -> Room:
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = Room(name)
        room.members.add(sid)
        self.joined.setdefault(sid, set()).add(name)
        return room

    def leave(self, sid: str, name: str) -> int:
        """Take ``sid`` out of a room; the members left. An empty room is deleted."""
        self.joined.get(sid, set()).discard(name)
        room = self.rooms.get(name)
        if room is None:
            return 0
        room.members.discard(sid)
        if not room.members:
            del self.rooms[name]
        return len(room.members)

    def rooms_of(self, sid: str) -> set[str]:
        return set(self.joined.get(sid, ()))

    def forget(self, sid: str) -> dict[str, int]:
        """A socket went away: leave all its rooms; each room's members left."""
        left = {name: self.leave(sid, name) for name in self.rooms_of(sid)}
        self.joined.pop(sid, None)
        return left

    def listing(self) -> list[dict[str, Any]]:
        return [{"room": r.name, "members": len(r.members), "messages": len(r.history)}
                for r in sorted(self.rooms.values(), key=lambda r: r.name)]


class Chat:
    """What the namespace and the routes share: the rooms, and one way to send a message."""

    def __init__(self, sio: socketio.AsyncServer) -> None:
        self.sio = sio
        self.rooms = Rooms()

    async def say(self, room_name: str, identity: dict[str, str], text: str) -> dict[str, Any]:
        """Store a message in the room's history, then emit it to every member of the room."""
        message = {"room": room_name, "text": text, **identity, "ts": time.time()}
        room = self.rooms.rooms.get(room_name)
        if room is not None:
            room.history.append(message)
            self.sio.counters.messages_out += len(room.members)
        await self.sio.emit("chat", message, room=room_name, namespace=NAMESPACE)
        return message

    async def remove(self, room_name: str, identity: dict[str, str]) -> int:
        """Delete a room and its history, then tell its members and take them out of it;
        how many messages went with it."""
        room = self.rooms.rooms.pop(room_name)
        await self.sio.emit("removed", {"room": room_name, **identity}, room=room_name,
                            namespace=NAMESPACE)
        for sid in room.members:
            self.rooms.joined.get(sid, set()).discard(room_name)
            await self.sio.leave_room(sid, room_name, namespace=NAMESPACE)
        return len(room.history)

    async def has_member(self, room_name: str, identity: dict[str, str]) -> bool:
        """Whether a socket of this session (this user) is in the room."""
        room = self.rooms.rooms.get(room_name)
        for sid in room.members if room else ():
            session = await self.sio.get_session(sid, namespace=NAMESPACE)
            if session.get("user") == identity["user"]:
                return True
        return False


def refuse(reason: str) -> dict[str, Any]:
    return {"ok": False, "error": reason}


def one_object(args: tuple[Any, ...], keys: set[str], optional: set[str] = frozenset()) -> Any:
    """The single JSON-object argument of an event with exactly ``keys`` (plus ``optional``)."""
    if len(args) != 1 or not isinstance(args[0], dict):
        return None
    data = args[0]
    if not keys <= set(data) <= keys | optional:
        return None
    return data


# --- the namespace --------------------------------------------------------------------------


class ChatNamespace(socketio.AsyncNamespace):
    """``/chat``: rooms, messages and notices; every identity from the HTTP session."""

    def __init__(self, chat: Chat, storage: EncryptedCookieStorage,
                 self_call: Callable[[str, str, dict[str, str]], Awaitable[tuple[int, Any]]]
                 ) -> None:
        super().__init__(NAMESPACE)
        self.chat = chat
        self.storage = storage
        self.self_call = self_call

    @property
    def counters(self) -> Any:
        return self.server.counters

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        """12.5: the socket reads the session the HTTP side set, from the handshake's cookie."""
        request: web.Request = environ["aiohttp.request"]
        identity = identity_of(await self.storage.load_session(request))
        if identity is None:
            raise socketio.exceptions.ConnectionRefusedError(NO_SESSION)
        await self.save_session(sid, {**identity, "cookie": request.cookies[SESSION_COOKIE]})
        # socket.broadcast.emit: everyone in the namespace but me.
        await self.emit("online", {**identity, "sid": sid}, skip_sid=sid)

    async def on_disconnect(self, sid: str, *reason: Any) -> None:
        session = await self.get_session(sid)
        identity = {"user": session.get("user"), "color": session.get("color")}
        for room, members in self.chat.rooms.forget(sid).items():
            if members:
                await self.emit("left", {"room": room, **identity, "members": members},
                                room=room, skip_sid=sid)

    async def trigger_event(self, event: str, *args: Any) -> Any:
        """Every event passes here: binary data is garbage for a text chat (the client is
        disconnected, as ``/ws`` closes with 1003), an unknown event is refused in its ack."""
        if event not in ("connect", "disconnect"):
            if Packet.data_is_binary(list(args[1:])):  # bytes anywhere in the payload
                await self.disconnect(args[0])
                return None
            self.counters.messages_in += 1
            if not hasattr(self, f"on_{event}"):
                return refuse(f"unknown event {event!r}: use join, leave, chat, whisper, "
                              "typing, post or whoami")
        return await super().trigger_event(event, *args)

    async def identity(self, sid: str) -> dict[str, str]:
        session = await self.get_session(sid)
        return {"user": session["user"], "color": session["color"]}

    async def on_whoami(self, sid: str, *args: Any) -> dict[str, Any]:
        return {"ok": True, "sid": sid, **await self.identity(sid)}

    async def on_join(self, sid: str, *args: Any) -> dict[str, Any]:
        """``join`` (room) → ack ``{"ok": true, "room": R, "members": n}``; the room is told."""
        room = args[0] if len(args) == 1 else None
        if (reason := check_room(room)) is not None:
            return refuse(reason)
        mine = self.chat.rooms.rooms_of(sid)
        if room not in mine:
            if len(mine) >= MAX_ROOMS_PER_SOCKET:
                return refuse(f"in too many rooms: at most {MAX_ROOMS_PER_SOCKET} at once")
            if room not in self.chat.rooms.rooms and len(self.chat.rooms.rooms) >= MAX_ROOMS:
                return refuse(f"too many rooms on this server: at most {MAX_ROOMS}")
        members = len(self.chat.rooms.join(sid, room).members)
        await self.enter_room(sid, room)
        # socket.broadcast.to(room).emit: the room but me.
        await self.emit("joined", {"room": room, **await self.identity(sid), "members": members},
                        room=room, skip_sid=sid)
        return {"ok": True, "room": room, "members": members}

    async def on_leave(self, sid: str, *args: Any) -> dict[str, Any]:
        room = args[0] if len(args) == 1 else None
        if (reason := check_room(room)) is not None:
            return refuse(reason)
        if room not in self.chat.rooms.rooms_of(sid):
            return refuse(f"not in room {room}")
        members = self.chat.rooms.leave(sid, room)
        await self.leave_room(sid, room)
        if members:
            await self.emit("left", {"room": room, **await self.identity(sid),
                                     "members": members}, room=room, skip_sid=sid)
        return {"ok": True, "room": room, "members": members}

    async def on_chat(self, sid: str, *args: Any) -> dict[str, Any]:
        """``chat`` ``{"room", "text"}`` → every member of the room, sender included."""
        if len(args) == 1 and isinstance(args[0], dict) and {"user", "color"} & set(args[0]):
            return refuse("user and color come from your session, not from the message")
        data = one_object(args, {"room", "text"})
        if data is None:
            return refuse('chat takes {"room": R, "text": T}')
        if (reason := check_room(data["room"]) or check_text(data["text"])) is not None:
            return refuse(reason)
        if data["room"] not in self.chat.rooms.rooms_of(sid):
            return refuse(f"not in room {data['room']}: join it first")
        message = await self.chat.say(data["room"], await self.identity(sid), data["text"])
        return {"ok": True, "room": data["room"], "ts": message["ts"]}

    async def on_typing(self, sid: str, *args: Any) -> dict[str, Any]:
        """``typing`` (room) → ``typing`` ``{"room", "user", "color"}`` to the room but the
        typist (``socket.broadcast.to(room).emit``): what a "… is typing" line needs."""
        room = args[0] if len(args) == 1 else None
        if (reason := check_room(room)) is not None:
            return refuse(reason)
        if room not in self.chat.rooms.rooms_of(sid):
            return refuse(f"not in room {room}: join it first")
        await self.emit("typing", {"room": room, **await self.identity(sid)}, room=room,
                        skip_sid=sid)
        return {"ok": True}

    async def on_whisper(self, sid: str, *args: Any) -> dict[str, Any]:
        """``whisper`` ``{"to": sid, "text"}`` → that one socket (``socket.to(id).emit``)."""
        data = one_object(args, {"to", "text"})
        if data is None:
            return refuse('whisper takes {"to": <socket id>, "text": T}')
        if (reason := check_text(data["text"])) is not None:
            return refuse(reason)
        to = data["to"]
        if not isinstance(to, str) or not self.server.manager.is_connected(to, NAMESPACE):
            return refuse("no such socket in /chat")
        await self.emit("whisper", {"text": data["text"], **await self.identity(sid),
                                    "from": sid, "ts": time.time()}, to=to)
        return {"ok": True}

    async def on_post(self, sid: str, *args: Any) -> dict[str, Any]:
        """``post`` ``{"room", "text"[, "cookie": false]}``: the server posts the message
        through its own HTTP route, as the chapter's ``socket.js`` does with axios.

        That request is the server's, not the browser's: it has no cookie unless this handler
        sets the client's session cookie on it by hand. ``"cookie": false`` leaves it out, and
        the route, which cannot tell who is speaking, answers 401.
        """
        data = one_object(args, {"room", "text"}, {"cookie"})
        if data is None or not isinstance(data.get("cookie", True), bool):
            return refuse('post takes {"room": R, "text": T, "cookie": true|false}')
        if (reason := check_room(data["room"])) is not None:
            return refuse(reason)
        headers = {}
        if data.get("cookie", True):
            cookie = (await self.get_session(sid))["cookie"]
            headers["Cookie"] = f"{SESSION_COOKIE}={cookie}"  # the hand-set cookie
        environ = self.server.get_environ(sid, NAMESPACE)
        status, body = await self.self_call(own_url(environ["aiohttp.request"]) +
                                            f"/rooms/{data['room']}/messages",
                                            data["text"], headers)
        answer = {"ok": status == 200, "status": status, "route": body}
        if status != 200:
            answer["error"] = body.get("error") if isinstance(body, dict) else str(body)
        return answer


def own_url(request: web.Request) -> str:
    """This server's own address, from the socket a request arrived on (not through a proxy)."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if not sockname:  # the connection is gone: where the server listens
        return request.app[LISTENING].url or str(request.url.origin())
    host, port = sockname[0], sockname[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


# --- HTTP: session cookie, route then socket ------------------------------------------------


CHAT: web.AppKey[Chat] = web.AppKey("chat")
SESSIONS: web.AppKey[EncryptedCookieStorage] = web.AppKey("chat_sessions")
SELF_HTTP: web.AppKey[aiohttp.ClientSession] = web.AppKey("chat_self_http")
#: Pages that give a browser its session (a name and a colour) if it has none.
SESSION_PAGES = ("/", "/chat.html")


@web.middleware
async def give_identity(request: web.Request, handler: Any) -> web.StreamResponse:
    """``GET /`` and the chat page: a new browser gets a name and a colour in its session.

    The storage is called directly (not aiohttp-session's middleware): every other route,
    every transport, stays untouched by sessions.
    """
    if request.method != "GET" or request.path not in SESSION_PAGES:
        return await handler(request)
    storage = request.app[SESSIONS]
    session = await storage.load_session(request)
    response = await handler(request)
    if identity_of(session) is None and isinstance(response, web.Response):
        session.update(new_identity())
        await storage.save_session(request, response, session)  # Set-Cookie
    return response


def room_of(request: web.Request) -> str:
    room = request.match_info["room"]
    if (reason := check_room(room)) is not None:
        raise bad_request(reason)
    return room


async def post_message(request: web.Request) -> web.Response:
    """``POST /rooms/{room}/messages`` ``{"text"}``: validate and store, *then* emit (12.7.4).

    The speaker is whoever the session cookie says: no cookie, no message (401).
    """
    room_name = room_of(request)
    identity = identity_of(await request.app[SESSIONS].load_session(request))
    if identity is None:
        return json_error(401, NO_SESSION)
    body = await read_json_object(request, shape='{"text": T}')  # 413 past max_message_bytes
    if set(body) != {"text"}:
        raise bad_request('body must be {"text": T}')
    if (reason := check_text(body["text"])) is not None:
        raise bad_request(reason)
    chat = request.app[CHAT]
    if room_name not in chat.rooms.rooms:
        return json_error(404, f"no room {room_name}: a room exists while someone is in it")
    assert chat.sio is request.app[SIO]  # the server reached from the app: req.app.get('io')
    message = await chat.say(room_name, identity, body["text"])
    return web.json_response(message)


async def get_messages(request: web.Request) -> web.Response:
    """``GET /rooms/{room}/messages``: the room's history, oldest first."""
    room_name = room_of(request)
    room = request.app[CHAT].rooms.rooms.get(room_name)
    if room is None:
        return json_error(404, f"no room {room_name}: a room exists while someone is in it")
    return web.json_response({"room": room_name, "messages": list(room.history)})


async def delete_room(request: web.Request) -> web.Response:
    """``DELETE /rooms/{room}``: delete the room and its history, then tell its members.

    The speaker is whoever the session cookie says (401 without one); only a member of the
    room may delete it (403), and a room that does not exist is a 404.
    """
    room_name = room_of(request)
    identity = identity_of(await request.app[SESSIONS].load_session(request))
    if identity is None:
        return json_error(401, NO_SESSION)
    chat = request.app[CHAT]
    if room_name not in chat.rooms.rooms:
        return json_error(404, f"no room {room_name}: a room exists while someone is in it")
    if not await chat.has_member(room_name, identity):
        return json_error(403, f"only a member of {room_name} can delete it")
    messages = await chat.remove(room_name, identity)
    return web.json_response({"room": room_name, "deleted": True, "messages": messages})


async def list_rooms(request: web.Request) -> web.Response:
    """``GET /rooms``: the rooms of this node, their member and message counts."""
    return web.json_response({"rooms": request.app[CHAT].rooms.listing()},
                             headers={"Cache-Control": "no-store"})


async def self_http_ctx(app: web.Application) -> AsyncIterator[None]:
    """One HTTP client for the server's calls to itself (the ``post`` event)."""
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=SELF_CALL_TIMEOUT_S)
    ) as session:
        app[SELF_HTTP] = session
        yield


def setup(app: web.Application) -> None:
    """Sessions on ``GET /`` and the chat page, the ``/chat`` namespace, the room routes.

    Call after :func:`labserver.socketio.setup`: the namespace goes on its server.
    """
    storage = EncryptedCookieStorage(
        session_key(app[OPTIONS].session_secret),
        cookie_name=SESSION_COOKIE,
        max_age=SESSION_MAX_AGE_S,
        httponly=True,
        samesite="Lax",
    )
    app[SESSIONS] = storage
    app.middlewares.append(give_identity)
    chat = app[CHAT] = Chat(app[SIO])

    async def self_call(url: str, text: str, headers: dict[str, str]) -> tuple[int, Any]:
        async with app[SELF_HTTP].post(url, json={"text": text}, headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)

    app[SIO].register_namespace(ChatNamespace(chat, storage, self_call))
    app.router.add_get("/rooms", list_rooms)
    app.router.add_get("/rooms/{room}/messages", get_messages)
    app.router.add_post("/rooms/{room}/messages", post_message)
    app.router.add_delete("/rooms/{room}", delete_room)
    app.cleanup_ctx.append(self_http_ctx)
