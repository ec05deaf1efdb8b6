"""aiohttp's private parts that labserver reads (labserver/aiohttp_private.py) are still there.

An aiohttp upgrade that renames one of them fails here, with the aiohttp version in the message,
rather than somewhere in a taken-over connection.
"""

from __future__ import annotations

import aiohttp
import pytest

from labserver._fast import aiohttp_private


def test_the_private_parts_labserver_reads_are_there() -> None:
    problems = aiohttp_private.problems()
    assert not problems, "\n".join(problems)


def test_a_missing_part_is_named_with_the_aiohttp_version(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check can fail: without ``_make_server`` on the runner, it says so."""
    monkeypatch.delattr(aiohttp.web_runner.AppRunner, aiohttp_private.MAKE_SERVER)
    problems = aiohttp_private.problems()
    assert problems == [f"aiohttp {aiohttp.__version__} (labserver was checked with "
                        f"{aiohttp_private.CHECKED_WITH}): AppRunner has no _make_server"]


def test_the_pinned_aiohttp_is_the_one_checked() -> None:
    assert aiohttp.__version__ == aiohttp_private.CHECKED_WITH, (
        f"aiohttp {aiohttp.__version__} is installed; labserver/aiohttp_private.py was checked "
        f"with {aiohttp_private.CHECKED_WITH}: read it again against this version, then update "
        "CHECKED_WITH")
