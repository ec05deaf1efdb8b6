"""The event log and its cursors: ids, the bound, and the gap rules of events.py."""

from __future__ import annotations

import asyncio
import json

import pytest

from labserver.events import Event, MemoryLog


async def fill(log: MemoryLog, n: int) -> None:
    for i in range(n):
        await log.publish({"n": i})


def ids(page) -> list[int]:
    return [e.id for e in page.events]


def test_event_json_is_built_once_and_matches_the_design_shape() -> None:
    event = Event.create(7, {"price": 101}, ts=1.5)
    assert json.loads(event.json) == {"id": 7, "data": {"price": 101}, "ts": 1.5}


async def test_ids_count_from_one_and_reads_follow_the_cursor() -> None:
    log = MemoryLog(log_size=10)
    await fill(log, 5)
    assert log.last_id == 5 and log.published == 5
    assert ids(log.read(0)) == [1, 2, 3, 4, 5]
    assert ids(log.read(3)) == [4, 5]
    page = log.read(5)
    assert page.events == () and page.last_id == 5 and not page.gap


async def test_empty_log_has_no_gap_at_zero() -> None:
    page = MemoryLog().read(0)
    assert page.events == () and page.last_id == 0 and not page.gap


async def test_log_is_bounded_and_a_dropped_cursor_is_a_gap() -> None:
    log = MemoryLog(log_size=3)
    await fill(log, 10)
    assert len(log) == 3
    page = log.read(2)
    assert page.gap and ids(page) == [8, 9, 10] and page.oldest_id == 8
    assert not log.read(7).gap and ids(log.read(7)) == [8, 9, 10]
    assert log.read(6).gap


async def test_cursor_beyond_last_id_is_a_gap_after_restart() -> None:
    log = MemoryLog()
    await fill(log, 2)
    page = log.read(500)
    assert page.gap and ids(page) == [1, 2] and page.last_id == 2


async def test_wait_returns_as_soon_as_an_event_is_published() -> None:
    log = MemoryLog()
    waiter = asyncio.create_task(log.wait(0, timeout_s=5))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    await log.publish("hello")
    page = await asyncio.wait_for(waiter, 1)
    assert ids(page) == [1]


async def test_wait_times_out_with_an_empty_page() -> None:
    log = MemoryLog()
    page = await log.wait(0, timeout_s=0.05)
    assert page.events == () and not page.gap


async def test_wait_on_a_stale_cursor_answers_at_once_with_a_gap() -> None:
    log = MemoryLog()
    await fill(log, 1)
    page = await asyncio.wait_for(log.wait(99, timeout_s=30), 1)
    assert page.gap


async def test_subscription_overflows_instead_of_blocking_the_publisher() -> None:
    log = MemoryLog(queue_size=2)
    with log.subscribe() as slow, log.subscribe() as fast:
        for i in range(5):
            await log.publish(i)
            if i < 4:
                assert (await fast.get()).id == i + 1
        assert slow.overflowed.is_set()
        assert await slow.get() is None
        assert (await fast.get()).id == 5
    assert log.subscribers == 0


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError):
        MemoryLog(log_size=0)
    with pytest.raises(ValueError):
        MemoryLog(queue_size=0)
