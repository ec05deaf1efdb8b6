"""SSE fan-out: delivery latency with 100 open streams, and bytes per event next to polling's.

    .venv/bin/python benchmarks/bench_sse_fanout.py

Prints two tables. First, 100 ``EventSource``-like aiohttp clients hold ``GET /sse`` open while
the shared WORKLOAD (40 events, one every 50 ms, 64-byte payload) is published: latency p50,
p99 and max over the 4000 deliveries (``time.time() - ts``, server and clients on one machine;
the 100 clients share one Python event loop, so the tail includes their own queueing), events
lost or duplicated. Second, one client on the same workload over short polling (every 100 ms),
long polling and SSE: requests, bytes on the wire per delivered event from the server's socket
counters (both directions, headers and chunk framing included; SSE's one connection set-up is
spread over the 40 events). Loopback only; every wait bounded.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

import labserver
from labserver.measure import WORKLOAD, Deliveries, percentile, publish_workload

CLIENTS = 100
TIMEOUT_S = 20  # every client must have its 40 events within this


async def sse_client(session: aiohttp.ClientSession, url: str, deliveries: Deliveries,
                     want: int) -> None:
    """Read ``/sse`` until ``want`` events arrived; the event JSON is on its ``data:`` line."""
    async with session.get(url + "/sse", headers={"Accept": "text/event-stream"}) as response:
        buffer = b""
        while len(deliveries) < want:
            chunk = await response.content.readany()
            if not chunk:
                return
            received = time.time()
            buffer += chunk
            *blocks, buffer = buffer.split(b"\n\n")
            for block in blocks:
                for line in block.split(b"\n"):
                    if line.startswith(b"data: "):
                        deliveries.record(json.loads(line[6:]), received)


async def fanout(srv: labserver.Server) -> tuple[list[Deliveries], list[int], dict]:
    before = await srv.astats()
    connector = aiohttp.TCPConnector(limit=CLIENTS + 10)  # the default 100 would queue some
    async with aiohttp.ClientSession(connector=connector) as session:
        all_deliveries = [Deliveries() for _ in range(CLIENTS)]
        tasks = [asyncio.create_task(sse_client(session, srv.url, d, WORKLOAD.events))
                 for d in all_deliveries]
        while (await srv.astats())["transports"]["sse"]["open"] < CLIENTS:
            await asyncio.sleep(0.05)
        ids = await publish_workload(srv)
        await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT_S)
    return all_deliveries, ids, labserver.stats_diff(before, await srv.astats())


async def one_client(srv: labserver.Server, transport: str) -> dict:
    """One client over ``transport`` on the WORKLOAD; the server's counters of that run."""
    before = await srv.astats()
    start_id = before["events"]["last_id"]
    want = WORKLOAD.events
    async with aiohttp.ClientSession() as session:

        async def poll(path: str, **params: float) -> None:
            after, got = start_id, 0
            while got < want:
                async with session.get(srv.url + path,
                                       params={"after": after, **params}) as response:
                    page = await response.json()
                got += len(page["events"])
                after = page["last_id"]
                if path == "/poll":
                    await asyncio.sleep(0.1)

        if transport == "poll":
            client = poll("/poll")
        elif transport == "long_poll":
            client = poll("/long-poll", timeout=5)
        else:
            client = sse_client(session, srv.url, Deliveries(), want)
        task = asyncio.create_task(client)
        if transport == "sse":
            while (await srv.astats())["transports"]["sse"]["open"] < 1:
                await asyncio.sleep(0.02)
        await publish_workload(srv)
        await asyncio.wait_for(task, TIMEOUT_S)
    return labserver.stats_diff(before, await srv.astats())["transports"][transport]


async def main() -> None:
    with labserver.start() as srv:
        all_deliveries, ids, stats = await fanout(srv)
    latencies = [ms for d in all_deliveries for ms in d.latencies_ms]
    exact = sum(d.ids == ids for d in all_deliveries)
    sse = stats["transports"]["sse"]
    print(f"SSE fan-out: {CLIENTS} open streams, {WORKLOAD.events} events at "
          f"{1 / WORKLOAD.interval_s:.0f}/s ({len(latencies)} deliveries)")
    print(f"  {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'exact clients':>14} {'requests':>9}")
    print(f"  {percentile(latencies, 50):8.2f} {percentile(latencies, 99):8.2f} "
          f"{max(latencies):8.2f} {exact:>10}/{CLIENTS} {sse['requests']:>9}")

    print(f"\none client, the same workload ({WORKLOAD.events} events, "
          f"{WORKLOAD.payload_bytes}-byte payload)")
    print(f"  {'transport':<22} {'requests':>8} {'bytes/event':>12} {'out/event':>10}")
    for name, transport in [("short polling 100 ms", "poll"), ("long polling", "long_poll"),
                            ("SSE", "sse")]:
        with labserver.start() as srv:
            c = await one_client(srv, transport)
        events = c["messages_out"]
        print(f"  {name:<22} {c['requests']:>8} "
              f"{(c['bytes_in'] + c['bytes_out']) / events:>12.0f} "
              f"{c['bytes_out'] / events:>10.0f}")


if __name__ == "__main__":
    asyncio.run(main())
