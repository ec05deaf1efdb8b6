"""Measuring tools the lessons share: one workload, percentiles, and delivery records.

Every lesson compares its transport with the others on the *same* workload
(:data:`WORKLOAD`): a publisher sends ``events`` events, one every ``interval_s`` seconds, each
with a payload of ``payload_bytes``. A client records, for every event it receives, the time it
arrived (``time.time()``, the same clock as the event's ``ts``, since server and client run on
one machine): latency is ``received - ts``.

Nothing here talks to a transport: the client code a learner should read stays in the
notebook cells. :func:`drive` runs such a client against the workload (the plumbing of
``01_polling``): the client gets a :class:`ClientRun` to record into, the driver publishes.
It is the one experiment driver: :mod:`labserver.clients`' ``run_workload``,
``run_side_by_side`` and ``run_together`` start their clients with the same :class:`ClientRun`
through the same harness (:func:`experiment`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .counters import stats_diff
from .tasks import cancel_all


@dataclass(frozen=True)
class Workload:
    events: int = 40  # events published
    interval_s: float = 0.05  # one event every interval_s seconds (20 events/s)
    payload_bytes: int = 64  # size of the payload's text

    @property
    def duration_s(self) -> float:
        return self.events * self.interval_s

    def payload(self, n: int) -> dict[str, Any]:
        """Event ``n``'s data: ``{"n": n, "text": "xxxx…"}`` with ``payload_bytes`` of text."""
        return {"n": n, "text": "x" * self.payload_bytes}


#: The workload every lesson runs, so that their numbers line up in 06_compare.
WORKLOAD = Workload()


class Publisher(Protocol):
    async def apublish(self, data: Any) -> int: ...


async def publish_workload(srv: Publisher, workload: Workload | None = None) -> list[int]:
    """Publish the workload at its fixed rate (not drifting: each publish has its slot).

    Without ``workload``, :data:`WORKLOAD` as it is *now* (looked up at the call, not when this
    module was imported), so ``labserver.measure.WORKLOAD = Workload(...)`` takes effect.
    """
    workload = workload if workload is not None else WORKLOAD
    loop = asyncio.get_running_loop()
    start = loop.time()
    ids = []
    for n in range(workload.events):
        delay = start + n * workload.interval_s - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        ids.append(await srv.apublish(workload.payload(n)))
    return ids


