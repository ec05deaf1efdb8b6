"""Scale-out: the latency the Redis hop adds, and fan-out on two nodes against one.

    .venv/bin/python benchmarks/bench_cluster.py

Needs redis-server on the PATH. For each setup, CLIENTS WebSocket clients (spread evenly over
the nodes) receive ROUNDS events published at RATE/s on the first node; prints delivery latency
p50/p99/max and events lost. Loopback only; every loop bounded.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time

import aiohttp

import labserver
from labserver.cluster import RedisProcess
from labserver.measure import percentile

CLIENTS = 100
ROUNDS = 50
RATE = 20


async def fan_out(publisher: labserver.Server, nodes: list[labserver.Server]) -> tuple[list, int]:
    start = (await publisher.astats())["events"]["last_id"]
    until = start + ROUNDS
    latencies: list[float] = []
    lost = 0
    connector = aiohttp.TCPConnector(limit=CLIENTS + 10)
    async with aiohttp.ClientSession(connector=connector) as session:
        sockets = [await session.ws_connect(f"{nodes[i % len(nodes)].url}/ws?after={start}")
                   for i in range(CLIENTS)]

        async def read(ws: aiohttp.ClientWebSocketResponse) -> int:
            got = 0
            async for msg in ws:
                event = json.loads(msg.data)
                latencies.append((time.time() - event["ts"]) * 1000)
                got += 1
                if event["id"] >= until:
                    break
            return got

        readers = [asyncio.create_task(read(ws)) for ws in sockets]
        for n in range(ROUNDS):
            await publisher.apublish({"n": n})
            await asyncio.sleep(1 / RATE)
        counts = await asyncio.wait_for(asyncio.gather(*readers), 30)
        lost = sum(ROUNDS - c for c in counts)
        for ws in sockets:
            await ws.close()
    return latencies, lost


def row(name: str, latencies: list[float], lost: int) -> str:
    return (f"| {name} | {len(latencies)} | {percentile(latencies, 50):.2f} | "
            f"{percentile(latencies, 99):.2f} | {max(latencies):.2f} | {lost} |")


async def main() -> None:
    print(f"{CLIENTS} WebSocket clients, {ROUNDS} events at {RATE}/s published on node 1\n")
    print("| setup | deliveries | p50 ms | p99 ms | max ms | lost |")
    print("| --- | --- | --- | --- | --- | --- |")
    with labserver.start() as single:
        print(row("one node, no Redis", *await fan_out(single, [single])))
    with tempfile.TemporaryDirectory() as directory, RedisProcess(directory).start() as redis:
        with labserver.start(redis_url=redis.url) as a, labserver.start(redis_url=redis.url) as b:
            print(row("one node on Redis", *await fan_out(a, [a])))
            print(row("two nodes on Redis, clients split", *await fan_out(a, [a, b])))


if __name__ == "__main__":
    asyncio.run(main())
