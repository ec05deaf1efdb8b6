"""A picture of a demo page, taken in the run, for the notebook beside its IFrame.

An IFrame shows a live page only while a kernel runs: on GitHub, nbviewer or in a printed book it
is a blank box. So each lesson that embeds a demo also opens the same page in headless Chromium
(Debian's ``chromium``, driven by Playwright; never a downloaded browser), does what makes the
page worth looking at — usually publishes an event — waits until the page *shows* it, and takes a
PNG that the cell displays.

    from labserver.screenshot import screenshot

    path = await screenshot(srv.url + "/sse.html", "screenshots/02_sse.png",
                            after_load=publish_one)

Where the picture goes: the committed file ``path`` is written only when the environment
variable ``LABSERVER_SCREENSHOTS=write`` is set (``make notebooks`` sets it). Any other run —
a learner's, nbval's in ``make test``, ``make claims`` — takes the picture into a temporary file
and returns *that* path, so the cell shows this run's page and the clone stays clean.

Waiting on its own page, never on the server's counters: before ``after_load`` runs, the page
must be connected — for the demo pages labserver serves (``sse.html``, ``ws.html``,
``socketio.html``, ``chat.html``) the page's own readyState or socket id says so (``READY``);
another page can pass ``ready=`` (a JavaScript expression). In a live JupyterLab the lesson's
IFrame is connected too, so "a page is online" says nothing about *this* page.

``after_load`` is an ``async`` function called once the page is ready; it may take one argument,
the Playwright page (for example to read the socket id the page shows, and whisper to it).
Whatever text it returns is waited for in the page before the picture is taken, so a screenshot
never shows a page that has not yet received the event.

Where Chromium or Playwright is missing (a learner's laptop), the PNG committed with the lesson
is left as it is and its path returned, with a warning that says so: the notebook still shows
the demo, as it looked in the last full run, not in this one. Chromium is started by
:mod:`labserver.browser`, as everywhere in labserver.
"""

from __future__ import annotations

import atexit
import inspect
import os
import shutil
import tempfile
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .browser import CHROMIUM_ARGS, BrowserMissing, chromium, find_chromium

__all__ = ["CHROMIUM_ARGS", "READY", "SCREENSHOTS_ENV", "WAIT_TIMEOUT_S", "find_chromium",
           "output_path", "ready_expression", "screenshot", "writes_committed"]

#: How long a page may take to get ready, and then to show the text it is waited for (s). Each
#: wait ends as soon as the page is there; the bound is for a machine under load (two test
#: workers on two cores, or a live JupyterLab beside the kernel).
WAIT_TIMEOUT_S = 30.0

#: ``LABSERVER_SCREENSHOTS=write``: save pictures at the committed path (``make notebooks``).
SCREENSHOTS_ENV = "LABSERVER_SCREENSHOTS"

#: What "connected" looks like in each demo page labserver serves: a JavaScript expression
#: that is true once the page's own connection is open.
READY = {
    "sse.html": "document.getElementById('state')?.textContent === 'OPEN'",
    "ws.html": "(document.getElementById('state')?.textContent || '').startsWith('OPEN')",
    "socketio.html": "document.getElementById('state')?.textContent === 'connected'",
    "chat.html": "!['', 'not connected'].includes("
                 "document.getElementById('sid')?.textContent ?? '')",
}

_temporary: list[str] = []


def writes_committed() -> bool:
    """Whether this run saves pictures at their committed paths (``LABSERVER_SCREENSHOTS=write``).
    """
    return os.environ.get(SCREENSHOTS_ENV, "").strip().lower() == "write"


def output_path(path: str | Path) -> Path:
    """Where a picture meant for ``path`` is saved in this run: ``path`` itself when
    :func:`writes_committed`, else a file of the same name in this process's temporary folder
    (removed when the process ends; the notebook has read the picture by then)."""
    target = Path(path)
    if writes_committed():
        target.parent.mkdir(parents=True, exist_ok=True)
        return target
    if not _temporary:
        _temporary.append(tempfile.mkdtemp(prefix="labserver-screenshots-"))
        atexit.register(shutil.rmtree, _temporary[0], ignore_errors=True)
    return Path(_temporary[0]) / target.name


def ready_expression(url: str) -> str | None:
    """The :data:`READY` expression for a demo page's URL, or ``None`` for another page."""
    return READY.get(urlsplit(url).path.rsplit("/", 1)[-1])


async def screenshot(
    url: str,
    path: str | Path,
    *,
    after_load: Callable[..., Awaitable[str | None]] | None = None,
    ready: str | None = None,
    width: int = 900,
    height: int = 520,
) -> Path:
    """Open ``url`` in headless Chromium, wait until the page is connected (``ready``, by
    default :data:`READY` for a demo page; ``ready=""`` waits for nothing), run ``after_load``
    (given the page if it takes an argument), wait for the text it returns to appear in the
    page, and save a PNG of the viewport.

    Returns the PNG's path: ``path`` under ``LABSERVER_SCREENSHOTS=write``, else a temporary
    file (see :func:`output_path`). Without Chromium or Playwright nothing is taken: ``path``
    (the committed picture, if any) is returned as it is, with a warning that says so.
    """
    target = output_path(path)
    ready = ready if ready is not None else ready_expression(url)
    try:
        async with chromium() as browser:
            page = await browser.new_page(viewport={"width": width, "height": height})
            await page.goto(url, wait_until="load")
            if ready:
                await _wait(page, f"() => Boolean({ready})", None,
                            f"{url} was not ready ({ready})")
            text = await _call(after_load, page) if after_load is not None else None
            if text:
                await _wait(page, "t => document.body.innerText.includes(t)", text,
                            f"{url} never showed {text!r}")
            await page.screenshot(path=str(target))
    except BrowserMissing as missing:
        warnings.warn(f"{missing}: {path} is the picture committed with the lesson, from its "
                      "last full run, not this run's page", stacklevel=2)
        return Path(path)
    return target


async def _call(after_load: Callable[..., Awaitable[str | None]], page: Any) -> str | None:
    """``after_load()`` or ``after_load(page)``, whichever it takes."""
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                  inspect.Parameter.VAR_POSITIONAL)
    try:
        parameters = inspect.signature(after_load).parameters.values()
    except (TypeError, ValueError):
        parameters = ()  # type: ignore[assignment]
    takes_page = any(p.kind in positional for p in parameters)
    return await (after_load(page) if takes_page else after_load())


async def _wait(page: Any, expression: str, arg: Any, message: str) -> None:
    """Wait for ``expression`` in ``page``; on timeout, raise ``TimeoutError(message)`` with the
    end of the page's visible text, where the demo pages log what happened (a refused
    connection, an error line)."""
    from playwright.async_api import TimeoutError as PlaywrightTimeout

    try:
        await page.wait_for_function(expression, arg=arg, timeout=WAIT_TIMEOUT_S * 1000)
    except PlaywrightTimeout:
        shown = " ".join((await page.inner_text("body")).split())
        raise TimeoutError(f"{message} within {WAIT_TIMEOUT_S:.0f} s; the page ends with: "
                           f"…{shown[-300:]}") from None
