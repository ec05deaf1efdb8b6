"""Scale-out on a real redis-server behind a real nginx: global ids, cross-node delivery,
Socket.IO's polling start (round-robin breaks it, a sticky upstream or WebSocket-only does
not), Redis going away.

One Redis and two nodes serve the whole module (starting a node is most of a test's time);
each test reads ids relative to the cluster's last id. The restart test has its own.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
import pytest
import socketio

import labserver
from labserver.chat import SESSION_COOKIE
from labserver.cluster import RedisProcess, counter_after_restart
from labserver.nginx import Nginx

pytestmark = pytest.mark.timeout(60)
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Cluster:
    redis: RedisProcess
    a: labserver.Server
    b: labserver.Server

    @property
    def nodes(self) -> list[labserver.Server]:
        return [self.a, self.b]

    @property
    def last_id(self) -> int:
        return max(n.stats()["events"]["last_id"] for n in self.nodes)

    def published_here(self) -> list[int]:
        return [n.stats()["cluster"]["published_here"] for n in self.nodes]

    def socketio_requests(self) -> list[int]:
        return [n.stats()["transports"]["socketio"]["requests"] for n in self.nodes]


@pytest.fixture(scope="module")
def cluster(redis_server_path: str) -> Iterator[Cluster]:
    with tempfile.TemporaryDirectory() as directory, \
            RedisProcess(directory, redis_server_path).start() as redis:
        secret = secrets.token_hex(16)  # one session secret: a cookie from a is valid on b
        a = labserver.start(redis_url=redis.url, session_secret=secret)
        b = labserver.start(redis_url=redis.url, session_secret=secret)
        try:
            yield Cluster(redis, a, b)
        finally:
            a.stop()
            b.stop()


@pytest.fixture(scope="module")
def round_robin(cluster: Cluster, nginx_path: str) -> Iterator[Nginx]:
    with Nginx([n.url for n in cluster.nodes], nginx_path=nginx_path) as proxy:
        yield proxy


def poll(url: str, after: int = 0) -> dict:
    with opener.open(f"{url}/poll?after={after}", timeout=10) as resp:
        return json.loads(resp.read())


def wait_until(condition, within_s: float = 10) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_events_published_on_any_node_reach_every_node_with_global_ids(
        cluster: Cluster) -> None:
    a, b = cluster.nodes
    start, here = cluster.last_id, cluster.published_here()
    ids = [a.publish({"on": "a"}), b.publish({"on": "b"}), a.publish({"on": "a"})]
    assert ids == [start + 1, start + 2, start + 3]
    wait_until(lambda: min(n.stats()["events"]["last_id"] for n in cluster.nodes) == ids[-1])
    for node in (a, b):
        page = poll(node.url, after=start)
        assert [e["id"] for e in page["events"]] == ids
        assert [e["data"]["on"] for e in page["events"]] == ["a", "b", "a"]
        assert page["gap"] is False
    stats_a, stats_b = a.stats()["cluster"], b.stats()["cluster"]
    assert stats_a["redis"] == "up" and stats_a["node"] != stats_b["node"]
    assert [now - was for now, was in zip(cluster.published_here(), here, strict=True)] == [2, 1]


async def test_concurrent_publishers_never_share_an_id(cluster: Cluster) -> None:
    start = cluster.last_id
    ids = await asyncio.gather(*(n.apublish(i) for i in range(30) for n in cluster.nodes))
    assert sorted(ids) == list(range(start + 1, start + 61))
    for node in cluster.nodes:  # a node mirrors the other's publishes a moment later
        wait_until(lambda node=node: node.stats()["events"]["last_id"] == start + 60)
        assert [e["id"] for e in poll(node.url, after=start)["events"]] == sorted(ids)


async def test_long_poll_on_one_node_wakes_on_a_publish_on_another(cluster: Cluster) -> None:
    a, b = cluster.nodes
    start = cluster.last_id
    async with aiohttp.ClientSession() as session:
        held = asyncio.create_task(session.get(f"{b.url}/long-poll?after={start}&timeout=10"))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        event_id = await a.apublish("across")
        response = await asyncio.wait_for(held, 5)
        page = await response.json()
    assert [e["id"] for e in page["events"]] == [event_id]
    assert time.monotonic() - started < 2


def test_a_cursor_from_one_node_resumes_on_another(cluster: Cluster) -> None:
    a, b = cluster.nodes
    start = cluster.last_id
    for n in range(5):
        a.publish(n)
    cursor = poll(a.url, after=start)["events"][2]["id"]  # the client saw three on node a
    wait_until(lambda: b.stats()["events"]["last_id"] == start + 5)
    assert [e["id"] for e in poll(b.url, after=cursor)["events"]] == [start + 4, start + 5]


def test_a_late_node_loads_the_recent_log(cluster: Cluster) -> None:
    for n in range(5):
        cluster.a.publish(n)
    last = cluster.last_id
    with labserver.start(redis_url=cluster.redis.url, log_size=3) as late:
        page = poll(late.url, after=last - 4)
        assert page["gap"] is True and [e["id"] for e in page["events"]] == [
            last - 2, last - 1, last]
        assert poll(late.url, after=last - 3)["gap"] is False


async def read_sse_ids(url: str, count: int, headers: dict[str, str] | None = None) -> list[int]:
    ids: list[int] = []
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
        async for line in resp.content:
            if line.startswith(b"id: "):
                ids.append(int(line[4:]))
                if len(ids) == count:
                    return ids
    return ids


async def test_every_push_transport_delivers_across_nodes(cluster: Cluster) -> None:
    a, b = cluster.nodes
    start = cluster.last_id
    sio_got: list[int] = []
    three = asyncio.Event()
    client = socketio.AsyncClient(reconnection=False)
    client.on("news", lambda event: (sio_got.append(event["id"]),
                                     len(sio_got) == 3 and three.set()))
    await client.connect(b.url, transports=["websocket"], auth={"after": start})
    try:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{b.url}/ws?after={start}") as ws:
                sse = asyncio.create_task(read_sse_ids(f"{b.url}/sse", 3,
                                                       {"Last-Event-ID": str(start)}))
                ids = [await a.apublish(n) for n in range(3)]
                ws_got = [(await ws.receive_json(timeout=5))["id"] for _ in ids]
                sse_got = await asyncio.wait_for(sse, 5)
        await asyncio.wait_for(three.wait(), 5)
    finally:
        await client.disconnect()
    assert ws_got == sse_got == sio_got == ids == [start + 1, start + 2, start + 3]


async def test_sse_resumes_on_another_node_with_last_event_id(cluster: Cluster) -> None:
    a, b = cluster.nodes
    start = cluster.last_id
    for n in range(5):
        await a.apublish(n)
    wait_until(lambda: b.stats()["events"]["last_id"] == start + 5)
    resumed = await asyncio.wait_for(
        read_sse_ids(f"{b.url}/sse", 3, headers={"Last-Event-ID": str(start + 2)}), 5)
    assert resumed == [start + 3, start + 4, start + 5]


def test_redis_restart_loses_nothing_and_ids_continue(make_server, redis_server) -> None:
    a = make_server(redis_url=redis_server.url)
    b = make_server(redis_url=redis_server.url)
    assert [a.publish(n) for n in range(3)] == [1, 2, 3]

    redis_server.stop()
    request = urllib.request.Request(a.url + "/publish", data=b'{"data": "lost?"}',
                                     method="POST", headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        opener.open(request, timeout=10)
    assert refused.value.code == 503
    assert json.loads(refused.value.read())["error"].startswith("redis unavailable")
    wait_until(lambda: b.stats()["cluster"]["redis"] == "down")
    assert [e["id"] for e in poll(b.url)["events"]] == [1, 2, 3]  # still serves what it has

    redis_server.start()  # from its append-only file
    wait_until(lambda: a.stats()["cluster"]["redis"] == "up")
    wait_until(lambda: b.stats()["cluster"]["redis"] == "up")
    assert [b.publish("after"), a.publish("after")] == [4, 5]
    wait_until(lambda: a.stats()["events"]["last_id"] == 5)
    for node in (a, b):
        page = poll(node.url)
        assert [e["id"] for e in page["events"]] == [1, 2, 3, 4, 5] and not page["gap"]


@pytest.mark.parametrize(("persistence", "how", "kept"), [
    ("always", "crash", True), ("everysec", "crash", True),
    ("default", "stop", True), ("default", "crash", False)])
def test_what_survives_a_restart_follows_the_persistence_settings(
        redis_server_path: str, persistence: str, how: str, kept: bool) -> None:
    """The lesson's Redis (append-only, fsync always) keeps the id counter through a crash;
    redis-server's defaults keep it through a clean stop (a snapshot on SIGTERM) only."""
    left = counter_after_restart(persistence, how, 20, redis_server_path)
    assert left == (20 if kept else 0)


