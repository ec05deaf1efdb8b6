"""Socket.IO fan-out: delivery latency with 100 clients, and bytes per event next to /ws.

    .venv/bin/python benchmarks/bench_socketio_fanout.py

Prints two tables. First, 100 python-socketio ``AsyncClient``s are connected to namespace ``/``
while the shared WORKLOAD (40 events, one every 50 ms, 64-byte payload) is published — once with
the default transports (a polling handshake, then the upgrade to WebSocket) and once against a
server started with ``socketio_transports=["polling"]`` (the fallback): latency p50, p99 and max
over the 4000 deliveries (``time.time() - ts``, server and clients on one machine; the 100
clients share one Python event loop, so the tail includes their own queueing), clients that got
exactly every event once in order, and the HTTP requests the server counted. Second, one client
on the same workload over plain ``/ws`` (``websockets``, compression off), Socket.IO over
WebSocket and Socket.IO over polling: requests and bytes on the wire per event from the server's
socket counters (both directions, handshakes and pings included). Loopback only; every wait
bounded.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import socketio
import websockets

import labserver
from labserver.browser import chromium_sync, find_chromium
from labserver.measure import WORKLOAD, Deliveries, percentile, publish_workload

CLIENTS = 100
TIMEOUT_S = 30  # every client must have its 40 events within this


async def until(done: Any, what: str, timeout_s: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.02)


async def socketio_clients(srv: labserver.Server, n: int,
                           transports: list[str] | None) -> tuple[list[Any], list[Deliveries]]:
    clients, deliveries = [], []
    for _ in range(n):
        client = socketio.AsyncClient(reconnection=False)
        d = Deliveries()
        client.on("news", d.record)
        clients.append(client)
        deliveries.append(d)
    for i in range(0, n, 20):  # connect in batches: a burst of 100 handshakes is not the point
        await asyncio.gather(*(c.connect(srv.url, transports=transports, wait_timeout=10)
                               for c in clients[i:i + 20]))
    return clients, deliveries


async def fanout(transports: list[str] | None, **options: Any) -> dict[str, Any]:
    with labserver.start(**options) as srv:
        clients, deliveries = await socketio_clients(srv, CLIENTS, transports)
        try:
            await asyncio.sleep(0.5)  # the upgrades settle
            on = {c.transport() for c in clients}
            before = await srv.astats()
            ids = await publish_workload(srv)
            await until(lambda: all(len(d) >= len(ids) for d in deliveries), "deliveries")
            used = labserver.stats_diff(before, await srv.astats())["transports"]["socketio"]
        finally:
            await asyncio.gather(*(c.disconnect() for c in clients), return_exceptions=True)
    latencies = [ms for d in deliveries for ms in d.latencies_ms]
    return {"on": "/".join(sorted(on)), "latencies": latencies,
            "exact": sum(d.ids == ids for d in deliveries), "requests": used["requests"]}


async def one_client(kind: str) -> dict[str, int]:
    options = {"socketio_transports": ["polling"]} if kind == "socketio-polling" else {}
    with labserver.start(**options) as srv:
        before = await srv.astats()
        start = before["events"]["last_id"]
        deliveries = Deliveries()
        if kind == "ws":
            url = srv.url.replace("http://", "ws://") + f"/ws?after={start}"
            async with websockets.connect(url, proxy=None, compression=None) as ws:
                async def read() -> None:
                    while len(deliveries) < WORKLOAD.events:
                        deliveries.record(json.loads(await ws.recv()))
                reader = asyncio.create_task(read())
                await publish_workload(srv)
                await asyncio.wait_for(reader, TIMEOUT_S)
        else:
            client = socketio.AsyncClient(reconnection=False)
            client.on("news", deliveries.record)
            await client.connect(srv.url, wait_timeout=10,
                                 transports=["websocket"] if kind == "socketio-websocket" else None)
            await publish_workload(srv)
            await until(lambda: len(deliveries) == WORKLOAD.events, "deliveries")
            await client.disconnect()
        await asyncio.sleep(0.1)  # the closing handshake reaches the counters
        transport = "ws" if kind == "ws" else "socketio"
        return labserver.stats_diff(before, await srv.astats())["transports"][transport]


async def handshake(transports: list[str] | None) -> dict[str, int]:
    """Connect to namespace ``/``, wait for the upgrade, leave: what the server counted."""
    with labserver.start() as srv:
        before = await srv.astats()
        client = socketio.AsyncClient(reconnection=False)
        await client.connect(srv.url, transports=transports, wait_timeout=10)
        await client.disconnect()
        await asyncio.sleep(0.1)
        return labserver.stats_diff(before, await srv.astats())["transports"]["socketio"]


def browser_handshake(query: str) -> dict[str, int] | None:
    """The same with the official client in Chromium (socketio.html), if Chromium is here."""
    if find_chromium() is None:
        return None
    with labserver.start() as srv, chromium_sync() as browser:
        page = browser.new_page()
        before = srv.stats()
        page.goto(srv.url + "/socketio.html" + query)
        want = "polling" if "polling" in query else "websocket"
        page.wait_for_function(f"document.getElementById('transport').textContent === "
                               f"'{want}' && document.getElementById('state').textContent "
                               f"=== 'connected'", timeout=10_000)
        page.wait_for_timeout(500)  # whatever follows the upgrade
        page.close()  # the tab goes: its connection closes
        time.sleep(0.2)
        return srv.stats_since(before)["transports"]["socketio"]


async def main() -> None:
    print("handshake: connect to namespace '/' and leave (no events)")
    print(f"  {'client':<44} {'requests':>8} {'bytes in':>9} {'bytes out':>10}")
    rows = [("python-socketio, default (polling, upgrade)", await handshake(None)),
            ("python-socketio, transports=['websocket']", await handshake(["websocket"])),
            ("Chromium, official client, default", await asyncio.to_thread(browser_handshake, "")),
            ("Chromium, official client, ['websocket']",
             await asyncio.to_thread(browser_handshake, "?transports=websocket"))]
    for name, c in rows:
        if c is None:
            print(f"  {name:<44} (no Chromium on this machine)")
        else:
            print(f"  {name:<44} {c['requests']:>8} {c['bytes_in']:>9} {c['bytes_out']:>10}")
    print()

    print(f"Socket.IO fan-out: {CLIENTS} clients, {WORKLOAD.events} events at "
          f"{1 / WORKLOAD.interval_s:.0f}/s ({CLIENTS * WORKLOAD.events} deliveries)")
    print(f"  {'client transports':<30} {'on':<10} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'exact clients':>14} {'requests':>9}")
    for name, transports, options in [
        ("default (polling, upgrade)", None, {}),
        ("default, server polling-only", None, {"socketio_transports": ["polling"]}),
    ]:
        r = await fanout(transports, **options)
        lat = r["latencies"]
        print(f"  {name:<30} {r['on']:<10} {percentile(lat, 50):8.2f} {percentile(lat, 99):8.2f} "
              f"{max(lat):8.2f} {r['exact']:>10}/{CLIENTS} {r['requests']:>9}")

    print(f"\none client, the same workload ({WORKLOAD.events} events, "
          f"{WORKLOAD.payload_bytes}-byte payload), compression off")
    print(f"  {'transport':<26} {'requests':>8} {'bytes/event':>12} {'out/event':>10}")
    for name, kind in [("/ws (websockets)", "ws"),
                       ("Socket.IO over WebSocket", "socketio-websocket"),
                       ("Socket.IO over polling", "socketio-polling")]:
        c = await one_client(kind)
        print(f"  {name:<26} {c['requests']:>8} "
              f"{(c['bytes_in'] + c['bytes_out']) / WORKLOAD.events:>12.0f} "
              f"{c['bytes_out'] / WORKLOAD.events:>10.0f}")


if __name__ == "__main__":
    asyncio.run(main())
