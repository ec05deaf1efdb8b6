"""Transports declare themselves (``labserver.transports``): a transport registered in an app
of one's own gets its counters in ``/stats`` and its place in ``/drop`` from its declaration
alone, and two transports cannot claim one name or one route."""

from __future__ import annotations

import asyncio

import aiohttp
import conftest
import pytest
from aiohttp import web

from labserver.app import create_app
from labserver.keys import CONNECTIONS, COUNTERS, TRANSPORTS
from labserver.transports import Transport, register

HELLO = b"hello\n"


async def toy(request: web.Request) -> web.StreamResponse:
    """``GET /toy``: a toy streaming transport — one line, then held open until dropped."""
    app = request.app
    stop = asyncio.Event()

    async def close() -> None:
        stop.set()

    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await response.prepare(request)
    with app[CONNECTIONS].track("toy", close):
        await response.write(HELLO)
        app[COUNTERS]["toy"].messages_out += 1
        await stop.wait()
    await response.write_eof()
    return response


def toy_app(droppable: bool) -> web.Application:
    """labserver's app plus the toy transport: its module's one line."""
    app = create_app()
    register(app, Transport(name="toy", routes=[web.get("/toy", toy)], streaming=True,
                            droppable=droppable))
    return app


async def test_a_registered_transport_is_counted_in_stats_and_dropped_by_drop() -> None:
    app = toy_app(droppable=True)
    async with conftest.serving(app) as port, aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{port}"
        async with session.get(url + "/toy") as stream:
            assert await asyncio.wait_for(stream.content.readline(), 5) == HELLO
            async with session.get(url + "/stats") as resp:
                transports = (await resp.json())["transports"]
            assert list(transports) == ["poll", "long_poll", "sse", "ws", "socketio", "toy"]
            counted = transports["toy"]
            assert (counted["requests"], counted["messages_out"]) == (1, 1)
            # its connection's bytes, head and chunk framing included, are the toy's
            assert counted["bytes_in"] > 0 and counted["bytes_out"] > len(HELLO)
            assert all(transports[name]["requests"] == 0 for name in ("poll", "sse"))

            async with session.post(url + "/drop", json={"transport": "nope"}) as resp:
                assert resp.status == 400
                assert await resp.json() == {"error": 'body must be {"transport": one of sse, '
                                                      'ws, socketio, toy, all}'}
            async with session.post(url + "/drop", json={"transport": "toy"}) as resp:
                assert await resp.json() == {"dropped": 1}
            assert await asyncio.wait_for(stream.content.read(), 5) == b""  # the stream ended


async def test_drop_refuses_a_transport_not_declared_droppable() -> None:
    app = toy_app(droppable=False)
    async with conftest.serving(app) as port, aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{port}"
        async with session.post(url + "/drop", json={"transport": "toy"}) as resp:
            assert resp.status == 400
            assert await resp.json() == {"error": 'body must be {"transport": one of sse, ws, '
                                                  'socketio, all}'}
        async with session.get(url + "/stats") as resp:
            assert "toy" in (await resp.json())["transports"]  # counted all the same


def test_every_transport_declares_itself() -> None:
    """What counters.TRANSPORTS, STREAMING, TRANSPORT_OF_ROUTE and app.DROPPABLE once said."""
    app = create_app()
    transports = app[TRANSPORTS]
    assert transports.names == ("poll", "long_poll", "sse", "ws", "socketio")
    assert transports.streaming == {"sse", "ws", "socketio"}
    assert transports.droppable == ("sse", "ws", "socketio", "all")
    assert transports.owner_of_route == {"/poll": "poll", "/long-poll": "long_poll",
                                         "/sse": "sse", "/ws": "ws", "/socket.io/": "socketio"}


@pytest.mark.parametrize("name", ["sse", "all"])
def test_two_transports_cannot_claim_one_name(name: str) -> None:
    app = create_app()
    with pytest.raises(ValueError, match=f"a transport named '{name}' is already registered"):
        register(app, Transport(name=name, routes=[web.get("/toy", toy)]))
    assert "/toy" not in app[COUNTERS].of_route  # refused before anything was added
    assert not any(resource.canonical == "/toy" for resource in app.router.resources())


def test_two_transports_cannot_claim_one_route() -> None:
    app = create_app()
    with pytest.raises(ValueError, match="toy: route /long-poll is already long_poll's"):
        register(app, Transport(name="toy", routes=[web.get("/toy", toy),
                                                    web.get("/long-poll", toy)]))
    assert "toy" not in app[TRANSPORTS].names and "toy" not in app[COUNTERS].transports
    assert not any(resource.canonical == "/toy" for resource in app.router.resources())