def test_persistence_must_be_named() -> None:
    with pytest.raises(ValueError, match="persistence"):
        RedisProcess(tempfile.gettempdir(), persistence="sometimes")


# --- behind nginx -------------------------------------------------------------------------


def upstream_of(url: str) -> str:
    with opener.open(url, timeout=10) as resp:
        resp.read()
        return resp.headers["X-Upstream"]


def test_round_robin_spreads_requests_and_publishes_over_the_nodes(
        cluster: Cluster, round_robin: Nginx) -> None:
    addresses = [n.url.removeprefix("http://") for n in cluster.nodes]
    chosen = [upstream_of(round_robin.url + "/poll") for _ in range(4)]
    assert sorted(chosen) == sorted(addresses * 2) and chosen[0] != chosen[1]
    start, here = cluster.last_id, cluster.published_here()
    request = {"method": "POST", "headers": {"Content-Type": "application/json"}}
    ids = [json.loads(opener.open(urllib.request.Request(
        round_robin.url + "/publish", data=json.dumps({"data": n}).encode(), **request),
        timeout=10).read())["id"] for n in range(4)]
    assert ids == [start + 1, start + 2, start + 3, start + 4]
    assert [now - was for now, was in zip(cluster.published_here(), here, strict=True)] == [2, 2]


