"""One headless Chromium for every tool that opens a page: screenshots, measurements, tests.

Plumbing, not a lesson. A lesson's picture (:mod:`labserver.screenshot`), a measurement in a
real browser (:func:`labserver.production.visit`, :func:`labserver.production.
chromium_poll_request`), a driven JupyterLab (:mod:`labserver.labdriver`), the benchmarks and
the browser tests all start Chromium the same way, here:

* the system's Chromium (Debian's ``chromium``; :func:`find_chromium`), driven by Playwright —
  never a browser Playwright downloads, so a closed network and a locked-down machine work;
* :data:`CHROMIUM_ARGS`, the flags that keep it quiet on such a network;
* a fresh profile in a temporary folder (Playwright's ``launch()`` makes and removes it): no
  cookie, cache or service worker of one run reaches the next;
* closed when the ``with`` block ends, every page and stream with it.

:func:`chromium` is the ``async with`` form (a notebook cell, the kernel's loop);
:func:`chromium_sync` the ``with`` form (pytest's sync tests, JupyterLab's driver). Both give a
Playwright ``Browser``: ``new_page()`` for one page, ``new_context()`` for pages that must not
share cookies (two users). Without Chromium or Playwright both raise :class:`BrowserMissing`.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

#: The flags every headless Chromium here starts with: no sandbox (root in CI), and none of the
#: background traffic that a closed network refuses (see PITFALLS: Browsers).
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


class BrowserMissing(RuntimeError):
    """Chromium or Playwright is not installed; the message says how to install it."""


def find_chromium() -> str | None:
    """The path of the system's Chromium, or ``None`` when it is not installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _executable(executable: str | None) -> str:
    found = executable or find_chromium()
    if found is None:
        raise BrowserMissing("Chromium is not installed (apt-get install chromium)")
    return found


def _launch_options(executable: str | None, args: Sequence[str]) -> dict[str, Any]:
    return {"executable_path": _executable(executable), "headless": True,
            "args": [*CHROMIUM_ARGS, *args]}


@contextlib.asynccontextmanager
async def chromium(executable: str | None = None, *,
                   args: Sequence[str] = ()) -> AsyncIterator[Any]:
    """``async with chromium() as browser:`` a headless Chromium (Playwright's async
    ``Browser``) with :data:`CHROMIUM_ARGS` and ``args``, closed after. ``executable`` defaults
    to :func:`find_chromium`."""
    options = _launch_options(executable, args)
    try:
        from playwright.async_api import async_playwright
    except ImportError as error:
        raise BrowserMissing("Playwright is not installed (pip install playwright)") from error
    async with async_playwright() as p:
        browser = await p.chromium.launch(**options)
        try:
            yield browser
        finally:
            await browser.close()  # every page, and every stream a page opened, ends here


@contextlib.contextmanager
def chromium_sync(executable: str | None = None, *, args: Sequence[str] = ()) -> Iterator[Any]:
    """``with chromium_sync() as browser:`` the same with Playwright's sync API."""
    options = _launch_options(executable, args)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as error:
        raise BrowserMissing("Playwright is not installed (pip install playwright)") from error
    with sync_playwright() as p:
        browser = p.chromium.launch(**options)
        try:
            yield browser
        finally:
            browser.close()
