"""The routes that are no transport: publish, stats, drop, the index, errors, the token."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

import pytest

import labserver
from labserver.counters import stats_diff
from labserver.options import Options

opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def call(srv: labserver.Server, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict, dict]:
    req = urllib.request.Request(srv.url + path, data=body, method=method, headers=headers or {})
    try:
        with opener.open(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), dict(err.headers)


def test_publish_answers_the_id_and_stats_count_it(srv: labserver.Server) -> None:
    assert call(srv, "POST", "/publish", b'{"data": {"price": 101}}')[:2] == (200, {"id": 1})
    status, body, _ = call(srv, "POST", "/publish", b'{"data": null}')
    assert (status, body) == (200, {"id": 2})
    stats = srv.stats()
    assert stats["events"] == {"published": 2, "last_id": 2, "log_size": 2, "log_capacity": 1000}
    assert list(stats["transports"]) == ["poll", "long_poll", "sse", "ws", "socketio"]  # DESIGN
    for counters in stats["transports"].values():
        assert set(counters) == {"requests", "empty", "messages_out", "messages_in", "open",
                                 "bytes_in", "bytes_out"}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "body must be valid JSON"),
        (b"", "body must be valid JSON"),
        (b"\xff\xfe", "body must be valid JSON"),
        (b"[" * 40_000, "body must be valid JSON"),  # nested past Python's recursion limit
        (b"[1, 2]", "body must be a JSON object"),
        (b'{"payload": 1}', 'body must be {"data": <any JSON>}'),
        (b'{"data": 1, "extra": 2}', 'body must be {"data": <any JSON>}'),
    ],
)
def test_bad_publish_bodies_get_400_and_publish_nothing(srv, body, reason) -> None:
    assert call(srv, "POST", "/publish", body)[:2] == (400, {"error": reason})
    assert srv.stats()["events"]["published"] == 0


def test_body_over_the_limit_gets_413(make_server) -> None:
    srv = make_server(max_message_bytes=1024)
    big = json.dumps({"data": "x" * 2000}).encode()
    status, body, _ = call(srv, "POST", "/publish", big)
    assert (status, body) == (413, {"error": "request body too large: at most 1024 bytes"})
    assert call(srv, "POST", "/publish", b'{"data": "fits"}')[:2] == (200, {"id": 1})


def test_unknown_route_and_wrong_method_are_json(srv: labserver.Server) -> None:
    assert call(srv, "GET", "/nowhere")[:2] == (404, {"error": "no such route"})
    status, body, headers = call(srv, "GET", "/publish")
    assert status == 405 and body["error"].startswith("method GET not allowed")
    assert headers["Allow"] == "POST"
    assert call(srv, "DELETE", "/poll")[0] == 405


def test_drop_validates_its_body(srv: labserver.Server) -> None:
    assert call(srv, "POST", "/drop", b'{"transport": "all"}')[:2] == (200, {"dropped": 0})
    status, body, _ = call(srv, "POST", "/drop", b'{"transport": "pigeon"}')
    assert (status, body) == (400, {"error": 'body must be {"transport": one of sse, ws, '
                                             'socketio, all}'})
    assert call(srv, "POST", "/drop", b'{"transport": "long_poll"}')[0] == 400  # not droppable


def test_index_links_are_relative(srv: labserver.Server) -> None:
    with opener.open(srv.url + "/", timeout=10) as resp:
        html = resp.read().decode()
        assert resp.headers["Content-Type"].startswith("text/html")
    assert 'href="stats"' in html
    assert 'href="/' not in html and "http://" not in html.replace("http://127.0.0.1:PORT", "")


def test_publish_token_is_required_when_set(make_server) -> None:
    srv = make_server(publish_token="s3cret-token-123")
    denied = urllib.request.Request(srv.url + "/publish", data=b'{"data": 1}', method="POST")
    status, body, headers = call(srv, "POST", "/publish", b'{"data": 1}')
    assert status == 401 and "publish_token" in body["error"]
    assert headers["WWW-Authenticate"] == "Bearer"
    wrong = {"Authorization": "Bearer nope"}
    assert call(srv, "POST", "/drop", b'{"transport": "all"}', wrong)[0] == 401
    assert srv.publish("with token") == 1  # the handle sends the token
    assert denied.data  # the raw request above carried no token
    assert call(srv, "GET", "/poll")[0] == 200  # reading needs no token


def test_a_non_loopback_host_gets_a_generated_token() -> None:
    assert Options(host="0.0.0.0").publish_token
    assert Options(host="127.0.0.1").publish_token is None
    assert Options(host="::1").publish_token is None


@pytest.mark.parametrize(
    "options",
    [{"log_size": 0}, {"queue_size": 0}, {"tick": 0}, {"max_message_bytes": 10},
     {"socketio_transports": ["carrier-pigeon"]}, {"retry_ms": -1}],
)
def test_out_of_bounds_options_are_refused(options) -> None:
    with pytest.raises(ValueError):
        labserver.create_app(**options)


def test_unknown_option_is_refused() -> None:
    with pytest.raises(TypeError, match="unknown option"):
        labserver.create_app(colour="red")


def test_stats_diff_subtracts_counts_and_keeps_gauges() -> None:
    before = {"events": {"published": 2, "last_id": 2, "log_size": 2},
              "transports": {"poll": {"requests": 5, "open": 1, "bytes_out": 100}}}
    after = {"events": {"published": 7, "last_id": 7, "log_size": 7},
             "transports": {"poll": {"requests": 9, "open": 0, "bytes_out": 350}}}
    assert stats_diff(before, after) == {
        "events": {"published": 5, "last_id": 7, "log_size": 7},
        "transports": {"poll": {"requests": 4, "open": 0, "bytes_out": 250}},
    }


def test_tick_publishes_on_its_own(make_server) -> None:
    import time

    srv = make_server(tick=0.1)
    deadline = time.monotonic() + 5
    while srv.stats()["events"]["published"] < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    _, body, _ = call(srv, "GET", "/poll")
    assert len(body["events"]) >= 3
    assert body["events"][0]["data"] == {"text": "A message from the server.", "tick": 1}


async def test_a_broken_subscriber_stalls_no_transport_and_publish_answers_200() -> None:
    """Issue 19, bug 2, over real sockets: a subscriber whose write raises and a held poll
    whose wake-up raises (the log's own, in this process), beside a client of every push
    transport and two held long polls (one on the light path, one held by aiohttp). Before,
    ``/publish`` answered 500 and the polls sat out their timeout; now every client gets the
    event and ``/publish`` answers 200."""
    import asyncio

    import aiohttp
    import conftest

    from labserver.app import create_app
    from labserver.keys import COUNTERS, LOG

    def broken(event: object) -> bool:
        raise RuntimeError("a broken write")

    def broken_wake() -> None:
        raise RuntimeError("a broken wake-up")

    app = create_app()
    async with conftest.serving(app) as port, aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{port}"
        app[LOG].subscribe().forward(broken)
        app[LOG].hold(broken_wake)
        sse, ws, sio, news = await conftest.open_every_stream(session, url)
        light = asyncio.ensure_future(session.get(url + "/long-poll?after=0&timeout=20"))
        by_aiohttp = asyncio.ensure_future(session.get(
            url + "/long-poll?after=0&timeout=20", headers={"Connection": "close"}))
        await conftest.wait_until_open(app[COUNTERS], long_polls=2)
        async with session.post(url + "/publish", json={"data": "for everyone"}) as resp:
            assert resp.status == 200 and await resp.json() == {"id": 1}
        for poll in (light, by_aiohttp):
            answer = await asyncio.wait_for(poll, 2)
            assert [e["id"] for e in (await answer.json())["events"]] == [1]
        assert json.loads((await asyncio.wait_for(ws.receive(), 2)).data)["id"] == 1
        assert (await asyncio.wait_for(news, 2))["id"] == 1
        while await asyncio.wait_for(sse.content.readline(), 2) != b"id: 1\n":
            pass
        await sio.disconnect()
        await ws.close()
        sse.close()


def test_the_fast_tier_is_on_here_and_off_in_the_fast_off_copy(request: pytest.FixtureRequest,
                                                               ) -> None:
    """tests/fast_off/test_app_off.py runs this file again with the tier off: a test of the
    copying itself (conftest.fast_off_copy), which would otherwise pass both times unseen."""
    import conftest

    from labserver.keys import FAST
    from labserver.options import fast_by_default

    if conftest.in_fast_off(request.node):
        assert os.environ.get("LABSERVER_FAST") == "0" and labserver.create_app()[FAST] is False
    else:  # on, unless this whole run was started with LABSERVER_FAST=0
        assert labserver.create_app()[FAST] is fast_by_default()


async def test_serving_serves_until_the_block_ends_and_raises_what_serve_raised() -> None:
    """``labserver.app.serving``: the app answers on the port it yields, the port is free once
    the block ends, and a port in use is serve()'s own OSError, not a timeout."""
    import socket

    import aiohttp

    from labserver.app import create_app, serving
    from labserver.keys import LISTENING

    app = create_app()
    async with serving(app) as port, aiohttp.ClientSession() as session:
        assert app[LISTENING].url == f"http://127.0.0.1:{port}"
        async with session.get(app[LISTENING].url + "/stats") as response:
            assert response.status == 200
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # nobody listens there any more
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            async with serving(create_app(port=taken.getsockname()[1])):
                pass
