"""The ``websockets`` library's own fan-out: ``broadcast()`` of one serialised event.

    .venv/bin/python benchmarks/ws_broadcast_server.py     prints {"port": N} once it listens

The third stack of ``benchmarks/bench.py``, WebSocket only: ``GET /ws`` holds a subscriber
(every event as one JSON text message, as labserver's and Node's ``/ws``);
``GET /publish`` is a WebSocket on which the load generator sends ``{"data": ...}`` texts,
each turned into ``{"id", "data", "ts"}``, serialised once and handed to
``websockets.broadcast()`` (which frames it once per client and writes without waiting). A
text ``"?"`` on ``/publish`` is answered with the number of subscribers. No compression
(labserver and Node send none either). It stops when its standard input closes.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from websockets.asyncio.server import ServerConnection, broadcast, serve

subscribers: set[ServerConnection] = set()
last_id = 0


async def handler(connection: ServerConnection) -> None:
    global last_id
    path = connection.request.path if connection.request else ""
    if path.startswith("/ws"):
        subscribers.add(connection)
        try:
            await connection.wait_closed()
        finally:
            subscribers.discard(connection)
    elif path.startswith("/publish"):
        async for message in connection:
            if message == "?":
                await connection.send(str(len(subscribers)))
                continue
            last_id += 1
            data = json.loads(message)["data"]
            text = json.dumps({"id": last_id, "data": data, "ts": time.time()},
                              separators=(",", ":"))
            broadcast(subscribers, text)


async def main() -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def watch_stdin() -> None:
        await reader.read()  # end of file: the parent went away
        stop.set_result(None)

    watcher = asyncio.create_task(watch_stdin())
    async with serve(handler, "127.0.0.1", 0, compression=None, max_queue=16) as server:
        port = server.sockets[0].getsockname()[1]
        print(json.dumps({"port": port}), flush=True)
        await stop
    watcher.cancel()


if __name__ == "__main__":
    asyncio.run(main())
