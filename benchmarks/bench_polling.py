"""Start-up time of labserver.start(), and long polling with 100 waiting clients.

    .venv/bin/python benchmarks/bench_polling.py

Prints tables: start-up (median and max of 5 starts), long-poll delivery latency p50/p99 over
100 clients × ROUNDS events, and bytes on the wire per delivered event (server socket counters)
for short polling every 100 ms and long polling. Loopback only; every loop bounded.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import aiohttp

import labserver
from labserver.measure import percentile

CLIENTS = 100
ROUNDS = 20  # events published, one every 100 ms: 2000 latency samples
INTERVAL_S = 0.1


def bench_startup(n: int = 5) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        srv = labserver.start()
        times.append(time.perf_counter() - started)
        srv.stop()
    return times


async def long_poll_clients(srv: labserver.Server) -> tuple[list[float], dict]:
    latencies: list[float] = []
    before = await srv.astats()
    done = asyncio.Event()
    connector = aiohttp.TCPConnector(limit=CLIENTS + 10)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            after = before["events"]["last_id"]
            while not done.is_set():
                async with session.get(f"{srv.url}/long-poll",
                                       params={"after": after, "timeout": 2}) as r:
                    page = await r.json()
                now = time.time()
                latencies.extend((now - e["ts"]) * 1000 for e in page["events"])
                after = page["last_id"]

        tasks = [asyncio.create_task(client()) for _ in range(CLIENTS)]
        while (await srv.astats())["transports"]["long_poll"]["open"] < CLIENTS:
            await asyncio.sleep(0.05)
        for n in range(ROUNDS):
            await srv.apublish({"n": n})
            await asyncio.sleep(INTERVAL_S)
        done.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
    return latencies, labserver.stats_diff(before, await srv.astats())


async def short_poll_client(srv: labserver.Server, events: int = 40) -> dict:
    before = await srv.astats()
    async with aiohttp.ClientSession() as session:

        async def client() -> int:
            after, got = before["events"]["last_id"], 0
            while got < events:
                async with session.get(f"{srv.url}/poll", params={"after": after}) as r:
                    page = await r.json()
                got += len(page["events"])
                after = page["last_id"]
                await asyncio.sleep(INTERVAL_S)
            return got

        task = asyncio.create_task(client())
        for n in range(events):
            await srv.apublish({"n": n, "text": "x" * 64})
            await asyncio.sleep(0.05)
        await asyncio.wait_for(task, 10)
    return labserver.stats_diff(before, await srv.astats())


async def main() -> None:
    startup = bench_startup()
    print("labserver.start() start-up (5 starts)")
    median_ms, max_ms = statistics.median(startup) * 1000, max(startup) * 1000
    print(f"  median {median_ms:7.1f} ms   max {max_ms:7.1f} ms")

    with labserver.start() as srv:
        latencies, stats = await long_poll_clients(srv)
        lp = stats["transports"]["long_poll"]
        print(f"\nlong polling, {CLIENTS} waiting clients, {ROUNDS} events "
              f"({len(latencies)} deliveries)")
        print(f"  p50 {percentile(latencies, 50):7.2f} ms   p99 {percentile(latencies, 99):7.2f} ms"
              f"   requests {lp['requests']}   lost {CLIENTS * ROUNDS - len(latencies)}")
        per_event = (lp["bytes_in"] + lp["bytes_out"]) / len(latencies)
        print(f"  bytes per delivered event {per_event:.0f}")

    with labserver.start() as srv:
        sp = (await short_poll_client(srv))["transports"]["poll"]
    print("\nshort polling every 100 ms, 40 events at 20/s, one client")
    print(f"  requests {sp['requests']}  empty {sp['empty']}  bytes per delivered event "
          f"{(sp['bytes_in'] + sp['bytes_out']) / sp['messages_out']:.0f}")


if __name__ == "__main__":
    asyncio.run(main())
