"""The least an aiohttp long poll can cost: aiohttp's floor, next to labserver and Node.

    .venv/bin/python benchmarks/aiohttp_floor_server.py     prints {"port": N} once it listens

The fourth stack of ``benchmarks/bench.py``, long polling only. Nothing a teaching server
needs — no counters at the socket, no middleware, no errors as JSON, no timeout per request,
no bound on anything — only what any aiohttp long poll must do: route ``GET /long-poll``,
build a ``Request``, hold it on one shared future until the next event, answer with a body
built once per cursor (the same JSON as labserver's), plus ``POST /publish`` and a
``GET /stats`` with the two figures the load generator reads. What a long poll costs here is
the framework's own cost per request: labserver cannot be cheaper than this on aiohttp.
It stops when its standard input closes.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import deque

from aiohttp import web

events: deque[tuple[int, str]] = deque(maxlen=1000)  # (id, JSON)
last_id = 0
changed: asyncio.Future[None] | None = None
held = 0
bodies: dict[int, bytes] = {}  # one body per cursor, until the next event


def body_after(after: int) -> bytes:
    body = bodies.get(after)
    if body is None:
        oldest = events[0][0] if events else last_id + 1
        gap = after > last_id or after < oldest - 1
        page = [text for id_, text in events if gap or id_ > after]
        body = bodies[after] = (f'{{"events":[{",".join(page)}],"last_id":{last_id},'
                                f'"gap":{"true" if gap else "false"}}}').encode()
    return body


async def long_poll(request: web.Request) -> web.Response:
    global changed, held
    after = int(request.query.get("after", "0"))
    if after == last_id:
        if changed is None:
            changed = asyncio.get_running_loop().create_future()
        held += 1
        try:
            await changed
        finally:
            held -= 1
    return web.Response(body=body_after(after), content_type="application/json")


async def publish(request: web.Request) -> web.Response:
    global last_id, changed
    data = (await request.json())["data"]
    last_id += 1
    events.append((last_id, json.dumps({"id": last_id, "data": data, "ts": time.time()},
                                       separators=(",", ":"))))
    bodies.clear()
    if changed is not None:
        changed.set_result(None)
        changed = None
    return web.json_response({"id": last_id})


async def stats(request: web.Request) -> web.Response:
    return web.json_response({"events": {"last_id": last_id},
                              "transports": {"long_poll": {"open": held}}})


async def main() -> None:
    app = web.Application()
    app.router.add_get("/long-poll", long_poll)
    app.router.add_post("/publish", publish)
    app.router.add_get("/stats", stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(json.dumps({"port": port}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.read()  # end of file: the parent went away
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
