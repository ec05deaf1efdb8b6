"""The load balancer of the scale-out lesson: round-robin, sticky cookies, streams and WebSocket."""

from __future__ import annotations

import json
import urllib.request

import aiohttp
import pytest

import labserver

opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture
def cluster(make_server, redis_server):
    a = make_server(redis_url=redis_server.url)
    b = make_server(redis_url=redis_server.url)
    return a, b


def node_of(url: str, headers: dict[str, str] | None = None) -> tuple[str, str | None]:
    with opener.open(urllib.request.Request(url, headers=headers or {}), timeout=10) as resp:
        resp.read()
        return resp.headers["X-Labserver-Node"], resp.headers.get("Set-Cookie")


def test_round_robin_alternates_nodes(cluster) -> None:
    with labserver.start_balancer([s.url for s in cluster]) as lb:
        nodes = [node_of(lb.url + "/poll")[0] for _ in range(4)]
    assert nodes == ["0", "1", "0", "1"]


def test_sticky_pins_a_client_with_a_cookie(cluster) -> None:
    with labserver.start_balancer([s.url for s in cluster], policy="sticky") as lb:
        first, cookie = node_of(lb.url + "/poll")
        assert cookie and cookie.startswith("labserver_node=")
        pinned = cookie.split(";")[0]
        assert {node_of(lb.url + "/poll", {"Cookie": pinned})[0] for _ in range(4)} == {first}
        other, _ = node_of(lb.url + "/poll")  # a new client (no cookie) goes to the next node
        assert other != first


def test_publish_through_the_balancer_reaches_every_node(cluster) -> None:
    a, b = cluster
    with labserver.start_balancer([a.url, b.url]) as lb:
        assert [lb.publish(n) for n in range(4)] == [1, 2, 3, 4]
        published_here = [a.stats()["cluster"]["published_here"],
                          b.stats()["cluster"]["published_here"]]
    assert published_here == [2, 2]
    with opener.open(b.url + "/poll", timeout=10) as resp:
        assert [e["id"] for e in json.loads(resp.read())["events"]] == [1, 2, 3, 4]


async def test_websocket_is_relayed(cluster) -> None:
    with labserver.start_balancer([s.url for s in cluster]) as lb:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(lb.url.replace("http", "ws") + "/ws") as ws:
                await ws.send_json({"echo": "through"})
                assert (await ws.receive_json(timeout=5)) == {"echo": "through"}
                event_id = await lb.apublish("hello")
                assert (await ws.receive_json(timeout=5))["id"] == event_id


def test_bad_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="policy"):
        labserver.start_balancer(["http://127.0.0.1:1"], policy="random")
