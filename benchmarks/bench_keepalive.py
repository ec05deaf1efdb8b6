"""What a kept-alive long poll costs the server: the light path (labserver/_fast/keepalive.py)
or aiohttp.

    .venv/bin/python benchmarks/bench_keepalive.py [--requests 20000] [--clients 50]

Each configuration is a server in a child process (``serve()``, as ``labserver.start()`` runs
it, pinned to core 0 where there are two); ``--clients`` kept-alive connections each send long
polls one after another — ``GET /long-poll?after=0&timeout=0``, answered at once with the
page of one event — until ``--requests`` in all were answered. The server's CPU time over the
run (``/proc/PID/task/*/schedstat``, all its threads, in nanoseconds), divided by the requests,
is the cost of one request: reading it, parsing it, answering it. Configurations:

* ``light path``: labserver as it is: after each connection's first long poll, its requests are
  parsed by aiohttp's own parser (llhttp) and answered by ``LongPollConnection``; with the
  same head every time (the parse is then kept: ``keepalive.long_poll_of``), or a new one each
  time (a cache-busting ``_=`` parameter: one parse per request);
* ``aiohttp``: the same app with the long-poll route left to aiohttp (no takeover): what every
  long poll would cost without the light path.

Prints a markdown table: CPU µs per request (median of ``--rounds``), and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time

SERVER = r"""
import asyncio, sys
from labserver import polling
from labserver.app import create_app, serve
if sys.argv[1] == "aiohttp":
    polling.taking_over = lambda handler: handler
app = create_app()
async def main():
    await serve(app, asyncio.Event(), lambda port: print(port, flush=True))
asyncio.run(main())
"""
REQUEST = b"GET /long-poll?after=0&timeout=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
PUBLISH = (b"POST /publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
           b"Content-Length: 12\r\n\r\n{\"data\": 1}\n")


def cpu_s(pid: int) -> float:
    """The process's CPU time, all its threads, in ns resolution (``schedstat``)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/schedstat") as stat:
            total += int(stat.read().split()[0])
    return total / 1e9


async def read_response(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    return head + await reader.readexactly(length)


async def client(port: int, requests: int, distinct: bool = False) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for n in range(requests):
        # distinct: a cache-busting parameter (as jQuery's ``_=``) makes every head new
        writer.write(REQUEST.replace(b"timeout=0", b"timeout=0&_=%d-%d" % (id(writer), n))
                     if distinct else REQUEST)
        await asyncio.wait_for(read_response(reader), 10)
    writer.close()


async def run(config: str, requests: int, clients: int, distinct: bool) -> float:
    """CPU µs per long poll for one configuration."""
    pin = ["taskset", "-c", "0"] if os.cpu_count() and os.cpu_count() > 1 else []
    server = subprocess.Popen([*pin, sys.executable, "-c", SERVER, config],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(PUBLISH)  # one event: every long poll is answered at once
        await read_response(reader)
        writer.close()
        await asyncio.gather(*(client(port, 1) for _ in range(clients)))  # connections made
        before = cpu_s(server.pid)
        started = time.perf_counter()
        await asyncio.gather(*(client(port, requests // clients, distinct)
                               for _ in range(clients)))
        elapsed = time.perf_counter() - started
        used = cpu_s(server.pid) - before
        print(f"  {config} (new heads: {distinct}): {requests} requests in {elapsed:.1f} s, "
              f"server CPU {used:.2f} s", file=sys.stderr)
        return used / requests * 1e6
    finally:
        server.terminate()
        server.wait(5)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[float]] = {"light path, same heads": [],
                                       "light path, every head new": [],
                                       "aiohttp, every head new": []}
    for _ in range(args.rounds):
        for config in results:
            results[config].append(await run(config.split(",")[0].split()[0], args.requests,
                                             args.clients, "new" in config))
    light = statistics.median(results["light path, every head new"])
    plain = statistics.median(results["aiohttp, every head new"])
    print(f"\n{args.requests} kept-alive long polls answered at once, {args.clients} connections, "
          f"median of {args.rounds} rounds\n")
    print("| server | CPU µs per long poll | rounds |")
    print("| --- | ---: | --- |")
    for config, values in results.items():
        print(f"| {config} | {statistics.median(values):.1f} | "
              + ", ".join(f"{v:.1f}" for v in values) + " |")
    print(f"\nwith every head new, the light path costs {light / plain:.2f}x what aiohttp "
          "costs per long poll")


if __name__ == "__main__":
    asyncio.run(main())
