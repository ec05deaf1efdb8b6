"""labserver.screenshot: a real Chromium shows a published event, and the PNG is saved — at the
committed path only under ``LABSERVER_SCREENSHOTS=write``; it waits on its own page."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
from pathlib import Path

import pytest

import labserver
from labserver import screenshot as shots
from labserver.screenshot import screenshot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


async def test_screenshot_waits_for_the_published_event(srv: labserver.Server, tmp_path: Path,
                                                       chromium_path: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(shots.SCREENSHOTS_ENV, "write")
    published: list[int] = []

    async def publish_one() -> str:
        published.append(await srv.apublish({"note": "in-the-picture"}))
        return "in-the-picture"

    path = await screenshot(srv.url + "/sse.html", tmp_path / "shots" / "sse.png",
                            after_load=publish_one)
    assert path == tmp_path / "shots" / "sse.png"
    assert path.read_bytes().startswith(PNG_MAGIC)
    assert published == [1]
    assert (await srv.astats())["transports"]["sse"]["messages_out"] == 1


async def test_a_run_without_the_variable_leaves_the_committed_picture(
        srv: labserver.Server, tmp_path: Path, chromium_path: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """nbval, make claims, a learner: the picture is fresh but goes to a temporary file."""
    monkeypatch.delenv(shots.SCREENSHOTS_ENV, raising=False)
    committed = tmp_path / "screenshots" / "02_sse.png"
    committed.parent.mkdir()
    committed.write_bytes(PNG_MAGIC + b"committed")

    async def publish_one() -> str:
        await srv.apublish({"note": "fresh"})
        return "fresh"

    path = await screenshot(srv.url + "/sse.html", committed, after_load=publish_one)
    assert path != committed and path.name == committed.name
    assert path.read_bytes().startswith(PNG_MAGIC) and path.stat().st_size > 1000
    assert committed.read_bytes() == PNG_MAGIC + b"committed"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["02_sse.png", "screenshots"]


async def test_it_waits_for_its_own_page_not_any_page_online(
        srv: labserver.Server, tmp_path: Path, chromium_path: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A live Lab's IFrame is a second chat page online: ``after_load`` gets the page the picture
    is taken of, connected, and can address its own socket (the id the page shows)."""
    monkeypatch.delenv(shots.SCREENSHOTS_ENV, raising=False)
    import socketio

    from labserver import chat

    async def session_cookie() -> str:
        import aiohttp

        async with aiohttp.ClientSession() as http, http.get(srv.url + "/chat.html") as resp:
            return resp.cookies[chat.SESSION_COOKIE].value

    sender, bystander = socketio.AsyncClient(), socketio.AsyncClient()  # bystander: the IFrame
    for client in (sender, bystander):
        await client.connect(srv.url, namespaces=["/chat"], transports=["websocket"],
                             headers={"Cookie": f"{chat.SESSION_COOKIE}={await session_cookie()}"})
    others = {sender.get_sid("/chat"), bystander.get_sid("/chat")}
    seen: list[str] = []

    async def whisper_to_the_page(page: object) -> str:
        sid = await page.inner_text("#sid")  # type: ignore[attr-defined]
        seen.append(sid)
        ack = await sender.call("whisper", {"to": sid, "text": "to this page"}, namespace="/chat")
        assert ack["ok"], ack
        return "to this page"

    try:
        path = await screenshot(srv.url + "/chat.html", tmp_path / "05_chat.png",
                                after_load=whisper_to_the_page)
    finally:
        await asyncio.gather(sender.disconnect(), bystander.disconnect())
    assert path.read_bytes().startswith(PNG_MAGIC)
    assert len(seen) == 1 and seen[0] not in others and len(seen[0]) > 8, (seen, others)


async def test_a_page_that_never_shows_the_text_fails_with_what_it_shows(
        srv: labserver.Server, tmp_path: Path, chromium_path: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shots, "WAIT_TIMEOUT_S", 1.0)

    async def publish_nothing() -> str:
        return "never published"

    with pytest.raises(TimeoutError, match=r"never showed 'never published' within 1 s; "
                                           r"the page ends with: …"):
        await screenshot(srv.url + "/sse.html", tmp_path / "x.png", after_load=publish_nothing)


def test_the_demo_pages_have_a_ready_expression() -> None:
    assert shots.ready_expression("http://127.0.0.1:1/sse.html") == shots.READY["sse.html"]
    assert shots.ready_expression("http://h/user/a/proxy/9/chat.html?room=red") == \
        shots.READY["chat.html"]
    assert shots.ready_expression("http://127.0.0.1:1/poll.html") is None


async def test_without_chromium_the_committed_picture_is_kept(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    committed = tmp_path / "committed.png"
    committed.write_bytes(PNG_MAGIC + b"old")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.warns(UserWarning, match="Chromium is not installed .* not this run's page"):
        path = await screenshot("http://127.0.0.1:9/never-opened", committed)
    assert path == committed and committed.read_bytes() == PNG_MAGIC + b"old"


def test_a_test_run_does_not_write_the_committed_pictures() -> None:
    """conftest drops the variable, so nbval's kernels take their pictures into temp files."""
    assert os.environ.get(shots.SCREENSHOTS_ENV) is None and not shots.writes_committed()


def test_notebooks_name_a_committed_picture_only_through_screenshot() -> None:
    """Every ``"screenshots/….png"`` in a lesson's code is the path argument of ``screenshot()``
    (or of ``output_path()``, or in ``production.visit(screenshots=[…])``, which saves through
    ``output_path()``, for a picture another helper takes): a cell that writes or shows
    the committed file itself would rewrite the clone in every run, or show a stale picture."""
    wrong = []
    for notebook in sorted(NOTEBOOKS.glob("[0-9]*.ipynb")):
        cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
        for index, cell in enumerate(cells):
            source = "".join(cell["source"])
            if cell["cell_type"] != "code":
                continue
            for literal in re.finditer(r"""["']screenshots/[^"']+["']""", source):
                before = source[:literal.start()]
                if not re.search(r"\b(screenshot|output_path)\([^()]*$|\bscreenshots=\[[^\]]*$",
                                 before):
                    wrong.append(f"{notebook.name} cell {index}: {literal.group()}")
    assert not wrong, "the committed picture named outside screenshot(): " + "; ".join(wrong)
