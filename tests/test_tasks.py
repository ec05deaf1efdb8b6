"""labserver.tasks: a background task ends with its block; cancel_all waits for every task."""

from __future__ import annotations

import asyncio

from labserver.tasks import background, cancel_all


async def test_a_background_task_runs_until_its_block_ends_then_is_cancelled() -> None:
    ticks: list[int] = []

    async def tick() -> None:
        while True:
            ticks.append(len(ticks))
            await asyncio.sleep(0.01)

    async with background(tick(), name="ticker") as task:
        await asyncio.sleep(0.05)
        assert not task.done() and task.get_name() == "ticker"
    assert task.cancelled() and ticks
    seen = len(ticks)
    await asyncio.sleep(0.03)
    assert len(ticks) == seen  # nothing runs after the block


async def test_cancel_all_waits_for_each_task_and_raises_none_of_their_errors() -> None:
    async def fails() -> None:
        raise RuntimeError("a task that failed before the end")

    failed = asyncio.create_task(fails())
    await asyncio.sleep(0)
    sleeping = asyncio.create_task(asyncio.sleep(10))
    await cancel_all([failed, sleeping])
    assert failed.done() and sleeping.cancelled()
