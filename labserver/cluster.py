"""Scale-out on Redis: one event log for a cluster of labserver nodes.

A single process serves a classroom; a course site outgrows it. With ``redis_url=`` a node
keeps its event log in a **Redis stream** shared by every node, so an event published on any
node reaches every client of every node, on every transport, with one global sequence of ids.

How it works, and what to look at first:

* :data:`PUBLISH_LUA` — publishing is one Lua script, run atomically by Redis: ``INCR`` the
  cluster's id counter, then ``XADD`` the event to the stream under that id (``N-0``), trimmed
  to ``log_size``. Two nodes publishing at once can never get the same id or append out of
  order, and the JSON of the event is built once, there.
* :meth:`RedisLog.follow` — every node reads the stream with ``XREAD BLOCK`` from the last id it
  has seen and appends each entry to its own in-memory mirror (a :class:`MemoryLog`). The
  transports read the mirror exactly as on a single node: cursors, long-poll waits, push
  subscriptions and gap detection are unchanged — which is why ``polling.py`` or ``sse.py`` say
  nothing about clusters.
* **Redis goes away**: clients stay connected to their node; ``/publish`` answers 503 with a
  reason (:class:`ClusterUnavailable`); ``/stats`` says ``"redis": "down"``. The follower
  retries with a bounded back-off and, when Redis is back (restarted from its append-only file),
  reads on from its last id: ids continue, never repeat, and every client sees contiguous ids.
  If the stream was trimmed past what a node had seen, its mirror restarts at the oldest entry,
  so the cursors of its clients report a gap instead of silently skipping events.

Socket.IO rooms span nodes through python-socketio's own ``AsyncRedisManager`` (see
``socketio.py``); no home-made cluster protocol.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .children import free_port, release, terminate, wait_until, watchdog
from .events import DEFAULT_LOG_SIZE, DEFAULT_QUEUE_SIZE, Event, LogUnavailable, MemoryLog

log = logging.getLogger("labserver.cluster")

#: Keys, under one prefix so that a Redis can host several clusters (``key_prefix``).
ID_KEY = "{prefix}:last_id"
STREAM_KEY = "{prefix}:events"
NODES_KEY = "{prefix}:nodes"

#: The whole of publishing: allocate the next id and append the event under it, atomically.
PUBLISH_LUA = """
local id = redis.call('INCR', KEYS[1])
local event = '{"id":' .. id .. ',"data":' .. ARGV[1] .. ',"ts":' .. ARGV[2] .. '}'
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], id .. '-0', 'event', event)
return id
"""

#: How long one ``XREAD`` blocks before the follower loops (and notices a stop).
BLOCK_MS = 1000
#: Back-off between reconnection attempts while Redis is away: 0.1 s doubling to 2 s.
RETRY_MIN_S, RETRY_MAX_S = 0.1, 2.0
#: A node counts as alive while its heartbeat is younger than this.
NODE_TTL_S = 5.0
#: How long ``publish`` waits for its own event to come back through the stream.
PUBLISH_ECHO_TIMEOUT_S = 5.0


class ClusterUnavailable(LogUnavailable):
    """Redis cannot be reached: nothing can be published until it is back."""


class RedisLog(MemoryLog):
    """This node's mirror of the cluster's event log, kept in step with a Redis stream."""

    def __init__(
        self,
        redis_url: str,
        log_size: int = DEFAULT_LOG_SIZE,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        key_prefix: str = "labserver",
        node: str | None = None,
    ) -> None:
        super().__init__(log_size, queue_size)
        self.redis_url = redis_url
        self.node = node or f"{socket.gethostname()}:{os.getpid()}"
        self._keys = {name: key.format(prefix=key_prefix) for name, key in
                      (("id", ID_KEY), ("stream", STREAM_KEY), ("nodes", NODES_KEY))}
        self._redis = aioredis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=5)
        self._publish_script = self._redis.register_script(PUBLISH_LUA)
        self._stream_pos = "0-0"  # the last stream entry this node has mirrored
        self._follower: asyncio.Task[None] | None = None
        self.redis_up = False
        self.redis_error: str | None = None
        self.published_here = 0
        self._nodes_alive = 0

    # --- publishing -----------------------------------------------------------------

    async def publish(self, data: Any) -> Event:
        data_json = json.dumps(data, separators=(",", ":"))
        for attempt in (1, 2):  # a pooled connection may be stale after a Redis restart
            try:
                new_id = int(await self._publish_script(
                    keys=[self._keys["id"], self._keys["stream"]],
                    args=[data_json, repr(time.time()), self.log_size],
                ))
                break
            except (RedisError, OSError) as exc:
                if attempt == 2 or not self.redis_up:
                    self._mark_down(exc)
                    raise ClusterUnavailable(f"redis unavailable: {exc}") from None
        self.published_here += 1
        # The event reaches this node's mirror through the stream, like every other node's:
        # wait for it there, so that a poll on this node right after sees it.
        event = await self.wait_for_id(new_id, PUBLISH_ECHO_TIMEOUT_S)
        if event is None:  # mirrored late or trimmed; published all the same
            event = Event.create(new_id, data)
        return event

    # --- following the stream -------------------------------------------------------

    async def start(self) -> None:
        """Load the recent log, then follow the stream in the background."""
        try:
            await self._load_tail()
        except (RedisError, OSError) as exc:
            self._mark_down(exc)
        self._follower = asyncio.create_task(self.follow())

    async def stop(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            try:
                await self._follower
            except asyncio.CancelledError:
                pass
        try:
            await self._redis.zrem(self._keys["nodes"], self.node)
        except (RedisError, OSError):
            pass
        await self._redis.aclose()

    async def _load_tail(self) -> None:
        entries = await self._redis.xrevrange(self._keys["stream"], count=self.log_size)
        self._mirror(reversed(entries))
        self._mark_up()

    async def follow(self) -> None:
        """``XREAD BLOCK`` from the last mirrored entry, forever; reconnect when Redis is away."""
        backoff_s = RETRY_MIN_S
        last_heartbeat = 0.0
        while True:
            try:
                if time.monotonic() - last_heartbeat > NODE_TTL_S / 3:
                    await self._heartbeat()
                    last_heartbeat = time.monotonic()
                    self._mark_up()  # after an error: up as soon as Redis answers, not after
                    # the next XREAD, which blocks up to BLOCK_MS when nothing is published
                reply = await self._redis.xread(
                    {self._keys["stream"]: self._stream_pos}, count=500, block=BLOCK_MS
                )
                self._mark_up()
                backoff_s = RETRY_MIN_S
                for _stream, entries in reply or []:
                    self._mirror(entries)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self._mark_down(exc)
                last_heartbeat = 0.0  # the next attempt starts with a heartbeat
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, RETRY_MAX_S)

    def _mirror(self, entries: Any) -> None:
        for entry_id, fields in entries:
            entry_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            text = fields[b"event"].decode()
            value = json.loads(text)
            event = Event(id=value["id"], data=value["data"], ts=value["ts"], json=text)
            self._stream_pos = entry_id
            if event.id <= self.last_id:
                continue  # already mirrored
            if len(self) and event.id != self.last_id + 1:
                # Entries were trimmed while this node could not read them: start the mirror
                # afresh so that cursors before it report a gap rather than skip silently.
                log.warning("mirror restarts at id %d (had %d)", event.id, self.last_id)
                self.clear()
            self.append(event)

    async def _heartbeat(self) -> None:
        now = time.time()
        pipe = self._redis.pipeline()
        pipe.zadd(self._keys["nodes"], {self.node: now})
        pipe.zremrangebyscore(self._keys["nodes"], 0, now - NODE_TTL_S)
        pipe.zcard(self._keys["nodes"])
        *_, alive = await pipe.execute()
        self._nodes_alive = int(alive)

    def _mark_up(self) -> None:
        if not self.redis_up:
            log.info("redis up at %s", self.redis_url)
        self.redis_up, self.redis_error = True, None

    def _mark_down(self, exc: BaseException) -> None:
        if self.redis_up or self.redis_error is None:
            log.warning("redis down: %s", exc)
        self.redis_up, self.redis_error = False, str(exc) or type(exc).__name__

    def cluster_stats(self) -> dict[str, Any]:
        """What ``/stats`` says of the cluster: which node answered, and whether Redis is up."""
        return {
            "node": self.node,
            "redis": "up" if self.redis_up else "down",
            "error": self.redis_error,
            "published_here": self.published_here,
            "nodes_alive": self._nodes_alive,
        }


#: ``redis-server`` arguments for each :class:`RedisProcess` ``persistence``.
PERSISTENCE = {
    "always": ("--appendonly", "yes", "--appendfsync", "always", "--save", ""),
    "everysec": ("--appendonly", "yes", "--appendfsync", "everysec", "--save", ""),
    "default": (),
}


class RedisProcess:
    """A real ``redis-server`` on a free loopback port, for a lesson or a test.

    ``persistence`` says what survives a restart (:data:`PERSISTENCE`):

    * ``"always"`` (the default here) — an append-only file, fsync on every write: a restart
      with :meth:`start`, even after :meth:`crash`, comes back with every event and the id
      counter. It is what makes the scale-out lesson's "ids continue" true.
    * ``"everysec"`` — the append-only file with Redis's usual fsync once a second: a killed
      process loses nothing (its writes are in the kernel), a machine that loses power loses
      about the last second.
    * ``"default"`` — redis-server's own defaults (no append-only file, RDB snapshots at
      ``save 3600 1 300 100 60 10000``): a clean :meth:`stop` writes a snapshot, a crash loses
      everything since the last one.

    Stop it with :meth:`stop` (SIGTERM: Redis flushes and exits) or :meth:`crash` (SIGKILL).
    """

    def __init__(self, directory: str, executable: str | None = None, *,
                 persistence: str = "always") -> None:
        import shutil

        found = executable or shutil.which("redis-server")
        if found is None:
            raise FileNotFoundError(
                "redis-server not found: install it (Debian/Ubuntu: apt-get install "
                "redis-server; macOS: brew install redis; conda: conda install -c conda-forge "
                "redis-server)"
            )
        if persistence not in PERSISTENCE:
            raise ValueError(f"persistence is one of {', '.join(PERSISTENCE)}, not {persistence!r}")
        self.executable, self.directory, self.persistence = found, directory, persistence
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: Any = None
        self._watchdog: Any = None

    def start(self, timeout_s: float = 10) -> RedisProcess:
        import subprocess

        self._process = subprocess.Popen(
            [self.executable, "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", self.directory, *PERSISTENCE[self.persistence],
             "--protected-mode", "yes"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self._watchdog = watchdog(self._process.pid)  # a kernel restart must not leave it behind
        if wait_until(self._answers_ping, timeout_s, process=self._process, interval_s=0.05):
            return self
        self.stop()
        raise RuntimeError("redis-server did not start")

    def _answers_ping(self) -> bool:
        """Whether the server answers PING with PONG. An open port is not enough: a restart with
        an append-only file answers ``-LOADING`` (redis-py's BusyLoadingError) until it has read
        the file back, and a client that came in then would fail."""
        with socket.socket() as sock:
            sock.settimeout(1)
            try:
                sock.connect(("127.0.0.1", self.port))
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
            except OSError:
                return False

    def stop(self) -> None:
        guard, self._watchdog = self._watchdog, None
        release(guard)  # SIGTERM to redis-server, still our unreaped child
        terminate(self._process, 10)  # Redis flushes on SIGTERM: give it time before SIGKILL
        self._process = None

    def crash(self) -> None:
        """Kill redis-server with SIGKILL, as a crash would: no flush, no snapshot."""
        import signal

        guard, self._watchdog = self._watchdog, None
        if guard is not None:  # the watchdog goes first: its SIGTERM would be a clean stop
            guard.kill()
            guard.wait(10)
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait(10)
        self._process = None

    def __enter__(self) -> RedisProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def counter_after_restart(persistence: str, how: str, increments: int = 20,
                          executable: str | None = None) -> int:
    """What a restart leaves of a cluster's id counter: a fresh :class:`RedisProcess` with
    ``persistence`` gets ``increments`` ``INCR`` of :data:`ID_KEY` (what each publish does), then
    ``how`` — ``"crash"`` (SIGKILL) or ``"stop"`` (SIGTERM) — and a restart; returns the counter
    it comes back with (0 when the key is gone)."""
    import tempfile

    import redis

    if how not in ("crash", "stop"):
        raise ValueError(f"how is 'crash' or 'stop', not {how!r}")
    key = ID_KEY.format(prefix="labserver")
    with tempfile.TemporaryDirectory() as directory:
        server = RedisProcess(directory, executable, persistence=persistence).start()
        try:
            client = redis.Redis.from_url(server.url)
            for _ in range(increments):
                client.incr(key)
            client.close()
            if how == "crash":
                server.crash()
            else:
                server.stop()
            server.start()
            client = redis.Redis.from_url(server.url)
            left = int(client.get(key) or 0)
            client.close()
        finally:
            server.stop()
    return left
