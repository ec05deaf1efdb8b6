"""A picture of a demo page, taken in the run, for the notebook beside its IFrame.

An IFrame shows a live page only while a kernel runs: on GitHub, nbviewer or in a printed book it
is a blank box. So each lesson that embeds a demo also opens the same page in headless Chromium
(Debian's ``chromium``, driven by Playwright; never a downloaded browser), does what makes the
page worth looking at — usually publishes an event — waits until the page *shows* it, and saves a
PNG that the cell displays.

    path = await labserver.screenshot(srv.url + "/sse.html", "screenshots/02_sse.png",
                                      after_load=publish_one)

``after_load`` is an ``async`` function called once the page has loaded; whatever text it
returns (for example the id it published) is waited for in the page before the picture is
taken, so a screenshot never shows a page that has not yet received the event.

Where Chromium or Playwright is missing (a learner's laptop), the PNG committed with the lesson
is left as it is and its path returned: the notebook still shows the demo as it looked in the
last full run.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

#: The flags every headless Chromium here starts with: no sandbox (root in CI), and none of the
#: background traffic that a closed network refuses (see PITFALLS: Browsers).
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

#: How long a page may take to show the text it is waited for (s).
WAIT_TIMEOUT_S = 10.0


def find_chromium() -> str | None:
    """The path of the system's Chromium, or ``None`` when it is not installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


async def screenshot(
    url: str,
    path: str | Path,
    *,
    after_load: Callable[[], Awaitable[str | None]] | None = None,
    width: int = 900,
    height: int = 520,
) -> Path:
    """Open ``url`` in headless Chromium, run ``after_load``, wait for the text it returns to
    appear in the page, and save a PNG of the viewport at ``path`` (its folder is made).

    Returns ``path``. Without Chromium or Playwright nothing is taken and ``path`` (the
    committed picture, if any) is returned as it is.
    """
    target = Path(path)
    chromium = find_chromium()
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        return target
    if chromium is None:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        async with async_playwright() as p:
            context = await p.chromium.launch_persistent_context(
                profile, executable_path=chromium, headless=True, args=CHROMIUM_ARGS,
                viewport={"width": width, "height": height},
            )
            try:
                page = await context.new_page()
                await page.goto(url, wait_until="load")
                text = await after_load() if after_load is not None else None
                if text:
                    await page.wait_for_function(
                        "t => document.body.innerText.includes(t)", arg=text,
                        timeout=WAIT_TIMEOUT_S * 1000,
                    )
                await page.screenshot(path=str(target))
            finally:
                await context.close()
    return target
