"""The private tier (labserver/_fast): its canary, and that nothing else reads private parts.

:func:`labserver._fast.problems` checks every undocumented part of aiohttp, python-engineio,
python-socketio and CPython that the tier relies on. An upgrade that renames one fails here,
with the package and its version in the message, rather than somewhere in a taken-over
connection; the tests below show that each kind of check can fail. The last test reads the
source: outside ``labserver/_fast`` no module reads a private attribute of anything but itself.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.metadata
import platform
import sys
from pathlib import Path

import aiohttp
import pytest
import socketio
from engineio.async_drivers import aiohttp as engineio_aiohttp

from labserver import _fast
from labserver._fast import aiohttp_private

PACKAGE = Path(_fast.__file__).resolve().parent.parent


def test_the_private_parts_labserver_reads_are_there() -> None:
    problems = _fast.problems()
    assert not problems, "\n".join(problems)


def test_a_missing_aiohttp_part_is_named_with_the_aiohttp_version(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The check can fail: without ``_make_server`` on the runner, it says so."""
    monkeypatch.delattr(aiohttp.web_runner.AppRunner, aiohttp_private.MAKE_SERVER)
    assert _fast.problems() == [f"aiohttp {aiohttp.__version__} (labserver was checked with "
                                f"{aiohttp_private.CHECKED_WITH}): AppRunner has no _make_server"]


def test_a_missing_engineio_part_is_named_with_its_version(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def call(self: object, environ: dict) -> None:  # a driver that keeps no socket
        return None

    monkeypatch.setattr(engineio_aiohttp.WebSocket, "__call__", call)
    version = importlib.metadata.version("python-engineio")
    assert _fast.problems() == [f"python-engineio {version} (labserver was checked with "
                                f"{_fast.CHECKED_WITH['python-engineio']}): the aiohttp "
                                "driver's WebSocket keeps no _sock"]


def test_a_missing_socketio_hook_is_named_with_its_version(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(socketio.AsyncServer, "_handle_eio_message")
    (problem,) = _fast.problems()
    assert problem.startswith(f"python-socketio {importlib.metadata.version('python-socketio')} ")
    assert problem.endswith("AsyncServer has no _handle_eio_message")


def test_cpython_and_the_platform_are_checked_too(monkeypatch: pytest.MonkeyPatch) -> None:
    class Queue:  # an asyncio.Queue that keeps its waiters elsewhere
        pass

    monkeypatch.setattr(asyncio, "Queue", Queue)
    monkeypatch.setattr(sys, "platform", "win32")
    assert _fast.problems() == [
        f"CPython {platform.python_version()} (labserver was checked with "
        f"{_fast.CHECKED_WITH['CPython']}): asyncio.Queue has no _getters",
        "platform win32: labserver's private tier was tested on linux and darwin only"]


@pytest.mark.parametrize("package", ["aiohttp", "python-engineio", "python-socketio"])
def test_the_pinned_versions_are_the_ones_checked(package: str) -> None:
    installed = importlib.metadata.version(package)
    assert installed == _fast.CHECKED_WITH[package], (
        f"{package} {installed} is installed; labserver/_fast was checked with "
        f"{_fast.CHECKED_WITH[package]}: read it again against this version, then update "
        "CHECKED_WITH")
    assert aiohttp_private.CHECKED_WITH == _fast.CHECKED_WITH["aiohttp"]


def test_the_python_is_the_one_checked() -> None:
    assert platform.python_version().startswith(_fast.CHECKED_WITH["CPython"] + "."), (
        "labserver/_fast reads asyncio.Queue._getters: read it again against this Python")


def private_reads(path: Path) -> list[str]:
    """``x._name`` in ``path``'s code (not on ``self`` or ``cls``, not in an annotation)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    annotations = set()
    for node in ast.walk(tree):
        for annotation in (getattr(node, "returns", None), getattr(node, "annotation", None)):
            if annotation is not None:
                annotations.update(id(n) for n in ast.walk(annotation))
    return [f"{path.name}:{node.lineno}: {ast.unparse(node)}" for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr.startswith("_")
            and not node.attr.startswith("__") and id(node) not in annotations
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))]


def test_no_private_part_is_read_outside_the_private_tier() -> None:
    modules = sorted(PACKAGE.glob("*.py"))
    assert len(modules) > 20 and not any(m.parent.name == "_fast" for m in modules)
    found = [read for module in modules for read in private_reads(module)]
    assert found == [], "read them in labserver/_fast, where the canary checks them"


def test_the_source_check_can_fail(tmp_path: Path) -> None:
    module = tmp_path / "chat.py"
    module.write_text("def own_url(request):\n    return request._transport_sockname\n")
    assert private_reads(module) == ["chat.py:2: request._transport_sockname"]
