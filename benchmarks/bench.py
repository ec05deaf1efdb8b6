"""labserver side by side with the textbook's Node.js stack: fan-out latency, CPU, memory, bytes.

    make bench                               the full run (3 rounds, under 6 minutes)
    .venv/bin/python benchmarks/bench.py --quick           one round, N = 1 and 100, < 1 min
    .venv/bin/python benchmarks/bench.py --readme          also rewrite benchmarks/README.md's table

Four stacks, each a server in its own process, pinned to one core while this load generator
runs on the other:

* ``labserver`` — ``labserver.start()``, every transport on one port;
* ``node`` — ``benchmarks/node/server.js``: ``http`` + ``ws`` + ``socket.io`` (the book's stack),
  the same routes and JSON (``npm ci`` there first; ``make bench`` does it);
* ``websockets`` — ``benchmarks/ws_broadcast_server.py``: the ``websockets`` library's
  ``broadcast()``, WebSocket only (events published over a WebSocket, not ``POST /publish``);
* ``aiohttp`` — ``benchmarks/aiohttp_floor_server.py``: the least a long poll can cost on
  aiohttp (one route, no middleware, no counters), long polling only — the framework's floor.

One load generator for all of them: Python on raw asyncio sockets (``asyncio.Protocol``, no
client library), so every stack is measured by the same code. Its clients parse only what they
must (HTTP head, WebSocket frame headers, SSE block ends, Engine.IO packet types) and find each
event's sequence number with one regular expression. It prints its own CPU use: where it nears
100 % of its core, latency measures the generator as much as the server.

What is measured, per transport (long polling, SSE, WebSocket, Socket.IO over WebSocket), per
N clients and R events/s:

* **latency** p50/p99/max (p50 and p99 as the lessons compute them,
  ``labserver.measure.percentile``): from the moment the publisher writes the publish request to the
  moment the event's bytes reach the client's socket — the kernel's receive timestamp
  (``SO_TIMESTAMPNS``, :class:`StampedTransport`), on the same clock as the publish time, in
  one process. Taken at the read instead, a thousand clients' latency would be mostly this
  generator's own queue of sockets to read (it was, before: every stack came out equal);
* **lost**: events a client had not received 3 s after the last publish;
* **server CPU µs per delivery**: the server process's CPU time over the run (all its threads,
  ``/proc/PID/task/*/schedstat``, nanoseconds) divided by the deliveries — the publish requests'
  cost included, spread over the N deliveries of each event;
* **bytes per delivery** at the client socket, both directions (requests, frame and chunk
  headers included; handshakes not: connections are opened before the run);
* **RSS per idle connection** at N = 1000 (``VmRSS`` before and after connecting them);
* **saturation**: 100 WebSocket clients, a burst of events published as fast as the server takes
  them (8 publishes in flight): deliveries per second and CPU µs per delivery.

Rounds repeat the whole matrix (stacks in a rotated order); the table quotes medians over rounds,
and ratios to Node computed within each round, then their median. N x R is capped at 10 000
deliveries/s (N = 1000 runs at 10 events/s only): more than that is beyond what one Python core
can generate and parse while the other serves. Loopback only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import re
import resource
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import time
from asyncio import selector_events
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labserver.measure import percentile

HERE = Path(__file__).resolve().parent
NODE_DIR = HERE / "node"
README = HERE / "README.md"

SEQ = re.compile(rb'"s":(\d+)')  # the publisher's sequence number inside each event's data
LAST_ID = re.compile(rb'"last_id":(\d+)')
PAD = "x" * 48  # data {"s":N,"p":"xxx…"} is about 64 bytes, like labserver.measure.WORKLOAD
CONNECT_CONCURRENCY = 50
DRAIN_S = 3.0  # after the last publish, clients get this long before missing events count lost
READY_TIMEOUT_S = 30.0
MAX_DELIVERIES_PER_S = 10_000  # the cap on N x R that two cores can drive (see above)
SATURATION_CLIENTS = 100
BURST_IN_FLIGHT = 8

# --- the server processes -----------------------------------------------------------------


def cpus() -> tuple[int | None, int | None]:
    """(server core, generator core), or (None, None) when fewer than two cores are ours."""
    mine = sorted(os.sched_getaffinity(0))
    return (mine[-1], mine[0]) if len(mine) >= 2 else (None, None)


def pin(pid: int, core: int | None) -> None:
    """Pin every thread of ``pid`` to ``core`` (threads it starts later inherit it)."""
    if core is None:
        return
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):
            os.sched_setaffinity(int(tid), {core})


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid``, in nanoseconds (scheduler statistics)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
    return total


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Stack:
    """A running server of one stack: ``host``, ``port``, ``pid``, ``stop()``."""

    name = ""
    transports: tuple[str, ...] = ("long_poll", "sse", "ws", "socketio")
    publish_over = "http"  # or "ws": POST /publish, or texts on a /publish WebSocket
    host = "127.0.0.1"
    port = 0
    pid = 0

    def stop(self) -> None:
        raise NotImplementedError


class LabserverStack(Stack):
    name = "labserver"

    def __init__(self, core: int | None) -> None:
        import labserver

        self.srv = labserver.start()
        self.port, self.pid = self.srv.port, self.srv.pid
        pin(self.pid, core)

    def stop(self) -> None:
        self.srv.stop()


class ChildStack(Stack):
    """A server that prints ``{"port": N}`` and stops when its standard input closes."""

    def __init__(self, argv: list[str], cwd: Path, core: int | None) -> None:
        self.proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.kill()
            raise RuntimeError(f"{argv[0]} did not start: {' '.join(argv)}")
        self.port = json.loads(line)["port"]
        self.pid = self.proc.pid
        pin(self.pid, core)

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(3)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class NodeStack(ChildStack):
    name = "node"

    def __init__(self, core: int | None) -> None:
        super().__init__(["node", "server.js"], NODE_DIR, core)


class WebsocketsStack(ChildStack):
    name = "websockets"
    transports = ("ws",)
    publish_over = "ws"

    def __init__(self, core: int | None) -> None:
        super().__init__([sys.executable, str(HERE / "ws_broadcast_server.py")], HERE, core)


class AiohttpFloorStack(ChildStack):
    name = "aiohttp"
    transports = ("long_poll",)

    def __init__(self, core: int | None) -> None:
        super().__init__([sys.executable, str(HERE / "aiohttp_floor_server.py")], HERE, core)


STACKS: dict[str, Callable[[int | None], Stack]] = {
    "labserver": LabserverStack, "node": NodeStack, "websockets": WebsocketsStack,
    "aiohttp": AiohttpFloorStack,
}


def node_ready() -> str | None:
    """Why the Node stack cannot run, or None when it can."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not (NODE_DIR / "node_modules" / "ws").is_dir() or not (
            NODE_DIR / "node_modules" / "socket.io").is_dir():
        return "benchmarks/node has no node_modules: run `npm ci` there (make bench does)"
    return None


