"""Short and long polling over real sockets: the JSON contract, bad input, the counters."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import aiohttp
import pytest

import labserver


def raw_get(srv: labserver.Server, target: str) -> tuple[bytes, bytes]:
    """One HTTP/1.1 request on a raw socket: returns (bytes sent, bytes received)."""
    request = (
        f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return request, received


def body_of(response: bytes) -> dict:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])


def test_poll_answers_events_after_the_cursor(srv: labserver.Server) -> None:
    ids = [srv.publish({"n": n}) for n in range(3)]
    assert ids == [1, 2, 3]
    _, response = raw_get(srv, "/poll?after=1")
    body = body_of(response)
    assert [e["id"] for e in body["events"]] == [2, 3]
    assert [e["data"] for e in body["events"]] == [{"n": 1}, {"n": 2}]
    assert body["last_id"] == 3 and body["gap"] is False
    assert all(isinstance(e["ts"], float) for e in body["events"])
    assert body_of(raw_get(srv, "/poll")[1])["last_id"] == 3  # after defaults to 0


def test_socket_bytes_match_the_counters_exactly(srv: labserver.Server) -> None:
    srv.publish("hello")
    before = srv.stats()
    sent, received = raw_get(srv, "/poll?after=0")
    sent2, received2 = raw_get(srv, "/poll?after=1")
    used = srv.stats_since(before)["transports"]["poll"]
    assert used["bytes_in"] == len(sent) + len(sent2)
    assert used["bytes_out"] == len(received) + len(received2)
    assert used["requests"] == 2 and used["empty"] == 1 and used["messages_out"] == 1
    assert b"\r\n\r\n" in received  # headers are on the wire and counted


def test_long_poll_bytes_are_counted_at_the_socket(srv: labserver.Server) -> None:
    before = srv.stats()
    sent, received = raw_get(srv, "/long-poll?after=0&timeout=0")
    used = srv.stats_since(before)["transports"]["long_poll"]
    assert (used["bytes_in"], used["bytes_out"]) == (len(sent), len(received))
    assert used["empty"] == 1


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("/poll?after=-1", "after must be a non-negative integer"),
        ("/poll?after=abc", "after must be a non-negative integer"),
        ("/poll?after=1.5", "after must be a non-negative integer"),
        ("/long-poll?after=x", "after must be a non-negative integer"),
        ("/poll?after=%C2%B2", "after must be a non-negative integer"),  # "²" isdigit(), no int
        ("/long-poll?timeout=61", "timeout must be between 0 and 60 seconds"),
        ("/long-poll?timeout=-1", "timeout must be between 0 and 60 seconds"),
        ("/long-poll?timeout=nan", "timeout must be between 0 and 60 seconds"),
        ("/long-poll?timeout=soon", "timeout must be a number of seconds"),
    ],
)
def test_bad_parameters_get_400_json(srv: labserver.Server, target: str, reason: str) -> None:
    _, response = raw_get(srv, target)
    assert response.startswith(b"HTTP/1.1 400 ")
    assert b"Content-Type: application/json" in response
    assert body_of(response) == {"error": reason}


async def test_long_poll_is_held_until_the_publish(srv: labserver.Server) -> None:
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        held = asyncio.create_task(session.get(srv.url + "/long-poll?after=0&timeout=10"))
        await asyncio.sleep(0.3)
        assert not held.done()
        assert (await srv.astats())["transports"]["long_poll"]["open"] == 1
        await srv.apublish("now")
        response = await asyncio.wait_for(held, 5)
        body = await response.json()
        assert [e["id"] for e in body["events"]] == [1]
        assert 0.3 <= time.monotonic() - started < 5
        assert (await srv.astats())["transports"]["long_poll"]["open"] == 0


async def test_long_poll_times_out_empty(srv: labserver.Server) -> None:
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        async with session.get(srv.url + "/long-poll?after=0&timeout=0.3") as response:
            body = await response.json()
    assert body == {"events": [], "last_id": 0, "gap": False}
    assert time.monotonic() - started >= 0.3
    assert srv.stats()["transports"]["long_poll"]["empty"] == 1


async def test_long_poll_client_that_leaves_is_no_longer_held(srv: labserver.Server) -> None:
    async with aiohttp.ClientSession() as session:
        held = asyncio.create_task(session.get(srv.url + "/long-poll?after=0&timeout=30"))
        await asyncio.sleep(0.3)
        assert (await srv.astats())["transports"]["long_poll"]["open"] == 1
        held.cancel()
    for _ in range(50):
        if (await srv.astats())["transports"]["long_poll"]["open"] == 0:
            break
        await asyncio.sleep(0.05)
    assert (await srv.astats())["transports"]["long_poll"]["open"] == 0


async def test_hundred_long_polls_all_get_the_event(srv: labserver.Server) -> None:
    connector = aiohttp.TCPConnector(limit=150)  # the default 100 would queue the 101st
    async with aiohttp.ClientSession(connector=connector) as session:

        async def wait() -> list[int]:
            async with session.get(srv.url + "/long-poll?after=0&timeout=20") as response:
                return [e["id"] for e in (await response.json())["events"]]

        waiters = [asyncio.create_task(wait()) for _ in range(100)]
        for _ in range(100):
            if (await srv.astats())["transports"]["long_poll"]["open"] == 100:
                break
            await asyncio.sleep(0.05)
        await srv.apublish("to all")
        results = await asyncio.wait_for(asyncio.gather(*waiters), 10)
    assert results == [[1]] * 100


def test_gap_when_the_log_dropped_events(make_server) -> None:
    srv = make_server(log_size=3)
    for n in range(6):
        srv.publish(n)
    body = body_of(raw_get(srv, "/poll?after=1")[1])
    assert body["gap"] is True and [e["id"] for e in body["events"]] == [4, 5, 6]
    assert body_of(raw_get(srv, "/poll?after=3")[1])["gap"] is False


def test_gap_when_the_cursor_is_beyond_the_last_id(srv: labserver.Server) -> None:
    srv.publish("first life")
    body = body_of(raw_get(srv, "/long-poll?after=41&timeout=30")[1])  # answers at once
    assert body["gap"] is True and body["last_id"] == 1


async def test_bad_requests_do_not_disturb_a_good_client(srv: labserver.Server) -> None:
    got: list[int] = []
    async with aiohttp.ClientSession() as session:

        async def good_client() -> None:
            after = 0
            while len(got) < 5:
                async with session.get(f"{srv.url}/long-poll?after={after}&timeout=5") as r:
                    body = await r.json()
                got.extend(e["id"] for e in body["events"])
                after = body["last_id"]

        client = asyncio.create_task(good_client())
        for n in range(5):
            for bad in ("/poll?after=-3", "/long-poll?timeout=99", "/nowhere"):
                async with session.get(srv.url + bad) as r:
                    assert r.status in (400, 404)
            async with session.post(srv.url + "/publish", data=b"{not json") as r:
                assert r.status == 400
            await srv.apublish(n)
        await asyncio.wait_for(client, 10)
    assert got == [1, 2, 3, 4, 5]
