"""The driver of 06_compare (``labserver.clients``) against a real server on real sockets.

What the lesson relies on: every client of every transport gets every event once, in order;
each experiment has counters of its own, split into phases that add up; the requests and open
connections each transport is known to need; exact per-event bytes where the protocol fixes them
(a WebSocket frame header, an SSE block in a chunk); and a driver that fails fast and clearly
instead of hanging.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
import socketio

import labserver
from labserver import measure
from labserver.clients import CLIENTS, run_side_by_side, run_workload
from labserver.measure import Workload

#: Small and fast: ten events, one every 20 ms.
SMALL = Workload(events=10, interval_s=0.02, payload_bytes=64)
PUSH = ("sse", "ws", "socketio_ws")


@pytest.mark.parametrize("transport", list(CLIENTS))
async def test_every_client_gets_every_event_once_in_order(srv: labserver.Server,
                                                           transport: str) -> None:
    result = await run_workload(srv, transport, 3, SMALL)
    assert len(result.ids) == SMALL.events and result.clients == 3
    assert result.complete()
    assert result.delivered == 3 * SMALL.events
    assert result.latency["n"] == result.delivered and result.latency["p99_ms"] is None
    assert result.total["messages_out"] == result.delivered  # the server counted the same
    for name in ("requests", "bytes_in", "bytes_out"):  # the phases are parts of the whole
        assert result.setup[name] + result.streaming[name] <= result.total[name]
    assert result.bytes_out_per_event > result.event_json_bytes  # the JSON and then some


@pytest.mark.parametrize("transport", PUSH)
async def test_push_transports_need_one_request_per_client(srv: labserver.Server,
                                                           transport: str) -> None:
    result = await run_workload(srv, transport, 3, SMALL)
    assert result.requests == 3 == result.setup["requests"]
    assert result.streaming["requests"] == 0
    assert result.held == 3
    assert result.total["open"] == 0  # every connection closed when the experiment ended


async def test_socketio_polling_start_costs_extra_requests(srv: labserver.Server) -> None:
    result = await run_workload(srv, "socketio_polling", 3, SMALL)
    assert result.requests >= 2 * 3  # the polling open, then the WebSocket upgrade at least
    assert result.held == 3  # one Engine.IO session each


async def test_long_polling_holds_one_request_per_client(srv: labserver.Server) -> None:
    result = await run_workload(srv, "long_poll", 2, SMALL)
    assert result.held == 2  # halfway through, each client's request waits for the next event
    assert SMALL.events * 2 * 0.5 <= result.requests <= SMALL.events * 2 + 2


async def test_short_polling_asks_on_its_interval_events_or_not(srv: labserver.Server) -> None:
    slow = Workload(events=8, interval_s=0.125, payload_bytes=64)  # 1 s; polls every 50 ms
    result = await run_workload(srv, "short_poll", 3, slow, interval_s=0.05)
    assert result.held == 0
    assert result.requests >= 3 * 0.6 * slow.duration_s / 0.05
    assert result.total["empty"] > result.requests / 2  # most answers carry nothing
    # An event waits for the next poll: about half of 50 ms (generous bounds: a busy machine).
    assert 5 <= result.latency["p50_ms"] <= 90


async def test_experiments_have_counters_of_their_own(srv: labserver.Server) -> None:
    first = await run_workload(srv, "ws", 2, SMALL)
    second = await run_workload(srv, "ws", 2, SMALL)
    assert second.ids[0] == first.ids[-1] + 1  # the second starts after the first's events
    assert second.requests == first.requests == 2
    assert second.total["messages_out"] == 2 * SMALL.events
    # The same work costs the same bytes, give or take the digits of ids and timestamps.
    assert abs(second.total["bytes_out"] - first.total["bytes_out"]) < 0.05 * first.total[
        "bytes_out"]


async def test_websocket_frame_header_is_two_bytes_without_deflate(
        srv: labserver.Server) -> None:
    result = await run_workload(srv, "ws", 2, SMALL)  # each event's JSON is under 126 bytes
    assert result.event_json_bytes < 126
    assert result.streaming["bytes_in"] == 0
    # RFC 6455 §5.2: a server's frame of fewer than 126 bytes has a 2-byte header.
    assert result.streaming["bytes_out"] == 2 * sum(  # two clients
        2 + size for size in event_json_sizes(result))


async def test_websocket_with_deflate_sends_less_than_the_json(srv: labserver.Server) -> None:
    plain = await run_workload(srv, "ws", 2, SMALL)
    deflate = await run_workload(srv, "ws", 2, SMALL, compress=15)
    assert deflate.complete()
    assert deflate.streaming["bytes_out"] < 0.5 * plain.streaming["bytes_out"]


async def test_sse_block_per_event_in_one_chunk(srv: labserver.Server) -> None:
    result = await run_workload(srv, "sse", 2, SMALL)
    expected = 0
    for event_id, size in zip(result.ids, event_json_sizes(result), strict=True):
        block = len(f"id: {event_id}\nevent: news\ndata: ") + size + 2  # "\n\n" ends the block
        expected += len(f"{block:x}\r\n") + block + 2  # chunked: size line, block, CRLF
    assert result.streaming["bytes_out"] == 2 * expected


async def test_transports_that_share_counters_cannot_run_side_by_side(
        srv: labserver.Server) -> None:
    with pytest.raises(ValueError, match="share counters"):
        await run_side_by_side(srv, ["socketio_ws", "socketio_polling"], 1, SMALL)


async def test_side_by_side_keeps_each_transports_counters(srv: labserver.Server) -> None:
    results = await run_side_by_side(srv, ["long_poll", "sse", "ws"], 2, SMALL)
    assert all(r.complete() and r.ids == results["ws"].ids for r in results.values())
    assert results["sse"].requests == results["ws"].requests == 2
    assert results["long_poll"].requests >= SMALL.events  # its own, not the others'


async def test_a_client_that_cannot_connect_fails_the_run_at_once(make_server) -> None:
    srv = make_server(socketio_transports=["polling"])  # WebSocket refused: the 12.3 fallback
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await run_workload(srv, "socketio_ws", 2, SMALL)
    assert loop.time() - started < 5
    fallback = await run_workload(srv, "socketio_polling", 2, SMALL)  # the default client works
    assert fallback.complete()


async def test_socketio_by_hand_reads_the_same_frames_as_the_library(
        srv: labserver.Server) -> None:
    library = await run_workload(srv, "socketio_ws", 2, SMALL)
    by_hand = await run_workload(srv, "socketio_by_hand", 2, SMALL)
    assert by_hand.complete() and by_hand.requests == 2 and by_hand.held == 2
    # The same packets on the wire: 42["news",<event>] in a frame, whoever reads them.
    per_event = [r.streaming["bytes_out"] / r.delivered - r.event_json_bytes
                 for r in (library, by_hand)]
    assert abs(per_event[0] - per_event[1]) < 0.01 and by_hand.streaming["bytes_in"] == 0


def event_json_sizes(result) -> list[int]:
    """Each event's JSON as the server serialised it (``Event.create``)."""
    first = result.deliveries[0]
    return [len(json.dumps({"id": i, "data": SMALL.payload(n), "ts": ts}, separators=(",", ":")))
            for n, (i, ts) in enumerate(zip(first.ids, first.sent_ts, strict=True))]


