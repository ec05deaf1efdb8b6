"""Scale-out on a real redis-server: global ids, cross-node delivery, Redis going away."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request

import aiohttp

import labserver

opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def poll(srv: labserver.Server, after: int = 0) -> dict:
    with opener.open(f"{srv.url}/poll?after={after}", timeout=10) as resp:
        return json.loads(resp.read())


def wait_until(condition, within_s: float = 10) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_events_published_on_any_node_reach_every_node_with_global_ids(
        make_server, redis_server) -> None:
    a = make_server(redis_url=redis_server.url)
    b = make_server(redis_url=redis_server.url)
    ids = [a.publish({"on": "a"}), b.publish({"on": "b"}), a.publish({"on": "a"})]
    assert ids == [1, 2, 3]
    for node in (a, b):
        page = poll(node)
        assert [e["id"] for e in page["events"]] == [1, 2, 3]
        assert [e["data"]["on"] for e in page["events"]] == ["a", "b", "a"]
        assert page["gap"] is False
    stats_a, stats_b = a.stats()["cluster"], b.stats()["cluster"]
    assert stats_a["redis"] == "up" and stats_a["node"] != stats_b["node"]
    assert (stats_a["published_here"], stats_b["published_here"]) == (2, 1)


async def test_concurrent_publishers_never_share_an_id(make_server, redis_server) -> None:
    nodes = [make_server(redis_url=redis_server.url) for _ in range(2)]
    ids = await asyncio.gather(*(n.apublish(i) for i in range(30) for n in nodes))
    assert sorted(ids) == list(range(1, 61))
    for node in nodes:
        assert [e["id"] for e in poll(node)["events"]] == list(range(1, 61))


async def test_long_poll_on_one_node_wakes_on_a_publish_on_another(
        make_server, redis_server) -> None:
    a = make_server(redis_url=redis_server.url)
    b = make_server(redis_url=redis_server.url)
    async with aiohttp.ClientSession() as session:
        held = asyncio.create_task(session.get(f"{b.url}/long-poll?after=0&timeout=10"))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        event_id = await a.apublish("across")
        response = await asyncio.wait_for(held, 5)
        page = await response.json()
    assert [e["id"] for e in page["events"]] == [event_id]
    assert time.monotonic() - started < 2


def test_a_cursor_from_one_node_resumes_on_another(make_server, redis_server) -> None:
    a = make_server(redis_url=redis_server.url)
    b = make_server(redis_url=redis_server.url)
    for n in range(5):
        a.publish(n)
    cursor = poll(a, after=0)["events"][2]["id"]  # the client saw 1..3 on node a
    wait_until(lambda: b.stats()["events"]["last_id"] == 5)
    assert [e["id"] for e in poll(b, after=cursor)["events"]] == [4, 5]


def test_a_late_node_loads_the_recent_log(make_server, redis_server) -> None:
    a = make_server(redis_url=redis_server.url, log_size=3)
    for n in range(5):
        a.publish(n)
    late = make_server(redis_url=redis_server.url, log_size=3)
    page = poll(late, after=1)
    assert page["gap"] is True and [e["id"] for e in page["events"]] == [3, 4, 5]
    assert poll(late, after=2)["gap"] is False


def test_redis_restart_loses_nothing_and_ids_continue(make_server, redis_server) -> None:
    a = make_server(redis_url=redis_server.url)
    b = make_server(redis_url=redis_server.url)
    assert [a.publish(n) for n in range(3)] == [1, 2, 3]

    redis_server.stop()
    request = urllib.request.Request(a.url + "/publish", data=b'{"data": "lost?"}',
                                     method="POST", headers={"Content-Type": "application/json"})
    try:
        opener.open(request, timeout=10)
        raise AssertionError("publish succeeded without redis")
    except urllib.error.HTTPError as err:
        assert err.code == 503
        assert json.loads(err.read())["error"].startswith("redis unavailable")
    wait_until(lambda: b.stats()["cluster"]["redis"] == "down")
    assert [e["id"] for e in poll(b)["events"]] == [1, 2, 3]  # still serves what it has

    redis_server.start()  # from its append-only file
    wait_until(lambda: a.stats()["cluster"]["redis"] == "up")
    wait_until(lambda: b.stats()["cluster"]["redis"] == "up")
    assert [b.publish("after"), a.publish("after")] == [4, 5]
    wait_until(lambda: a.stats()["events"]["last_id"] == 5)
    for node in (a, b):
        page = poll(node)
        assert [e["id"] for e in page["events"]] == [1, 2, 3, 4, 5] and not page["gap"]


async def read_sse_ids(url: str, count: int, headers: dict[str, str] | None = None) -> list[int]:
    ids: list[int] = []
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
        async for line in resp.content:
            if line.startswith(b"id: "):
                ids.append(int(line[4:]))
                if len(ids) == count:
                    return ids
    return ids


async def test_every_push_transport_delivers_across_nodes(make_server, redis_server) -> None:
    import socketio

    a = make_server(redis_url=redis_server.url)
    b = make_server(redis_url=redis_server.url)
    sio_got: list[int] = []
    client = socketio.AsyncClient(reconnection=False)
    client.on("news", lambda event: sio_got.append(event["id"]))
    await client.connect(b.url, transports=["websocket"])
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{b.url}/ws") as ws:
            sse = asyncio.create_task(read_sse_ids(f"{b.url}/sse", 3))
            await asyncio.sleep(0.3)
            ids = [await a.apublish(n) for n in range(3)]
            ws_got = [(await ws.receive_json(timeout=5))["id"] for _ in ids]
            sse_got = await asyncio.wait_for(sse, 5)
    for _ in range(50):
        if len(sio_got) == 3:
            break
        await asyncio.sleep(0.05)
    await client.disconnect()
    assert ws_got == sse_got == sio_got == ids == [1, 2, 3]


async def test_sse_resumes_on_another_node_with_last_event_id(make_server, redis_server) -> None:
    a = make_server(redis_url=redis_server.url)
    b = make_server(redis_url=redis_server.url)
    for n in range(5):
        await a.apublish(n)
    for _ in range(50):
        if (await b.astats())["events"]["last_id"] == 5:
            break
        await asyncio.sleep(0.05)
    resumed = await asyncio.wait_for(
        read_sse_ids(f"{b.url}/sse", 3, headers={"Last-Event-ID": "2"}), 5)
    assert resumed == [3, 4, 5]
