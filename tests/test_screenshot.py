"""labserver.screenshot: a real Chromium shows a published event, and the PNG is saved."""

from __future__ import annotations

import shutil
from pathlib import Path

import labserver
from labserver.screenshot import screenshot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


async def test_screenshot_waits_for_the_published_event(srv: labserver.Server, tmp_path: Path,
                                                       chromium_path: str) -> None:
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


async def test_without_chromium_the_committed_picture_is_kept(tmp_path: Path,
                                                             monkeypatch: object) -> None:
    committed = tmp_path / "committed.png"
    committed.write_bytes(PNG_MAGIC + b"old")
    monkeypatch.setattr(shutil, "which", lambda name: None)  # type: ignore[attr-defined]
    path = await screenshot("http://127.0.0.1:9/never-opened", committed)
    assert path == committed and committed.read_bytes() == PNG_MAGIC + b"old"