# --- the clients: raw asyncio protocols ---------------------------------------------------


#: Linux's SO_TIMESTAMPNS (``SO_TIMESTAMPNS_OLD``: a ``struct timespec`` of two longs).
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


class StampedTransport(selector_events._SelectorSocketTransport):  # type: ignore[misc,name-defined]
    """asyncio's socket transport, reading with ``recvmsg`` to keep the kernel's receive time.

    With ``SO_TIMESTAMPNS`` on, the kernel stamps each packet as it reaches the client's socket
    (``CLOCK_REALTIME``); the client takes that as the event's arrival, not the moment this
    process gets round to reading it. With a thousand sockets the generator reads for several
    milliseconds after the server has written the last one: stamped at the read, latency
    would measure the generator's queue as much as the server. Linux only; elsewhere (no
    stamp) the read time is used.
    """

    def _read_ready__data_received(self) -> None:
        if self._conn_lost:
            return
        try:
            data, ancillary, _, _ = self._sock.recvmsg(self.max_size, 64)
        except (BlockingIOError, InterruptedError):
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal read error on socket transport")
            return
        if not data:
            self._read_ready__on_eof()
            return
        arrived = time.time()
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                sec, nsec = struct.unpack_from("qq", value)
                arrived = sec + nsec * 1e-9
        self._protocol.arrived = arrived
        self._protocol.data_received(data)