@dataclass
class Deliveries:
    """What one client received: event ids, their ``ts``, and when each arrived."""

    ids: list[int] = field(default_factory=list)
    sent_ts: list[float] = field(default_factory=list)
    received_ts: list[float] = field(default_factory=list)

    def record(self, event: dict[str, Any], received: float | None = None) -> None:
        self.ids.append(event["id"])
        self.sent_ts.append(event["ts"])
        self.received_ts.append(time.time() if received is None else received)

    @property
    def latencies_ms(self) -> list[float]:
        return [(r - s) * 1000 for s, r in zip(self.sent_ts, self.received_ts, strict=True)]

    def __len__(self) -> int:
        return len(self.ids)


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0–100) of ``values``, linear between the two closest ranks.

    labserver's one percentile: the lessons' claims and the benchmarks' tables
    (``benchmarks/bench.py``) use it alike, so a lesson's p99 and the README's are the same
    statistic. Linear interpolation rather than the nearest rank because it is NumPy's default
    (``numpy.percentile(values, p)``; also R's, Hyndman and Fan's type 7): a learner can check
    any printed number with NumPy, and the 50th is the median ``statistics.median`` gives.
    The two differ by less than the gap between two neighbouring samples, which is small where
    a p99 may be quoted at all (1000 samples or more).
    """
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summarize_ms(latencies_ms: Sequence[float]) -> dict[str, float | int | None]:
    """Median and p99 of latencies; p99 only where there are at least 100 samples."""
    return {
        "n": len(latencies_ms),
        "p50_ms": percentile(latencies_ms, 50),
        "p99_ms": percentile(latencies_ms, 99) if len(latencies_ms) >= 100 else None,
    }


def cdf(values: Sequence[float]) -> tuple[list[float], list[float]]:
    """x, y for a step plot of the empirical CDF."""
    xs = sorted(values)
    n = len(xs)
    return xs, [(i + 1) / n for i in range(n)]


# --- the experiment driver: clients against the workload ------------------------------------


class StatsPublisher(Publisher, Protocol):
    """What a driver needs of a server handle (``labserver.start()`` returns one)."""

    url: str

    async def astats(self) -> dict[str, Any]: ...


@dataclass
class ClientRun:
    """One client's part in an experiment: what the driver asks of it, what it records.

    Every client starts from the same cursor (``after``: the last event id before the
    experiment), so none can miss an event, whichever connects last; it records what it receives
    — :meth:`record` for a poll's answer (``01_polling``'s clients; the request is kept too),
    :meth:`record_event` for one pushed event — until it has ``count`` of them
    (:meth:`wants_more` turns false). A client that holds a connection open says so
    (``connected.set()``) and, once it has everything, keeps it open until the driver has read
    the server's counters (``await run.finished()``).
    """

    after: int  # the last event id before the experiment: the client's first cursor
    count: int  # how many events this client must receive
    release: asyncio.Event = field(default_factory=asyncio.Event)  # set once the driver is done
    deliveries: Deliveries = field(default_factory=Deliveries)
    #: one ``(sent, answered, events carried)`` per request, in ``time.time()`` seconds
    requests: list[tuple[float, float, int]] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    received_all: asyncio.Event = field(default_factory=asyncio.Event)
    t0: float = 0.0  # when publishing started (drive)
    ids: list[int] = field(default_factory=list)  # the ids published (drive)
    stats: dict[str, Any] = field(default_factory=dict)  # the server's counters of this run

    def wants_more(self) -> bool:
        """True until the client has received all the run's events.

        (Known by count, not by the last id: a long poll can bring the last event before the
        publisher has even heard its id back, and would then ask, and wait, once more.)
        """
        return len(self.deliveries) < self.count

    def record_event(self, event: dict[str, Any], received: float | None = None) -> None:
        """One event, as it arrives (``time.time()``: the clock of the event's ``ts``)."""
        self.deliveries.record(event, received)
        if not self.wants_more():
            self.received_all.set()

    def record(self, sent: float, page: dict[str, Any]) -> None:
        """One answer ``{"events": [...], ...}`` to a request sent at ``sent``, received now."""
        received = time.time()
        self.requests.append((sent, received, len(page["events"])))
        for event in page["events"]:
            self.record_event(event, received)

    async def finished(self) -> None:
        """Every event is in: hold the connection open until the driver has read the counters."""
        self.received_all.set()
        await self.release.wait()


#: Seconds a client may take, after the last publish, to receive everything.
DELIVERY_GRACE_S = 10.0
#: Seconds clients may take to connect, and to close once the driver lets go.
CONNECT_TIMEOUT_S = 10.0


@dataclass
class Experiment:
    """Clients running against one workload (made by :func:`experiment`)."""

    before: dict[str, Any]  # the server's counters before any client started
    runs: dict[str, ClientRun]  # one per client, by name
    tasks: list[asyncio.Task[None]]

    async def until_connected(self, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        """Wait until every client has said it is connected."""
        await until(self.tasks, [run.connected for run in self.runs.values()], timeout_s)

    async def until_received(self, timeout_s: float = DELIVERY_GRACE_S) -> None:
        """Wait until every client has every event (or has returned without)."""
        await until(self.tasks, [run.received_all for run in self.runs.values()], timeout_s)


@contextlib.asynccontextmanager
async def experiment(srv: StatsPublisher, clients: Mapping[str, Callable[[ClientRun],
                                                                         Awaitable[None]]],
                     workload: Workload | None = None) -> AsyncIterator[Experiment]:
    """Start every client of ``clients`` (``name → client(run)``), each with a
    :class:`ClientRun` from the server's last event id; the block publishes and waits. When it
    ends, every client is let go (``release``) and has returned within
    :data:`CONNECT_TIMEOUT_S`; on an error, cancelled. The harness of :func:`drive` and of
    :mod:`labserver.clients`' drivers.
    """
    workload = workload if workload is not None else WORKLOAD
    before = await srv.astats()
    release = asyncio.Event()
    runs = {name: ClientRun(before["events"]["last_id"], workload.events, release)
            for name in clients}
    tasks = [asyncio.create_task(client(runs[name])) for name, client in clients.items()]
    try:
        yield Experiment(before, runs, tasks)
        release.set()
        await asyncio.wait_for(asyncio.gather(*tasks), CONNECT_TIMEOUT_S)
    finally:
        await cancel_all(tasks)


async def until(tasks: list[asyncio.Task[None]], events: list[asyncio.Event],
                timeout_s: float) -> None:
    """Wait until every event is set, or every task has returned; a task that fails meanwhile
    raises its error, and ``TimeoutError`` says how many events were still unset."""
    waiting = asyncio.ensure_future(asyncio.gather(*(e.wait() for e in events)))
    deadline = asyncio.timeout(timeout_s)
    try:
        async with deadline:
            while True:
                for task in tasks:
                    if task.done() and not task.cancelled() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
                running = [t for t in tasks if not t.done()]
                if waiting.done() or not running:
                    return  # every event set, or every client returned: what it recorded tells
                await asyncio.wait([waiting, *running], return_when=asyncio.FIRST_COMPLETED)
    except TimeoutError:
        if not deadline.expired():
            raise  # a client's own timeout (aiohttp's ServerTimeoutError is one): its error
        late = sum(not e.is_set() for e in events)
        raise TimeoutError(f"{late} of {len(events)} clients not ready within {timeout_s} s") \
            from None
    finally:
        waiting.cancel()


async def drive(
    srv: StatsPublisher, client: Callable[..., Awaitable[None]], *,
    workload: Workload | None = None, start_after_s: float = 0.0, **options: Any,
) -> ClientRun:
    """Run ``client(run, **options)`` while the workload is published; return its record.

    The client starts ``start_after_s`` seconds after the first publish and returns once it has
    every event (``run.wants_more()`` is false). Raises ``AssertionError`` unless it received
    every event exactly once, in order; ``run.stats`` holds the server's counters for this run.
    """
    workload = workload if workload is not None else WORKLOAD

    async def start_later(run: ClientRun) -> None:
        await asyncio.sleep(start_after_s)
        await client(run, **options)

    async with experiment(srv, {"client": start_later}, workload) as running:
        run = running.runs["client"]
        run.t0 = time.time()
        run.ids = await publish_workload(srv, workload)
        await running.until_received(DELIVERY_GRACE_S)
    run.stats = stats_diff(running.before, await srv.astats())
    assert run.deliveries.ids == run.ids, "every event exactly once, in order"
    return run


def draw_timeline(ax: Any, run: ClientRun, title: str, window_ms: float = 600) -> None:
    """Draw a :class:`ClientRun`'s first ``window_ms`` on a matplotlib ``ax`` (01_polling).

    Each request is a bar from sent to answered, on two alternating rows so that one can be told
    from the next: blue if it brought events, gray if empty. Each event is a red triangle at its
    publish time, joined by a line to the answer that brought it.
    """
    ms = lambda t: (t - run.t0) * 1000  # noqa: E731
    row = {}
    for i, (sent, answered, n) in enumerate(run.requests):
        row[answered] = i % 2
        if ms(sent) <= window_ms:
            ax.barh(i % 2, max(ms(answered) - ms(sent), 2), left=ms(sent), height=0.5,
                    color="tab:blue" if n else "lightgray", edgecolor="k", linewidth=0.4)
    for published, received in zip(run.deliveries.sent_ts, run.deliveries.received_ts,
                                   strict=True):
        if ms(published) <= window_ms:
            ax.plot([ms(published), ms(received)], [2, row[received] + 0.3], "tab:red", lw=0.8)
            ax.plot(ms(published), 2, "v", color="tab:red")
    ax.set(yticks=[0.5, 2], yticklabels=["requests", "events"], ylim=(-0.5, 2.4),
           xlim=(0, window_ms), title=title)


def draw_two_clocks(ax: Any, waits_ms: Sequence[float], event_every_ms: float = 50,
                    poll_every_ms: float = 100, start_ms: float = 25, events: int = 7) -> None:
    """Draw the first ``events`` events of a fixed event clock and the polls of a fixed poll
    clock on ``ax``, with an arrow from each event to the poll that brings it, labelled with
    its wait from ``waits_ms`` (01_polling's model of short polling)."""
    times = [event_every_ms * n for n in range(events)]
    polls = [start_ms + poll_every_ms * k for k in range(int(times[-1] // poll_every_ms) + 2)]
    ax.plot(times, [1] * len(times), "v", color="tab:red")
    ax.plot(polls, [0] * len(polls), "^", color="tab:blue")
    for t, wait in zip(times, waits_ms, strict=False):
        ax.annotate("", (t + wait, 0.12), (t, 0.88),
                    arrowprops={"arrowstyle": "->", "color": "gray"})
        ax.text(t + wait / 2 + 3, 0.5, f"{wait:.0f} ms", fontsize=8)
    ax.set(yticks=[0, 1], ylim=(-0.4, 1.4), xlabel="time since the first event (ms)",
           yticklabels=[f"polls: every {poll_every_ms:.0f} ms from {start_ms:.0f} ms",
                        f"events: every {event_every_ms:.0f} ms"])


def recv_for(sock: Any, seconds: float) -> bytes:
    """What a blocking socket receives until it has been silent for ``seconds`` (02_sse)."""
    sock.settimeout(seconds)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        pass
    return data


def visible(raw: bytes) -> str:
    """Bytes as text with their line ends shown: ``␍␊`` for CRLF, ``␊`` for a lone LF."""
    return raw.decode().replace("\r\n", "␍␊\0").replace("\n", "␊\n").replace("\0", "\n")
