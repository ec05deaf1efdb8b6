"""Two chores with asyncio tasks that the server's long-lived parts share.

* :func:`background` — a task that lives as long as the app: started in an aiohttp cleanup
  context, cancelled and awaited at shutdown (aiohttp's *background tasks* example);
* :func:`cancel_all` — a connection's helper tasks, cancelled and awaited when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine, Iterable
from typing import Any


@contextlib.asynccontextmanager
async def background(coroutine: Coroutine[Any, Any, Any],
                     name: str | None = None) -> AsyncIterator[asyncio.Task[Any]]:
    """``async with background(sweep()): yield`` in a cleanup context: the task runs until the
    block ends, then is cancelled and awaited."""
    task = asyncio.create_task(coroutine, name=name)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def cancel_all(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel every task and wait until each has ended (their errors are not raised here)."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
