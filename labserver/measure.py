"""Measuring tools the lessons share: one workload, percentiles, and delivery records.

Every lesson compares its transport with the others on the *same* workload
(:data:`WORKLOAD`): a publisher sends ``events`` events, one every ``interval_s`` seconds, each
with a payload of ``payload_bytes``. A client records, for every event it receives, the time it
arrived (``time.time()``, the same clock as the event's ``ts``, since server and client run on
one machine): latency is ``received - ts``.

Nothing here talks to a transport: the client code a learner should read stays in the
notebook cells.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


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


async def publish_workload(srv: Publisher, workload: Workload = WORKLOAD) -> list[int]:
    """Publish the workload at its fixed rate (not drifting: each publish has its slot)."""
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
    """The ``p``-th percentile (0–100), linear between closest ranks (NumPy's default)."""
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