async def open_stamped(factory: Callable[[], Client], host: str, port: int) -> Client:
    """``loop.create_connection`` with a :class:`StampedTransport`."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, (host, port))
        with contextlib.suppress(OSError):  # not Linux: no stamps, read times instead
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        protocol = factory()
        waiter = loop.create_future()
        StampedTransport(loop, sock, protocol, waiter)
        await waiter
    except BaseException:
        sock.close()
        raise
    return protocol


class Run:
    """What one run records: publish times by sequence number, latencies, deliveries."""

    def __init__(self) -> None:
        self.t0: dict[int, float] = {}
        self.latencies: list[float] = []
        self.deliveries = 0
        self.first_seq = 1 << 62
        self.last_seq = 1 << 62

    def record(self, client: Client, body: bytes, now: float) -> None:
        # No replays are asked for, so every event arrives once; in a burst with several
        # publishers in flight the order of sequence numbers is the server's arrival order.
        for match in SEQ.findall(body):
            seq = int(match)
            if self.first_seq <= seq <= self.last_seq:
                client.got += 1
                self.deliveries += 1
                t0 = self.t0.get(seq)
                if t0 is not None:
                    self.latencies.append(now - t0)


class Client(asyncio.Protocol):
    """Counts bytes both ways at the socket; ``ready`` once it can receive events."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.bytes_in = 0
        self.bytes_out = 0
        self.got = 0
        self.arrived = 0.0  # when the bytes being read reached the socket (StampedTransport)
        self.ready = asyncio.get_running_loop().create_future()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.send(self.opening())

    def send(self, data: bytes) -> None:
        self.bytes_out += len(data)
        assert self.transport is not None
        self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed before it was ready"))

    def opening(self) -> bytes:
        raise NotImplementedError

    def head_end(self, buf: bytes, status_line: bytes) -> int | None:
        """Where the response head in ``buf`` ends, once it is whole and starts with
        ``status_line``; ``None`` (the bytes kept, or ``ready`` failed) until then."""
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            self.buf = buf
            return None
        if not buf.startswith(status_line):
            self.ready.set_exception(ConnectionError(buf[:200].decode("latin-1")))
            return None
        return end

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


WS_KEY = base64.b64encode(b"labserver-bench!").decode()


def ws_frame(text: bytes, opcode: int = 1) -> bytes:
    """A masked client frame (RFC 6455 §5.2); the all-zero key leaves the payload as it is."""
    n = len(text)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + text


class WSClient(Client):
    """A WebSocket client: the handshake, then server frames (unmasked) parsed in place."""

    path = "/ws"

    def opening(self) -> bytes:
        return (f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n").encode()

    def data_received(self, data: bytes) -> None:
        now = self.arrived
        self.bytes_in += len(data)
        buf = self.buf + data if self.buf else data
        pos = 0
        if not self.upgraded:
            end = self.head_end(buf, b"HTTP/1.1 101")
            if end is None:
                return
            self.upgraded = True
            self.on_open()
            pos = end + 4
        n = len(buf)
        while n - pos >= 2:
            b1 = buf[pos + 1] & 0x7F
            head = 2
            if b1 == 126:
                if n - pos < 4:
                    break
                b1, head = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
            elif b1 == 127:
                if n - pos < 10:
                    break
                b1, head = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
            if n - pos < head + b1:
                break
            opcode = buf[pos] & 0x0F
            payload = buf[pos + head:pos + head + b1]
            pos += head + b1
            if opcode == 1:
                self.on_text(payload, now)
            elif opcode == 9:
                self.send(ws_frame(payload, 0xA))
            elif opcode == 8:
                self.closed = True
        self.buf = buf[pos:]

    upgraded = False

    def on_open(self) -> None:
        self.ready.set_result(None)

    def on_text(self, payload: bytes, now: float) -> None:
        self.bench.run.record(self, payload, now)


class SocketIOClient(WSClient):
    """Engine.IO 4 straight over WebSocket, then Socket.IO 5's connect to namespace ``/``."""

    path = "/socket.io/?EIO=4&transport=websocket"

    def on_open(self) -> None:
        pass  # ready once the namespace is connected

    def on_text(self, payload: bytes, now: float) -> None:
        kind = payload[:2]
        if kind == b"42":
            self.bench.run.record(self, payload, now)
        elif payload == b"2":  # Engine.IO ping
            self.send(ws_frame(b"3"))
        elif payload[:1] == b"0":  # Engine.IO open: connect to namespace "/"
            self.send(ws_frame(b"40"))
        elif kind == b"40" and not self.ready.done():
            self.ready.set_result(None)


class SSEClient(Client):
    """``GET /sse``: the response head, then chunks; events are read to the last blank line."""

    def opening(self) -> bytes:
        return b"GET /sse HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"

    def data_received(self, data: bytes) -> None:
        now = self.arrived
        self.bytes_in += len(data)
        buf = self.buf + data if self.buf else data
        if not self.ready.done():
            end = self.head_end(buf, b"HTTP/1.1 200")
            if end is None:
                return
            if b"retry:" not in buf[end:]:
                self.buf = buf
                return
            self.ready.set_result(None)
        cut = buf.rfind(b"\n\n") + 2
        if cut > 1:
            self.bench.run.record(self, buf[:cut], now)
            buf = buf[cut:]
        self.buf = buf


class LongPollClient(Client):
    """``GET /long-poll?after=ID`` on one keep-alive connection, again at once after each answer."""

    def __init__(self, bench: Bench, after: int) -> None:
        super().__init__(bench)
        self.after = after
        self.ready.set_result(None)  # ready when the server holds it: checked with /stats

    def opening(self) -> bytes:
        return (f"GET /long-poll?after={self.after}&timeout=50 HTTP/1.1\r\n"
                "Host: 127.0.0.1\r\n\r\n").encode()

    def data_received(self, data: bytes) -> None:
        now = self.arrived
        self.bytes_in += len(data)
        buf = self.buf + data if self.buf else data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end].lower()
            i = head.find(b"content-length:")
            length = int(head[i + 15:head.find(b"\r\n", i) if head.find(b"\r\n", i) > 0
                              else len(head)])
            if len(buf) < end + 4 + length:
                break
            body = buf[end + 4:end + 4 + length]
            buf = buf[end + 4 + length:]
            self.bench.run.record(self, body, now)
            match = LAST_ID.search(body)
            if match:
                self.after = int(match.group(1))
            self.send(self.opening())
        self.buf = buf


