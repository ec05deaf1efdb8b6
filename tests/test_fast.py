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
from engineio.async_drivers import aiohttp as engineio_aiohttp

from labserver import _fast
from labserver._fast import aiohttp_private

PACKAGE = Path(_fast.__file__).resolve().parent.parent


def test_the_private_parts_labserver_reads_are_there() -> None:
    problems = _fast.problems()
    assert not problems, "\n".join(problems)


def test_a_missing_aiohttp_part_is_named_with_the_aiohttp_version(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The check can fail: a connection without ``_messages`` (requests parsed, not yet
    handled), and it says so."""
    handler = aiohttp.web_protocol.RequestHandler
    monkeypatch.setattr(handler, "__slots__",
                        tuple(n for n in handler.__slots__ if n != "_messages"))
    assert _fast.problems() == [f"aiohttp {aiohttp.__version__} (labserver was checked with "
                                f"{aiohttp_private.CHECKED_WITH}): RequestHandler has no "
                                "_messages"]


def test_a_missing_engineio_part_is_named_with_its_version(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def call(self: object, environ: dict) -> None:  # a driver that keeps no socket
        return None

    monkeypatch.setattr(engineio_aiohttp.WebSocket, "__call__", call)
    version = importlib.metadata.version("python-engineio")
    assert _fast.problems() == [f"python-engineio {version} (labserver was checked with "
                                f"{_fast.CHECKED_WITH['python-engineio']}): the aiohttp "
                                "driver's WebSocket keeps no _sock"]


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


#: Names with a leading underscore that their library documents as public API.
DOCUMENTED = {"os._exit"}  # "Exit the process ... without calling cleanup handlers" (os docs)


def private_reads(path: Path) -> list[str]:
    """``x._name`` in ``path``'s code (not on ``self`` or ``cls``, not in an annotation, not
    one of :data:`DOCUMENTED`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    annotations = set()
    for node in ast.walk(tree):
        for annotation in (getattr(node, "returns", None), getattr(node, "annotation", None)):
            if annotation is not None:
                annotations.update(id(n) for n in ast.walk(annotation))
    return [f"{path.name}:{node.lineno}: {ast.unparse(node)}" for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr.startswith("_")
            and not node.attr.startswith("__") and id(node) not in annotations
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
            and ast.unparse(node) not in DOCUMENTED]


def test_no_private_part_is_read_outside_the_private_tier() -> None:
    modules = sorted(PACKAGE.glob("*.py"))
    assert len(modules) > 20 and not any(m.parent.name == "_fast" for m in modules)
    found = [read for module in modules for read in private_reads(module)]
    assert found == [], "read them in labserver/_fast, where the canary checks them"


def test_the_source_check_can_fail(tmp_path: Path) -> None:
    module = tmp_path / "chat.py"
    module.write_text("def own_url(request):\n    return request._transport_sockname\n")
    assert private_reads(module) == ["chat.py:2: request._transport_sockname"]


def test_the_fast_tier_turns_itself_off_when_a_part_is_missing(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 19, item 6: a private part missing (a new python-engineio, say) turns the tier
    off, said once in the server's log; the app is then served by public APIs alone."""
    from labserver.app import create_app
    from labserver.keys import FAST

    missing = "python-engineio 9.0 (labserver was checked with 4.15.1): no _sock"
    monkeypatch.setattr(_fast, "problems", lambda: [missing])
    with caplog.at_level("INFO", logger="labserver"):
        app = create_app(fast=True)
    assert app[FAST] is False
    (said,) = [r.getMessage() for r in caplog.records if "fast tier" in r.getMessage()]
    assert missing in said and "public APIs" in said
    assert create_app(fast=False)[FAST] is False


async def test_every_transport_is_served_with_the_fast_tier_off() -> None:
    """``fast=False``: short and long polling, SSE, /ws and Socket.IO each deliver an event,
    count their bytes at the socket, and /ws keeps its close codes (1003, 1007)."""
    import json as json_module

    import conftest

    from labserver.app import create_app
    from labserver.keys import COUNTERS, FAST

    app = create_app(fast=False)
    assert app[FAST] is False
    async with conftest.serving(app) as port, aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{port}"
        sse, ws, sio, news = await conftest.open_every_stream(session, url, "?after=0")
        held = asyncio.ensure_future(session.get(url + "/long-poll?after=0&timeout=20"))
        counters = app[COUNTERS]
        await conftest.wait_until_open(counters, long_polls=1)
        async with session.post(url + "/publish", json={"data": "public"}) as resp:
            assert resp.status == 200
        assert [e["id"] for e in (await (await asyncio.wait_for(held, 2)).json())["events"]] == [1]
        async with session.get(url + "/poll?after=0") as resp:
            assert (await resp.json())["last_id"] == 1
        assert json_module.loads((await asyncio.wait_for(ws.receive(), 2)).data)["id"] == 1
        await ws.send_str('{"echo": 7}')
        assert json_module.loads((await asyncio.wait_for(ws.receive(), 2)).data) == {"echo": 7}
        assert (await asyncio.wait_for(news, 2))["id"] == 1
        while await asyncio.wait_for(sse.content.readline(), 2) != b"id: 1\n":
            pass
        for payload, code in ((b"\x00", 1003), ("{not json", 1007)):
            other = await session.ws_connect(url + "/ws")
            await (other.send_bytes(payload) if isinstance(payload, bytes)
                   else other.send_str(payload))
            await asyncio.wait_for(other.receive(), 2)
            assert other.close_code == code
        await sio.disconnect()
        await ws.close()
        sse.close()
    for name in ("poll", "long_poll", "sse", "ws", "socketio"):
        assert counters[name].bytes_in > 0 and counters[name].bytes_out > 0, name
