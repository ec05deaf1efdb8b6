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


# --- per-event work once, per-client work a write ----------------------------------------


async def test_an_event_is_encoded_once_per_wire_format() -> None:
    log = MemoryLog()
    event = await log.publish({"x": 1})
    calls: list[int] = []

    def frame(e: Event) -> bytes:
        calls.append(e.id)
        return b"<" + e.json.encode() + b">"

    first = event.encoded(frame)
    assert event.encoded(frame) is first and calls == [1]
    assert first == b'<' + event.json.encode() + b'>'


async def test_forward_writes_the_queue_then_each_event_as_it_is_published() -> None:
    log = MemoryLog(queue_size=3)
    written: list[int] = []
    with log.subscribe() as sub:
        for i in range(3):  # queued before the client's replay is done: ids 1, 2, 3
            await log.publish(i)
        sub.forward(lambda e: written.append(e.id) is None, sent_through=1)  # replay sent 1
        assert written == [2, 3]
        await log.publish("live")
        assert written == [2, 3, 4] and sub.qsize() == 0
        sub.forward(lambda e: False, sent_through=4)  # a client whose socket stopped taking
        await log.publish("too many")
        assert sub.overflowed.is_set() and await sub.get() is None


async def test_long_polls_with_one_cursor_share_one_page() -> None:
    log = MemoryLog()
    await fill(log, 2)
    page = log.read(1)
    assert log.read(1) is page and page.to_bytes() is page.to_bytes()
    assert page.to_bytes() == page.to_json().encode()
    await log.publish("next")
    assert log.read(1) is not page and ids(log.read(1)) == [2, 3]


async def test_a_subscriber_or_a_held_poll_that_raises_stalls_nobody(
        caplog: pytest.LogCaptureFixture) -> None:
    """Issue 19, bug 2: one write or wake-up that raises skipped every one after it, and the
    publisher got the exception. Each is isolated now (as websockets' ``broadcast()``
    isolates each connection): logged, its subscriber dropped, every other one served."""

    def broken(event: Event) -> bool:
        raise RuntimeError("a broken write")

    def broken_wake() -> None:
        raise RuntimeError("a broken wake-up")

    log = MemoryLog()
    written: list[list[int]] = [[] for _ in range(6)]
    subs = [log.subscribe() for _ in range(11)]
    for n, sub in enumerate(subs):  # the broken ones among the good, in the set's order
        sub.forward(broken if n % 2 else lambda e, n=n: written[n // 2].append(e.id) is None)
    woken: list[str] = []
    for n in range(6):
        log.hold(broken_wake if n % 2 else lambda n=n: woken.append(f"poll {n}"))
    waiter = asyncio.ensure_future(log.wait(0, 5))
    await asyncio.sleep(0)
    event = await log.publish("for everyone")  # no exception reaches the publisher
    assert event.id == 1 and written == [[1]] * 6 and len(woken) == 3
    assert [e.id for e in (await asyncio.wait_for(waiter, 1)).events] == [1]
    assert [sub.overflowed.is_set() for sub in subs] == [bool(n % 2) for n in range(11)]
    assert "a broken write" in caplog.text and "a broken wake-up" in caplog.text
    await log.publish("and the next")
    assert written == [[1, 2]] * 6 and len(woken) == 3  # a wake-up is once