class Publisher(asyncio.Protocol):
    """``POST /publish`` on one keep-alive connection, one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.waiting: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buf[:end].lower()
        i = head.find(b"content-length:")
        j = head.find(b"\r\n", i)
        length = int(head[i + 15:j if j > 0 else len(head)])
        if len(self.buf) >= end + 4 + length:
            self.buf = self.buf[end + 4 + length:]
            if self.waiting is not None and not self.waiting.done():
                self.waiting.set_result(None)

    async def publish(self, body: bytes) -> None:
        assert self.transport is not None
        self.waiting = asyncio.get_running_loop().create_future()
        self.transport.write(b"POST /publish HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                             b"Content-Type: application/json\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)
        await asyncio.wait_for(self.waiting, 10)


class WSPublisher(WSClient):
    """The ``websockets`` stack's publisher: texts on a ``/publish`` WebSocket, no answers."""

    path = "/publish"

    def __init__(self, bench: Bench) -> None:
        super().__init__(bench)
        self.answers: asyncio.Queue[bytes] = asyncio.Queue()

    def on_text(self, payload: bytes, now: float) -> None:
        self.answers.put_nowait(payload)

    async def publish(self, body: bytes) -> None:
        self.send(ws_frame(body))

    async def subscribers(self) -> int:
        self.send(ws_frame(b"?"))
        return int(await asyncio.wait_for(self.answers.get(), 10))


# --- one stack, one transport, one N: connect, measure, disconnect ------------------------


@dataclass
class Result:
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")
    lost: int = 0
    deliveries: int = 0
    cpu_us: float = float("nan")  # server CPU per delivery
    gen_cpu: float = float("nan")  # generator CPU, fraction of one core over the run
    bytes_per: float = float("nan")  # bytes per delivery at the client sockets, both ways
    rate: float = float("nan")  # deliveries per second (saturation)
    rss_kib: float = float("nan")  # RSS per idle connection


