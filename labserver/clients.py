"""One workload, every transport: the clients and the driver of the lesson ``06_compare``.

What it teaches: the chapter's 12.1 compares polling, SSE and WebSocket with adjectives —
polling "wastes a lot of server resources", WebSocket's "per-message overhead is small". This
module is the experiment that turns the adjectives into numbers: the *same* workload
(:data:`labserver.measure.WORKLOAD` — events at a fixed rate with a fixed payload) received by
several clients over one transport at a time, and the server's own counters (requests, bytes
counted at the socket, connections open) for that one experiment.

Read first: the clients, one per transport — :func:`short_poll`, :func:`long_poll`,
:func:`sse`, :func:`ws` (aiohttp) and :func:`socketio_websocket`, :func:`socketio_polling`
(python-socketio's ``AsyncClient``), and :func:`socketio_by_hand`, the same Socket.IO packets
read on aiohttp's WebSocket without the library. Each is the loop a learner would write, and
each does the same three things with the :class:`~labserver.measure.ClientRun` the driver
gives it: connect and say so (``run.connected.set()``), record every event it receives
(``run.record_event(event)``, or a poll's whole answer with ``run.record(sent, page)``), and once
it has them all, keep its connection open until the driver lets go (``await run.finished()``),
so that the counters are read before anything closes. Every client starts from the same cursor
(``run.after``: the last event id before the experiment), so none can miss an event, whichever
connects last. The clients of ``01_polling``'s cells record into the same object.

Then :func:`run_workload`, the driver (on :func:`labserver.measure.experiment`, the harness
``01_polling``'s :func:`~labserver.measure.drive` uses too). It reads ``GET /stats`` before,
around and after each phase, so that each experiment has counters of its own
(:func:`labserver.stats_diff`) and they split into phases:

* ``setup`` — from before the clients connect until every one is connected: handshakes,
  the SSE response's headers, Socket.IO's open and namespace packets;
* ``streaming`` — while the events flow, connections already open: what each further event
  costs (for polling, every request of the run is here);
* ``total`` — the whole experiment, closing included: the honest "bytes per delivered event";
* ``publishing`` — from just before the first publish to just after the last, with its own
  length (``publishing_s``, between the two snapshots): every client is still receiving, so a
  rate over it (``requests_per_s``, ``requests_per_event``) is the steady one;
* ``held`` — the ``open`` gauge halfway through publishing, between two events (a long poll is
  answered by each event and asked again a moment later): connections, or held requests, the
  server keeps for these clients.

:func:`run_side_by_side` runs several transports on one stream of events (the sweeps do, to stay
fast); each transport's counters stay its own, so only transports that count under different
names can share a run.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import socketio

from .counters import stats_diff
from .measure import (
    CONNECT_TIMEOUT_S,
    DELIVERY_GRACE_S,
    WORKLOAD,
    ClientRun,
    Deliveries,
    StatsPublisher,
    Workload,
    experiment,
    publish_workload,
    summarize_ms,
    until,
)
from .polling import LONG_POLL, POLL
from .production import (  # noqa: F401 (06_compare imports them from here; they live there)
    CHROMIUM_POLL_REQUEST_BYTES,
    BrowserRequest,
    chromium_poll_request,
)
from .socketio import TRANSPORT as SOCKETIO
from .sse import TRANSPORT as SSE
from .ws import TRANSPORT as WS

#: How long a long poll may be held (seconds). Shorter than the server's default of 25, longer
#: than any gap between events in a workload here: a held request is answered by an event.
LONG_POLL_TIMEOUT_S = 10.0
#: Short polling's interval (seconds), as in ``02_sse``: ten requests a second per client.
SHORT_POLL_INTERVAL_S = 0.1


# --- the clients: one per transport ---------------------------------------------------------


async def short_poll(url: str, run: ClientRun, interval_s: float = SHORT_POLL_INTERVAL_S) -> None:
    """Short polling: ask ``GET /poll?after=ID`` every ``interval_s``, events or not."""
    async with aiohttp.ClientSession() as session:
        run.connected.set()  # nothing to open: each poll is a request of its own
        await asyncio.sleep(random.uniform(0, interval_s))  # clients start at random moments
        after = run.after
        while run.wants_more():
            sent = time.time()
            async with session.get(f"{url}/poll", params={"after": after}) as resp:
                page = await resp.json()
            run.record(sent, page)  # the request, and each event's arrival
            after = page["last_id"]
            if run.wants_more():
                await asyncio.sleep(interval_s)
        await run.finished()


async def long_poll(url: str, run: ClientRun, timeout_s: float = LONG_POLL_TIMEOUT_S) -> None:
    """Long polling: ``GET /long-poll`` is held until there is an event; ask again at once."""
    async with aiohttp.ClientSession() as session:
        run.connected.set()
        after = run.after
        while run.wants_more():
            params = {"after": after, "timeout": timeout_s}
            sent = time.time()
            async with session.get(f"{url}/long-poll", params=params) as resp:
                page = await resp.json()
            run.record(sent, page)
            after = page["last_id"]
        await run.finished()


async def sse(url: str, run: ClientRun) -> None:
    """Server-Sent Events: one ``GET /sse`` response, read line by line, for every event."""
    headers = {"Accept": "text/event-stream", "Last-Event-ID": str(run.after)}
    async with aiohttp.ClientSession() as session, session.get(f"{url}/sse",
                                                                headers=headers) as resp:
        run.connected.set()
        kind, data = "message", []
        async for raw in resp.content:  # one line at a time (aiohttp removed the chunking)
            line = raw.decode().rstrip("\r\n")
            if not line:  # a blank line ends a block: dispatch it
                if kind == "news":
                    run.record_event(json.loads("\n".join(data)))
                kind, data = "message", []
                if not run.wants_more():
                    break
            elif line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
            # id:, retry: and ": ping" comments need nothing here: the cursor is the event's id
        await run.finished()


async def ws(url: str, run: ClientRun, compress: int = 0) -> None:
    """WebSocket (``GET /ws``): each event one JSON text message.

    aiohttp's client offers permessage-deflate only when asked (``compress=15``); by default
    it does not, so frames carry the event's JSON as it is, behind a 2–14 byte frame header.
    """
    async with aiohttp.ClientSession() as session, session.ws_connect(
        f"{url}/ws", params={"after": run.after}, compress=compress
    ) as sock:
        run.connected.set()
        async for msg in sock:
            message = json.loads(msg.data)
            if "id" in message:  # an event (a gap notice or a status has no id)
                run.record_event(message)
            if not run.wants_more():
                break
        await run.finished()


async def socketio_client(url: str, run: ClientRun, transports: list[str] | None = None) -> None:
    """Socket.IO with python-socketio's ``AsyncClient``: ``news`` carries each event.

    ``transports=None`` is the default client: it opens with HTTP long-polling and upgrades
    to WebSocket (the chapter's fallback of 12.3); ``["websocket"]`` starts with WebSocket,
    as the chapter's page does. ``auth={"after": …}`` resumes from the cursor.
    """
    client = socketio.AsyncClient(reconnection=False)
    client.on("news", run.record_event)
    await client.connect(url, transports=transports, auth={"after": run.after},
                         wait_timeout=10)
    try:
        run.connected.set()
        await run.received_all.wait()
        await run.finished()
    finally:
        await client.disconnect()


async def socketio_websocket(url: str, run: ClientRun) -> None:
    """Socket.IO over WebSocket from the start (the chapter's ``transports: ['websocket']``)."""
    await socketio_client(url, run, ["websocket"])


async def socketio_polling(url: str, run: ClientRun) -> None:
    """Socket.IO as a default client opens: HTTP long-polling first, then the upgrade."""
    await socketio_client(url, run, None)


async def socketio_by_hand(url: str, run: ClientRun) -> None:
    """Socket.IO without a library: Engine.IO 4 and Socket.IO 5 packets on aiohttp's WebSocket."""
    ws_url = url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url) as sock:
        await sock.receive_str()                             # 0{"sid":…}: Engine.IO open
        await sock.send_str("40" + json.dumps({"after": run.after}))  # connect to "/", auth
        await sock.receive_str()                             # 40{"sid":…}: connected
        run.connected.set()
        async for msg in sock:
            if msg.data == "2":                              # Engine.IO ping: answer pong
                await sock.send_str("3")
            elif msg.data.startswith('42["news",'):          # message (4) + event (2)
                run.record_event(json.loads(msg.data[2:])[1])
            if not run.wants_more():
                break
        await run.finished()


Client = Callable[..., Awaitable[None]]

#: Every transport of the lesson: its client, and the name its counters go under in ``/stats``.
#: The counter names are the ones each transport declares (``labserver.transports``).
CLIENTS: dict[str, tuple[Client, str]] = {
    "short_poll": (short_poll, POLL),
    "long_poll": (long_poll, LONG_POLL),
    "sse": (sse, SSE),
    "ws": (ws, WS),
    "socketio_ws": (socketio_websocket, SOCKETIO),
    "socketio_polling": (socketio_polling, SOCKETIO),
    "socketio_by_hand": (socketio_by_hand, SOCKETIO),
}


# --- the result of one experiment -----------------------------------------------------------


@dataclass
class Result:
    """One transport's share of an experiment: what its clients got and what it cost."""

    transport: str  # a key of CLIENTS
    counter: str  # its name in /stats
    workload: Workload
    ids: list[int]  # the ids published, in order
    deliveries: list[Deliveries]  # one per client
    total: dict[str, int]  # this transport's counters, the whole experiment
    setup: dict[str, int]  # ... while the clients connected
    streaming: dict[str, int]  # ... while the events flowed, connections open
    held: int  # the open gauge halfway through publishing, for these clients
    #: ... from just before the first publish to just after the last: every client is still
    #: receiving, so a rate over this window is the steady one (no connecting, no closing)
    publishing: dict[str, int] = field(default_factory=dict)
    publishing_s: float = float("nan")  # that window's length, between the two snapshots

    @property
    def requests_per_s(self) -> float:
        """Requests per second per client over the publishing window (its own length)."""
        return self.publishing["requests"] / self.clients / self.publishing_s

    @property
    def requests_per_event(self) -> float:
        """Requests per event delivered, both counted in the publishing window."""
        return self.publishing["requests"] / self.publishing["messages_out"]

    @property
    def clients(self) -> int:
        return len(self.deliveries)

    @property
    def delivered(self) -> int:
        return sum(len(d) for d in self.deliveries)

    @property
    def requests(self) -> int:
        return self.total["requests"]

    @property
    def bytes_in_per_event(self) -> float:
        """Client → server bytes at the socket, per delivered event, the whole experiment."""
        return self.total["bytes_in"] / self.delivered

    @property
    def bytes_out_per_event(self) -> float:
        """Server → client bytes at the socket, per delivered event, the whole experiment."""
        return self.total["bytes_out"] / self.delivered

    @property
    def streaming_bytes_per_event(self) -> float:
        """Both directions, connections already open: what one more event costs."""
        return (self.streaming["bytes_in"] + self.streaming["bytes_out"]) / self.delivered

    @property
    def event_json_bytes(self) -> float:
        """The mean size of an event's JSON ``{"id", "data", "ts"}``, as the server wrote it."""
        sizes = [len(json.dumps({"id": i, "data": self.workload.payload(n), "ts": ts},
                                separators=(",", ":")))
                 for n, (i, ts) in enumerate(zip(self.deliveries[0].ids,
                                                 self.deliveries[0].sent_ts, strict=True))]
        return sum(sizes) / len(sizes)

    @property
    def latencies_ms(self) -> list[float]:
        return [ms for d in self.deliveries for ms in d.latencies_ms]

    @property
    def latency(self) -> dict[str, float | int | None]:
        """Median and p99 over every delivery (p99 only with at least 100 of them)."""
        return summarize_ms(self.latencies_ms)

    def complete(self) -> bool:
        """Every client got every event, once, in order."""
        return all(d.ids == self.ids for d in self.deliveries)


# --- the driver -----------------------------------------------------------------------------


async def run_workload(srv: StatsPublisher, transport: str, clients: int = 5,
                       workload: Workload = WORKLOAD, **options: Any) -> Result:
    """``clients`` clients of ``transport`` receive ``workload``; its counters and deliveries.

    ``options`` go to the client (``interval_s=`` for short polling, ``compress=15`` for
    WebSocket with permessage-deflate).
    """
    results = await run_side_by_side(srv, [transport], clients, workload, {transport: options})
    return results[transport]


async def run_side_by_side(
    srv: StatsPublisher, transports: Sequence[str], clients: int = 5, workload: Workload = WORKLOAD,
    options: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Result]:
    """Several transports on one stream of events, each with ``clients`` clients."""
    counters = [CLIENTS[t][1] for t in transports]
    if len(set(counters)) != len(counters):
        raise ValueError("transports that share counters cannot run side by side: "
                         + ", ".join(transports))
    options = options or {}
    names = {t: [f"{t} {i}" for i in range(clients)] for t in transports}
    starters = {name: functools.partial(CLIENTS[t][0], srv.url, **options.get(t, {}))
                for t in transports for name in names[t]}
    async with experiment(srv, starters, workload) as running:
        before = running.before
        await running.until_connected()
        connected, started = await _timed_stats(srv)
        between_events_s = (workload.events // 2 + 0.5) * workload.interval_s
        halfway = asyncio.create_task(_stats_after(srv, between_events_s))
        try:
            ids = await publish_workload(srv, workload)
            published, ended = await _timed_stats(srv)
            middle = await halfway
        finally:
            halfway.cancel()  # a publish that failed leaves no task behind
        await running.until_received(DELIVERY_GRACE_S)
        delivered = await srv.astats()
    after = await _settled(srv, before, counters)

    results = {}
    for t, name in zip(transports, counters, strict=True):
        def used(a: dict[str, Any], b: dict[str, Any], name: str = name) -> dict[str, int]:
            return stats_diff(a, b)["transports"][name]

        results[t] = Result(
            transport=t, counter=name, workload=workload, ids=ids,
            deliveries=[running.runs[n].deliveries for n in names[t]],
            total=used(before, after), setup=used(before, connected),
            streaming=used(connected, delivered),
            held=middle["transports"][name]["open"] - before["transports"][name]["open"],
            publishing=used(connected, published), publishing_s=ended - started,
        )
    return results


async def run_together(srv: StatsPublisher, clients: dict[str, Client],
                       workload: Workload = WORKLOAD) -> dict[str, Deliveries]:
    """Clients of any transports on one stream of events: what each one received, and when.

    No counters (two Socket.IO clients would share theirs): this is for latencies compared
    event by event, every event published once and received by every client, so that the
    difference between two clients is theirs and not the publisher's or the machine's moment.
    """
    starters = {name: functools.partial(client, srv.url) for name, client in clients.items()}
    async with experiment(srv, starters, workload) as running:  # started in this order
        await running.until_connected()
        await publish_workload(srv, workload)
        await running.until_received(DELIVERY_GRACE_S)
    return {name: run.deliveries for name, run in running.runs.items()}


async def _timed_stats(srv: StatsPublisher) -> tuple[dict[str, Any], float]:
    """The counters, and when they were read (the middle of the request, monotonic s)."""
    loop = asyncio.get_running_loop()
    sent = loop.time()
    stats = await srv.astats()
    return stats, (sent + loop.time()) / 2


async def _stats_after(srv: StatsPublisher, delay_s: float) -> dict[str, Any]:
    await asyncio.sleep(delay_s)
    return await srv.astats()


async def _settled(srv: StatsPublisher, before: dict[str, Any], counters: list[str],
                   timeout_s: float = 2.0) -> dict[str, Any]:
    """Counters once the server has seen every client of the experiment close."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        now = await srv.astats()
        if all(now["transports"][c]["open"] <= before["transports"][c]["open"]
               for c in counters) or loop.time() > deadline:
            return now
        await asyncio.sleep(0.02)


# --- clients in processes of their own ------------------------------------------------------


async def run_apart(srv: StatsPublisher, clients: dict[str, str], workload: Workload = WORKLOAD,
                    options: dict[str, dict[str, Any]] | None = None,
                    timeout_s: float = 30.0) -> dict[str, Deliveries]:
    """Clients on one stream of events, each in a **process of its own**: what each received.

    ``clients`` maps a name to a transport (a key of :data:`CLIENTS`), e.g.
    ``{"sse": "sse", "ws": "ws"}``. Clients that share one event loop (:func:`run_together`)
    are served one after the other when an event reaches both sockets, so the second one notes
    a later time: a gap made by the loop, not by the transport. Here every client has its own
    interpreter and loop (``multiprocessing``, *spawn*: the same on Linux and macOS), so a gap
    between two clients is the server's and the transport's. Each child connects, says so, and
    records every event with ``time.time()`` (one clock for the whole machine); the driver
    publishes once every child is connected.
    """
    import multiprocessing

    options = options or {}
    after = (await srv.astats())["events"]["last_id"]
    context = multiprocessing.get_context("spawn")
    pipes, children = {}, []
    for name, transport in clients.items():
        parent_end, child_end = context.Pipe()
        child = context.Process(target=_apart_child, daemon=True, args=(
            transport, srv.url, after, workload, options.get(name, {}), child_end))
        child.start()
        pipes[name] = parent_end
        children.append(child)
    try:
        for name, pipe in pipes.items():
            _expect(await _receive(pipe, timeout_s), "connected", name)
        await publish_workload(srv, workload)
        results = {}
        for name, pipe in pipes.items():
            ids, sent_ts, received_ts = _expect(
                await _receive(pipe, workload.duration_s + DELIVERY_GRACE_S), "deliveries", name)
            results[name] = Deliveries(ids, sent_ts, received_ts)
        return results
    finally:
        for child in children:
            child.join(timeout=5)
            if child.is_alive():
                child.terminate()
                child.join(timeout=5)


async def _receive(pipe: Any, timeout_s: float) -> Any:
    """The next message from a child, or ``TimeoutError``."""
    if not await asyncio.to_thread(pipe.poll, timeout_s):
        raise TimeoutError(f"a client process sent nothing within {timeout_s} s")
    try:
        return pipe.recv()
    except EOFError:
        return ("error", "its process ended without a word (see its stderr)")


def _expect(message: tuple[str, Any], kind: str, name: str) -> Any:
    if message[0] != kind:
        raise RuntimeError(f"client {name!r} in its process: {message[1]}")
    return message[1]


def _apart_child(transport: str, url: str, after: int, workload: Workload,
                 options: dict[str, Any], pipe: Any) -> None:
    """One client in its own process (the target of :func:`run_apart`)."""
    try:
        asyncio.run(_apart_main(transport, url, after, workload, options, pipe))
    except BaseException as exc:  # the driver reads the error instead of waiting for nothing
        pipe.send(("error", f"{type(exc).__name__}: {exc}"))


async def _apart_main(transport: str, url: str, after: int, workload: Workload,
                      options: dict[str, Any], pipe: Any) -> None:
    run = ClientRun(after, workload.events)
    task = asyncio.create_task(CLIENTS[transport][0](url, run, **options))
    await until([task], [run.connected], CONNECT_TIMEOUT_S)
    pipe.send(("connected", None))
    await until([task], [run.received_all], workload.duration_s + DELIVERY_GRACE_S)
    run.release.set()
    await asyncio.wait_for(task, CONNECT_TIMEOUT_S)
    d = run.deliveries
    pipe.send(("deliveries", (d.ids, d.sent_ts, d.received_ts)))
