"""WebSocket fan-out: delivery latency with N open sockets, echo round trips, bytes per event.

    .venv/bin/python benchmarks/bench_ws_fanout.py                 # 100 sockets
    .venv/bin/python benchmarks/bench_ws_fanout.py --clients 100 1000

Prints three tables.

1. For each N: N ``websockets`` clients (compression off) hold ``/ws`` open while the shared
   WORKLOAD (40 events, one every 50 ms, 64-byte payload) is published: delivery latency p50,
   p99 and max over the N × 40 deliveries (``time.time() - ts``: server and clients on one
   machine; all N clients share this process's one event loop, so at N = 1000 the tail is
   mostly the clients' own queueing), events lost or duplicated, and the server's RSS per idle
   connection (RSS of the server process after opening the N sockets minus before, over N).
2. Echo round trips on one connection (``{"echo": n}`` and back): p50 and p99 of 1000.
3. One client each on the same workload over short polling (100 ms), long polling, SSE and
   WebSocket without and with permessage-deflate: bytes on the wire per event, both directions,
   counted at the server's socket (headers, handshakes and frame headers included).

Loopback only; every wait bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import aiohttp
import websockets

import labserver
from labserver.measure import WORKLOAD, Deliveries, percentile, publish_workload

TIMEOUT_S = 60  # every client must have its 40 events within this
ROUND_TRIPS = 1000
CONNECT_BATCH = 100  # sockets opened at once


def ws_url(srv: labserver.Server, query: str = "") -> str:
    return srv.url.replace("http://", "ws://", 1) + "/ws" + query


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def wait_open(srv: labserver.Server, transport: str, n: int) -> None:
    async with asyncio.timeout(TIMEOUT_S):
        while (await srv.astats())["transports"][transport]["open"] < n:
            await asyncio.sleep(0.05)


async def fanout(clients: int) -> dict[str, Any]:
    with labserver.start() as srv:
        await asyncio.sleep(0.2)
        rss_before = rss_bytes(srv.pid)
        sockets = []
        for start in range(0, clients, CONNECT_BATCH):
            batch = min(CONNECT_BATCH, clients - start)
            sockets += await asyncio.gather(*(
                websockets.connect(ws_url(srv), proxy=None, compression=None, open_timeout=30)
                for _ in range(batch)))
        await wait_open(srv, "ws", clients)
        await asyncio.sleep(0.5)
        rss_per_socket = (rss_bytes(srv.pid) - rss_before) / clients

        deliveries = [Deliveries() for _ in range(clients)]

        async def receive(ws: Any, d: Deliveries) -> None:
            while len(d) < WORKLOAD.events:
                d.record(json.loads(await ws.recv()))

        tasks = [asyncio.create_task(receive(ws, d)) for ws, d in
                 zip(sockets, deliveries, strict=True)]
        ids = await publish_workload(srv)
        await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT_S)
        await asyncio.gather(*(ws.close() for ws in sockets))
    latencies = [ms for d in deliveries for ms in d.latencies_ms]
    return {
        "clients": clients,
        "deliveries": len(latencies),
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "max": max(latencies),
        "wrong": sum(d.ids != ids for d in deliveries),
        "rss_kib": rss_per_socket / 1024,
    }


async def echo_rtt() -> list[float]:
    with labserver.start() as srv:
        async with websockets.connect(ws_url(srv), proxy=None, compression=None) as ws:
            rtt = []
            for n in range(ROUND_TRIPS):
                started = time.perf_counter()
                await ws.send(json.dumps({"echo": n}))
                await asyncio.wait_for(ws.recv(), 5)
                rtt.append((time.perf_counter() - started) * 1000)
    return rtt


async def bytes_per_event() -> dict[str, float]:
    """One client per transport on the workload; WebSocket with deflate in a second run."""

    async def short_poll(srv: labserver.Server, after: int, d: Deliveries) -> None:
        async with aiohttp.ClientSession() as session:
            while len(d) < WORKLOAD.events:
                async with session.get(srv.url + "/poll", params={"after": after}) as r:
                    page = await r.json()
                for event in page["events"]:
                    d.record(event)
                after = page["last_id"]
                await asyncio.sleep(0.1)

    async def long_poll(srv: labserver.Server, after: int, d: Deliveries) -> None:
        async with aiohttp.ClientSession() as session:
            while len(d) < WORKLOAD.events:
                async with session.get(srv.url + "/long-poll",
                                       params={"after": after, "timeout": 5}) as r:
                    page = await r.json()
                for event in page["events"]:
                    d.record(event)
                after = page["last_id"]

    async def sse(srv: labserver.Server, after: int, d: Deliveries) -> None:
        async with aiohttp.ClientSession() as session, session.get(
                srv.url + "/sse", headers={"Last-Event-ID": str(after)}) as r:
            async for line in r.content:
                if line.startswith(b"data: "):
                    d.record(json.loads(line[6:]))
                    if len(d) == WORKLOAD.events:
                        return

    def ws(compression: str | None) -> Any:
        async def client(srv: labserver.Server, after: int, d: Deliveries) -> None:
            async with websockets.connect(ws_url(srv, f"?after={after}"), proxy=None,
                                          compression=compression) as sock:
                while len(d) < WORKLOAD.events:
                    d.record(json.loads(await sock.recv()))
        return client

    runs = [
        {"short polling 100 ms": ("poll", short_poll), "long polling": ("long_poll", long_poll),
         "SSE": ("sse", sse), "WebSocket": ("ws", ws(None))},
        {"WebSocket + deflate": ("ws", ws("deflate"))},
    ]
    table = {}
    with labserver.start() as srv:
        for clients in runs:
            before = await srv.astats()
            after = before["events"]["last_id"]
            deliveries = {name: Deliveries() for name in clients}
            tasks = [asyncio.create_task(fn(srv, after, deliveries[name]))
                     for name, (_, fn) in clients.items()]
            await publish_workload(srv)
            await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT_S)
            used = labserver.stats_diff(before, await srv.astats())["transports"]
            for name, (transport, _) in clients.items():
                c = used[transport]
                table[name] = (c["bytes_in"] + c["bytes_out"]) / WORKLOAD.events
    return table


async def main(clients: list[int]) -> None:
    print(f"WebSocket fan-out: the workload ({WORKLOAD.events} events, one every "
          f"{WORKLOAD.interval_s * 1000:.0f} ms, {WORKLOAD.payload_bytes}-byte payload), "
          "compression off")
    print(f"{'sockets':>8} {'deliveries':>11} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'wrong':>6} {'RSS/idle socket':>16}")
    for n in clients:
        r = await fanout(n)
        print(f"{r['clients']:>8} {r['deliveries']:>11} {r['p50']:>8.2f} {r['p99']:>8.2f} "
              f"{r['max']:>8.2f} {r['wrong']:>6} {r['rss_kib']:>12.1f} KiB")

    rtt = await echo_rtt()
    print(f"\necho round trip on one connection ({ROUND_TRIPS} round trips)")
    print(f"  p50 {percentile(rtt, 50):.3f} ms   p99 {percentile(rtt, 99):.3f} ms")

    print("\nbytes on the wire per event, one client each, both directions")
    for name, per_event in (await bytes_per_event()).items():
        print(f"  {name:22} {per_event:7.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[100],
                        help="numbers of open sockets to measure (default: 100)")
    arguments = parser.parse_args()
    if any(not 1 <= n <= 2000 for n in arguments.clients):
        parser.error("--clients must be between 1 and 2000")
    asyncio.run(main(arguments.clients))