class Bench:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.run = Run()
        self.clients: list[Client] = []
        self.publishers: list[Any] = []
        self.seq = 0

    async def connect(self, factory: Callable[[], Client]) -> Client:
        return await open_stamped(factory, self.stack.host, self.stack.port)

    async def open_clients(self, transport: str, n: int) -> None:
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        after = 0
        if transport == "long_poll":
            after = (await self.server_stats())["events"]["last_id"]
        kinds: dict[str, Callable[[], Client]] = {
            "ws": lambda: WSClient(self), "sse": lambda: SSEClient(self),
            "socketio": lambda: SocketIOClient(self),
            "long_poll": lambda: LongPollClient(self, after),
        }

        async def one() -> None:
            async with gate:
                client = await self.connect(kinds[transport])
                self.clients.append(client)
                await asyncio.wait_for(client.ready, READY_TIMEOUT_S)

        await asyncio.gather(*(one() for _ in range(n)))
        await self.wait_server_sees(transport, n)

    async def open_publishers(self, count: int) -> None:
        for _ in range(count):
            if self.stack.publish_over == "ws":
                pub = await self.connect(lambda: WSPublisher(self))
                await asyncio.wait_for(pub.ready, READY_TIMEOUT_S)
            else:
                _, pub = await asyncio.get_running_loop().create_connection(
                    Publisher, self.stack.host, self.stack.port)
            self.publishers.append(pub)

    async def server_stats(self) -> dict[str, Any]:
        reader, writer = await asyncio.open_connection(self.stack.host, self.stack.port)
        writer.write(b"GET /stats HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return json.loads(raw.split(b"\r\n\r\n", 1)[1])

    async def wait_server_sees(self, transport: str, n: int) -> None:
        """Until the server counts ``n`` open clients (they subscribed before any publish)."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.stack.publish_over == "ws":
                seen = await self.publishers[0].subscribers()
            else:
                seen = (await self.server_stats())["transports"][transport]["open"]
            if seen >= n:
                return
            await asyncio.sleep(0.02)
        raise TimeoutError(f"{self.stack.name}: the server sees {seen} of {n} {transport} clients")

    def body(self, seq: int) -> bytes:
        return b'{"data":{"s":%d,"p":"%s"}}' % (seq, PAD.encode())

    async def measure(self, rate: float | None, events: int) -> Result:
        """Publish ``events`` at ``rate`` per second (None: a burst, BURST_IN_FLIGHT at once)."""
        run = self.run = Run()
        run.first_seq, run.last_seq = self.seq + 1, self.seq + events
        for client in self.clients:
            client.got = 0
        bytes0 = sum(c.bytes_in + c.bytes_out for c in self.clients)
        pid = self.stack.pid
        cpu0, gen0, wall0 = cpu_ns(pid), time.process_time(), time.perf_counter()
        loop = asyncio.get_running_loop()
        if rate is not None:
            pub = self.publishers[0]
            start = loop.time()
            for k in range(events):
                delay = start + k / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                self.seq += 1
                run.t0[self.seq] = time.time()  # the clock of the kernel's stamps
                await pub.publish(self.body(self.seq))
        else:
            seqs = iter(range(self.seq + 1, self.seq + events + 1))
            self.seq += events

            async def publish_from(pub: Any) -> None:
                for seq in seqs:
                    run.t0[seq] = time.time()
                    await pub.publish(self.body(seq))

            await asyncio.gather(*(publish_from(p) for p in self.publishers))
        want = events * len(self.clients)
        deadline = time.perf_counter() + DRAIN_S
        while run.deliveries < want and time.perf_counter() < deadline:
            await asyncio.sleep(0.002)
        wall = time.perf_counter() - wall0
        cpu = cpu_ns(pid) - cpu0
        gen = time.process_time() - gen0
        moved = sum(c.bytes_in + c.bytes_out for c in self.clients) - bytes0
        lat = run.latencies
        delivered = max(run.deliveries, 1)
        def ms(q: float) -> float:  # labserver.measure.percentile: the lessons' statistic
            return percentile(lat, q) * 1e3 if lat else float("nan")

        return Result(
            p50_ms=ms(50), p99_ms=ms(99),
            max_ms=max(lat) * 1e3 if lat else float("nan"),
            lost=want - run.deliveries, deliveries=run.deliveries,
            cpu_us=cpu / 1e3 / delivered, gen_cpu=gen / wall, bytes_per=moved / delivered,
            rate=run.deliveries / wall,
        )

    def close(self) -> None:
        for c in [*self.clients, *self.publishers]:
            if c.transport is not None:
                c.transport.abort()
        self.clients.clear()
        self.publishers.clear()


# --- the matrix ---------------------------------------------------------------------------


@dataclass
class Plan:
    rounds: int
    sizes: tuple[int, ...]
    rates: tuple[int, ...]
    events: Callable[[int], int]  # events per run at a rate
    burst: int  # events in the saturation burst
    stacks: tuple[str, ...]
    warmup: int = 20  # events published before the measured runs of each server
    transports: tuple[str, ...] = ("long_poll", "sse", "ws", "socketio")


FULL = Plan(rounds=3, sizes=(1, 100, 1000), rates=(10, 100),
            events=lambda r: 15 if r <= 10 else 60, burst=300,
            stacks=("labserver", "node", "websockets", "aiohttp"))
QUICK = Plan(rounds=1, sizes=(1, 100), rates=(10, 100),
             events=lambda r: 10 if r <= 10 else 40, burst=100,
             stacks=("labserver", "node", "websockets", "aiohttp"))
TINY = Plan(rounds=1, sizes=(5,), rates=(100,), events=lambda r: 10, burst=20,
            stacks=("labserver", "node", "websockets", "aiohttp"), warmup=5)

Key = tuple[str, int, int]  # (transport, N, R); R = 0 for the saturation burst


@dataclass
class Table:
    plan: Plan
    by_round: list[dict[str, dict[Key, Result]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def runs_for(plan: Plan, transport: str, n: int) -> list[int]:
    return [r for r in plan.rates if n * r <= MAX_DELIVERIES_PER_S]


async def group(stack_name: str, transport: str, n: int, plan: Plan, core: int | None,
                out: dict[Key, Result], say: Callable[[str], None]) -> None:
    """One fresh server: connect ``n`` clients, measure RSS (N >= 1000), run each rate."""
    stack = STACKS[stack_name](core)
    bench = Bench(stack)
    try:
        await bench.open_publishers(1)
        rss0 = rss_kib(stack.pid)
        await bench.open_clients(transport, n)
        rss = float("nan")
        if n >= 1000:
            await asyncio.sleep(0.5)
            rss = (rss_kib(stack.pid) - rss0) / n
        await bench.measure(200, plan.warmup)  # warm-up (and JIT), not counted
        for rate in runs_for(plan, transport, n):
            result = await bench.measure(rate, plan.events(rate))
            result.rss_kib = rss
            out[(transport, n, rate)] = result
            say(f"{stack_name:>10} {transport:>9} N={n:<4} R={rate:<3} "
                f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  "
                f"lost {result.lost:<3} cpu {result.cpu_us:6.1f} µs/delivery  "
                f"gen {result.gen_cpu:4.0%}")
    finally:
        bench.close()
        stack.stop()


async def saturation(stack_name: str, plan: Plan, core: int | None,
                     out: dict[Key, Result], say: Callable[[str], None]) -> None:
    stack = STACKS[stack_name](core)
    bench = Bench(stack)
    try:
        await bench.open_publishers(1 if stack.publish_over == "ws" else BURST_IN_FLIGHT)
        await bench.open_clients("ws", SATURATION_CLIENTS)
        await bench.measure(None, plan.warmup)  # warm-up (and JIT), not counted
        result = await bench.measure(None, plan.burst)
        out[("ws", SATURATION_CLIENTS, 0)] = result
        say(f"{stack_name:>10} saturation: {result.rate:8.0f} deliveries/s, "
            f"cpu {result.cpu_us:5.1f} µs/delivery, lost {result.lost}, "
            f"gen {result.gen_cpu:4.0%}")
    finally:
        bench.close()
        stack.stop()


async def run_plan(plan: Plan, server_core: int | None, gen_core: int | None,
                   say: Callable[[str], None]) -> Table:
    if gen_core is not None:
        os.sched_setaffinity(0, {gen_core})
    table = Table(plan)
    for rnd in range(plan.rounds):
        stacks = list(plan.stacks)
        stacks = stacks[rnd % len(stacks):] + stacks[:rnd % len(stacks)]  # rotate the order
        results: dict[str, dict[Key, Result]] = {s: {} for s in stacks}
        say(f"round {rnd + 1}/{plan.rounds}")
        for transport in plan.transports:
            for n in plan.sizes:
                for name in stacks:
                    if transport in STACKS[name].transports:  # type: ignore[attr-defined]
                        await group(name, transport, n, plan, server_core, results[name], say)
        for name in stacks:
            if "ws" in STACKS[name].transports:  # type: ignore[attr-defined]
                await saturation(name, plan, server_core, results[name], say)
        table.by_round.append(results)
    return table


# --- the report ---------------------------------------------------------------------------


def med(values: Iterable[float]) -> float:
    vals = [v for v in values if v == v]  # drop NaN
    return statistics.median(vals) if vals else float("nan")


def fmt(x: float, digits: int = 1) -> str:
    return "–" if x != x else f"{x:.{digits}f}"


def ratio(table: Table, stack: str, key: Key, metric: str) -> float:
    """The median over rounds of (stack's metric / node's metric) within each round."""
    values = []
    for rnd in table.by_round:
        a, b = rnd.get(stack, {}).get(key), rnd.get("node", {}).get(key)
        if a is not None and b is not None and getattr(b, metric) > 0:
            values.append(getattr(a, metric) / getattr(b, metric))
    return med(values)


def value(table: Table, stack: str, key: Key, metric: str) -> float:
    return med(getattr(r[stack][key], metric) for r in table.by_round
               if stack in r and key in r[stack])


NAMES = {"long_poll": "long polling", "sse": "SSE", "ws": "WebSocket", "socketio": "Socket.IO"}


def report(table: Table) -> str:
    plan = table.plan
    stacks = [s for s in plan.stacks if any(s in r for r in table.by_round)]
    keys = [(t, n, r) for t in plan.transports for n in plan.sizes
            for r in runs_for(plan, t, n)]
    lines = []

    def row(cells: list[str]) -> None:
        lines.append("| " + " | ".join(cells) + " |")

    lines.append("**Delivery latency**, ms (p50 / p99 / max), events lost, and the load "
                 "generator's CPU (share of its core, highest of the stacks)")
    lines.append("")
    row(["transport", "N", "R/s", *[f"{s} p50/p99/max" for s in stacks], "lost",
         "labserver/node p50", "gen CPU"])
    row(["---"] * (6 + len(stacks)))
    for key in keys:
        t, n, r = key
        cells = [NAMES[t], str(n), str(r)]
        for s in stacks:
            if t in STACKS[s].transports:  # type: ignore[attr-defined]
                cells.append(" / ".join(fmt(value(table, s, key, m), 2)
                                        for m in ("p50_ms", "p99_ms", "max_ms")))
            else:
                cells.append("")
        lost = [int(sum(rr[s][key].lost for rr in table.by_round if key in rr.get(s, {})))
                for s in stacks if t in STACKS[s].transports]  # type: ignore[attr-defined]
        cells.append("/".join(map(str, lost)))
        cells.append(fmt(ratio(table, "labserver", key, "p50_ms"), 2))
        gen = max((value(table, s, key, "gen_cpu") for s in stacks
                   if t in STACKS[s].transports), default=float("nan"))  # type: ignore
        cells.append(f"{gen:.0%}" if gen == gen else "–")
        row(cells)

    lines.append("")
    lines.append("**Server CPU per delivery**, µs (the publish request's cost included), and "
                 "**bytes per delivery** at the client socket, both directions")
    lines.append("")
    row(["transport", "N", "R/s", *[f"{s} µs" for s in stacks], "labserver/node CPU",
         *[f"{s} B" for s in stacks]])
    row(["---"] * (4 + 2 * len(stacks)))
    for key in keys:
        t, n, r = key
        has = [t in STACKS[s].transports for s in stacks]  # type: ignore[attr-defined]
        row([NAMES[t], str(n), str(r),
             *[fmt(value(table, s, key, "cpu_us")) if h else ""
               for s, h in zip(stacks, has, strict=True)],
             fmt(ratio(table, "labserver", key, "cpu_us"), 2),
             *[fmt(value(table, s, key, "bytes_per"), 0) if h else ""
               for s, h in zip(stacks, has, strict=True)]])

    sat = ("ws", SATURATION_CLIENTS, 0)
    lines.append("")
    lines.append(f"**Saturation**: {SATURATION_CLIENTS} WebSocket clients, a burst of "
                 f"{plan.burst} events published as fast as the server takes them")
    lines.append("")
    row(["stack", "deliveries/s", "CPU µs/delivery", "CPU ratio to node", "lost", "gen CPU"])
    row(["---"] * 6)
    for s in stacks:
        if not any(sat in r.get(s, {}) for r in table.by_round):
            continue
        row([s, fmt(value(table, s, sat, "rate"), 0), fmt(value(table, s, sat, "cpu_us"), 2),
             fmt(ratio(table, s, sat, "cpu_us"), 2),
             str(int(sum(r[s][sat].lost for r in table.by_round if sat in r.get(s, {})))),
             f"{value(table, s, sat, 'gen_cpu'):.0%}"])

    big = max(plan.sizes)
    if big >= 1000:
        lines.append("")
        lines.append(f"**RSS per idle connection** at N = {big}, KiB")
        lines.append("")
        row(["transport", *stacks, "labserver/node"])
        row(["---"] * (2 + len(stacks)))
        for t in plan.transports:
            r0 = runs_for(plan, t, big)[0]
            key = (t, big, r0)
            row([NAMES[t], *[fmt(value(table, s, key, "rss_kib"))
                             if t in STACKS[s].transports else ""  # type: ignore[attr-defined]
                             for s in stacks],
                 fmt(ratio(table, "labserver", key, "rss_kib"), 2)])

    lines.append("")
    lines.extend(targets(table))
    return "\n".join(lines)


def targets(table: Table) -> list[str]:
    """The issue's targets, as ratios to Node within each round (medians over rounds)."""
    big = max(table.plan.sizes)
    sat = ("ws", SATURATION_CLIENTS, 0)
    checks: list[tuple[str, float, float]] = [
        ("WebSocket CPU per delivery at saturation ≤ 0.9× node",
         ratio(table, "labserver", sat, "cpu_us"), 0.9)]
    if big >= 1000:
        ws = ("ws", big, 10)
        checks += [
            (f"WebSocket p50 at N={big} ≤ node", ratio(table, "labserver", ws, "p50_ms"), 1.0),
            (f"WebSocket p99 at N={big} ≤ node", ratio(table, "labserver", ws, "p99_ms"), 1.0),
        ]
        for t in ("sse", "long_poll"):
            key = (t, big, 10)
            checks += [
                (f"{NAMES[t]} p50 at N={big} ≤ node", ratio(table, "labserver", key, "p50_ms"),
                 1.0),
                (f"{NAMES[t]} CPU per delivery at N={big} ≤ node",
                 ratio(table, "labserver", key, "cpu_us"), 1.0),
            ]
        checks += [
            (f"Socket.IO p50 at N={big} ≤ 1.5× node",
             ratio(table, "labserver", ("socketio", big, 10), "p50_ms"), 1.5),
            ("RSS per idle WebSocket ≤ node",
             ratio(table, "labserver", ("ws", big, 10), "rss_kib"), 1.0),
        ]
    out = ["**Targets** (labserver / node, median of the per-round ratios)", "",
           "| target | ratio | met |", "| --- | --- | --- |"]
    for name, r, limit in checks:
        met = "–" if r != r else ("yes" if r <= limit else "**no**")
        out.append(f"| {name} | {fmt(r, 2)} | {met} |")
    return out


def machine() -> str:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip() \
        if shutil.which("node") else "none"
    load = os.getloadavg()
    return (f"{os.cpu_count()} cores ({cpu}), Linux {platform.release()}, "
            f"Python {platform.python_version()}, Node {node}; load average before the run "
            f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}")


def write_readme(text: str) -> None:
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    readme = README.read_text()
    head, rest = readme.split(start, 1)
    _, tail = rest.split(end, 1)
    README.write_text(f"{head}{start}\n{text}\n{end}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one round, N = 1 and 100")
    parser.add_argument("--tiny", action="store_true", help="a smoke run: N = 5, one rate")
    parser.add_argument("--rounds", type=int, help="rounds (default 3, --quick 1)")
    parser.add_argument("--stacks", help="comma-separated: labserver,node,websockets,aiohttp")
    parser.add_argument("--transports", help="comma-separated: long_poll,sse,ws,socketio")
    parser.add_argument("--sizes", help="comma-separated client counts, e.g. 1,100,1000")
    parser.add_argument("--readme", action="store_true",
                        help="write the table into benchmarks/README.md")
    args = parser.parse_args(argv)
    plan = dataclasses.replace(TINY if args.tiny else QUICK if args.quick else FULL)
    if args.rounds:
        plan.rounds = args.rounds
    if args.stacks:
        plan.stacks = tuple(args.stacks.split(","))
    if args.transports:
        plan.transports = tuple(args.transports.split(","))
    if args.sizes:
        plan.sizes = tuple(int(n) for n in args.sizes.split(","))
    if "node" in plan.stacks and (why := node_ready()):
        print(f"the Node stack cannot run: {why}", file=sys.stderr)
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 4 * max(plan.sizes) + 256
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    about = machine()
    started = time.monotonic()
    server_core, gen_core = cpus()
    table = asyncio.run(run_plan(plan, server_core, gen_core,
                                 lambda s: print(s, file=sys.stderr, flush=True)))
    took = time.monotonic() - started
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    pinned = (f"servers pinned to core {server_core}, load generator to core {gen_core}"
              if server_core is not None else "not pinned (fewer than two cores)")
    text = (f"Run {when}, {plan.rounds} round(s), {took:.0f} s; {about}; {pinned}.\n\n"
            + report(table))
    print(text)
    if args.readme:
        write_readme(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