# --- labserver.measure: the workload default and the lesson driver (01_polling) --------------


async def test_publish_workload_reads_workload_when_called(srv: labserver.Server,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Rebinding ``labserver.measure.WORKLOAD`` changes what ``publish_workload()`` publishes
    (01's exercise relies on it; a default bound at import time would ignore it)."""
    monkeypatch.setattr(measure, "WORKLOAD", Workload(events=3, interval_s=0.01, payload_bytes=5))
    ids = await measure.publish_workload(srv)
    assert len(ids) == 3
    assert srv.stats()["events"]["published"] == 3


async def test_drive_runs_a_client_from_its_cursor_to_the_last_event(
    srv: labserver.Server,
) -> None:
    srv.publish({"before": "the run"})  # not part of the run: the client starts after it

    async def poller(run: measure.ClientRun, interval_s: float) -> None:
        after = run.after
        async with aiohttp.ClientSession() as session:
            while run.wants_more():
                sent = time.time()
                async with session.get(srv.url + "/poll", params={"after": after}) as response:
                    page = await response.json()
                run.record(sent, page)
                after = page["last_id"]
                await asyncio.sleep(interval_s)

    run = await measure.drive(srv, poller, workload=SMALL, start_after_s=0.01, interval_s=0.005)
    assert run.ids == list(range(2, 2 + SMALL.events))
    assert sum(n for _, _, n in run.requests) == SMALL.events
    assert run.stats["transports"]["poll"]["requests"] == len(run.requests)
    assert all(sent >= run.t0 + 0.01 for sent, _, _ in run.requests)


async def test_drive_fails_when_the_client_loses_an_event(srv: labserver.Server) -> None:
    async def skips_the_first(run: measure.ClientRun) -> None:
        async with aiohttp.ClientSession() as session:
            await asyncio.sleep(SMALL.duration_s + 0.1)  # every event published
            url = srv.url + "/poll"
            async with session.get(url, params={"after": run.after + 1}) as response:
                run.record(time.time(), await response.json())

    with pytest.raises(AssertionError, match="every event exactly once"):
        await measure.drive(srv, skips_the_first, workload=SMALL)


async def test_run_together_gives_every_client_the_same_events(srv: labserver.Server) -> None:
    from labserver.clients import run_together, socketio_by_hand, socketio_websocket, ws

    got = await run_together(srv, {"ws": ws, "by hand": socketio_by_hand,
                                   "library": socketio_websocket}, SMALL)
    ids = [d.ids for d in got.values()]
    assert ids[0] == ids[1] == ids[2] and len(ids[0]) == SMALL.events
    assert ids[0] == sorted(set(ids[0]))
    assert srv.stats()["transports"]["socketio"]["messages_out"] == 2 * SMALL.events


async def test_side_by_side_in_one_loop_the_client_served_first_has_the_lower_median(
        srv: labserver.Server) -> None:
    """03b's explanation of "WebSocket slower than SSE": one event loop serves one client's
    delivery, then the other's, so the client served first at (nearly) every event has the
    lower median latency, whichever transport it is."""
    results = await run_side_by_side(srv, ["sse", "ws"], 1, SMALL)
    sse_at = results["sse"].deliveries[0].received_ts
    ws_at = results["ws"].deliveries[0].received_ts
    first = {"sse": sum(s < w for s, w in zip(sse_at, ws_at, strict=True)),
             "ws": sum(w < s for s, w in zip(sse_at, ws_at, strict=True))}
    served_first = max(first, key=first.get)
    assert first[served_first] >= 0.8 * SMALL.events
    p50 = {t: r.latency["p50_ms"] for t, r in results.items()}
    assert min(p50, key=p50.get) == served_first


def test_every_declared_transport_has_a_client() -> None:
    """The clients' counter names are the transports' own declarations: a transport added
    without a client (or a client of a transport that is gone) fails here, not in a lesson."""
    from labserver.app import create_app
    from labserver.clients import CLIENTS
    from labserver.keys import TRANSPORTS

    assert {counter for _, counter in CLIENTS.values()} == set(create_app()[TRANSPORTS].names)