async def engineio_polling_start(url: str, session: aiohttp.ClientSession
                                 ) -> tuple[list[str], int, str]:
    """The first two requests of a default Socket.IO client: the Engine.IO handshake (GET),
    then the namespace connect ``40`` (POST) with the session id it gave. Returns the upstream
    of each, and the second's status and body."""
    async with session.get(url + "/socket.io/?EIO=4&transport=polling") as first:
        sid = json.loads((await first.text())[1:])["sid"]
        upstreams = [first.headers["X-Upstream"]]
    async with session.post(f"{url}/socket.io/?EIO=4&transport=polling&sid={sid}",
                            data="40") as second:
        upstreams.append(second.headers["X-Upstream"])
        return upstreams, second.status, await second.text()


async def test_round_robin_breaks_socketio_polling_start(round_robin: Nginx) -> None:
    async with aiohttp.ClientSession() as session:
        upstreams, status, body = await engineio_polling_start(round_robin.url, session)
    assert upstreams[0] != upstreams[1]
    assert status == 400 and "Invalid session" in body


async def socketio_through(url: str, publisher: labserver.Server,
                           transports: list[str] | None, page_first: bool = True,
                           local_addr: tuple[str, int] | None = None) -> str:
    """Connect a python-socketio client through ``url`` as a browser would (the page first,
    for its session cookie, unless not ``page_first``), receive one event; the transport it
    ended on."""
    connector = aiohttp.TCPConnector(local_addr=local_addr)
    async with aiohttp.ClientSession(connector=connector,
                                     cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        if page_first:
            async with http.get(url + "/") as page:
                assert page.status == 200
        got: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        client = socketio.AsyncClient(http_session=http, reconnection=False)
        client.on("news", lambda event: got.done() or got.set_result(event["id"]))
        await client.connect(url, transports=transports, wait_timeout=5)
        try:
            event_id = await publisher.apublish("through nginx")
            assert await asyncio.wait_for(got, 5) == event_id
            return client.transport()
        finally:
            await client.disconnect()


@pytest.mark.parametrize("balance", ["cookie:" + SESSION_COOKIE, "hash_addr"])
async def test_a_sticky_upstream_keeps_the_polling_start_on_one_node(
        cluster: Cluster, nginx_path: str, balance: str, request: pytest.FixtureRequest) -> None:
    # hash_addr: the client comes from another loopback address than the test's other requests
    source = request.getfixturevalue("loopback_clients")[0] if balance == "hash_addr" else None
    with Nginx([n.url for n in cluster.nodes], balance=balance, nginx_path=nginx_path) as proxy:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.get(proxy.url + "/"):
                pass  # the session cookie, as a browser gets it with the page
            for _ in range(3):
                upstreams, status, _body = await engineio_polling_start(proxy.url, http)
                assert status == 200 and upstreams[0] == upstreams[1]
        before = cluster.socketio_requests()
        transport = await socketio_through(proxy.url, cluster.a, None,
                                           local_addr=(source, 0) if source else None)
        used = [now - was for now, was in zip(cluster.socketio_requests(), before, strict=True)]
    assert transport == "websocket"  # polling first, then the upgrade, on one node
    assert sorted(used)[0] == 0 and sorted(used)[1] >= 2, used  # every request on one node


async def test_websocket_only_needs_no_stickiness(cluster: Cluster, round_robin: Nginx) -> None:
    before = cluster.socketio_requests()
    for _ in range(2):  # consecutive connections: round-robin sends them to both nodes
        transport = await socketio_through(round_robin.url, cluster.b, ["websocket"],
                                           page_first=False)
        assert transport == "websocket"
    used = [now - was for now, was in zip(cluster.socketio_requests(), before, strict=True)]
    assert used == [1, 1]


async def test_plain_websocket_through_nginx_gets_events_from_the_other_node(
        cluster: Cluster, round_robin: Nginx) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(round_robin.url.replace("http", "ws") + "/ws") as ws:
            await ws.send_json({"echo": "through nginx"})
            assert await ws.receive_json(timeout=5) == {"echo": "through nginx"}
            for node in cluster.nodes:  # whichever node holds the socket, both publishers reach it
                event_id = await node.apublish("hello")
                assert (await ws.receive_json(timeout=5))["id"] == event_id
