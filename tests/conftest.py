"""Shared fixtures: a real labserver on loopback, a real Chromium, a real redis-server.

Browser and Redis tests skip with a reason where Chromium or redis-server is missing, but
fail under ``CI=true``: CI must run them.
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nbval.plugin import IPyNbFile

import labserver
import labserver.process
from labserver.app import serving  # noqa: F401 (tests call conftest.serving)
from labserver.browser import chromium_sync, find_chromium  # one home for launching Chromium
from labserver.children import answers, free_port, terminate, wait_until
from labserver.options import fast_by_default  # the tier as the environment says now

# Hundreds of tests start a server: fork each from a fork server whose imports are done
# (labserver.process.keep_spare; a warm spare child where there is no fork server).
labserver.process.keep_spare()

# A test run (nbval's kernels inherit this environment) never rewrites the committed
# notebooks/screenshots/: only `make notebooks` sets LABSERVER_SCREENSHOTS=write.
os.environ.pop("LABSERVER_SCREENSHOTS", None)


def require(tool: str, path: str | None) -> str:
    """The path of a tool a test needs: skip without it, or fail under CI=true."""
    if path:
        return path
    message = f"{tool} is not installed (apt-get install {tool})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI must run this test")
    pytest.skip(message)


async def wait_for_stat(srv: labserver.Server, name: str, value: int, *, transport: str,
                        timeout_s: float = 5) -> None:
    """Wait until the counter ``transport``.``name`` reads ``value`` (tests import it)."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout_s
    while (await srv.astats())["transports"][transport][name] != value:
        assert time.monotonic() < deadline, f"{transport} {name} never became {value}"
        await asyncio.sleep(0.02)


async def timed_publishes(srv: labserver.Server, events: int, payload: Any) -> list[float]:
    """Publish ``events`` events over HTTP, one after another; how long each publish took (s)."""
    import time

    import aiohttp

    publish_s = []
    async with aiohttp.ClientSession() as session:
        for _ in range(events):
            started = time.perf_counter()
            async with session.post(srv.url + "/publish", json={"data": payload}) as resp:
                assert resp.status == 200
            publish_s.append(time.perf_counter() - started)
    return publish_s


@pytest.fixture
def srv() -> Iterator[labserver.Server]:
    """A fresh labserver in a child process, stopped after the test."""
    with labserver.start() as server:
        yield server


@pytest.fixture
def make_server() -> Iterator[Any]:
    """Start servers with options: ``make_server(log_size=3)``; all stopped after the test."""
    started: list[labserver.Server] = []

    def make(**options: Any) -> labserver.Server:
        server = labserver.start(**options)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def chromium_path() -> str:
    return require("chromium", find_chromium())


@pytest.fixture
def browser_page(chromium_path: str) -> Iterator[Any]:
    """A Playwright page in Debian's headless Chromium (never a downloaded browser)."""
    with chromium_sync(chromium_path) as browser:
        yield browser.new_page()


@pytest.fixture(scope="session")
def redis_server_path() -> str:
    return require("redis-server", shutil.which("redis-server"))


@pytest.fixture(scope="session")
def nginx_path() -> str:
    from labserver.nginx import find_nginx

    return require("nginx", find_nginx())


@pytest.fixture(scope="session")
def loopback_clients() -> list[str]:
    """Client addresses 127.0.0.2 … 127.0.0.17 (Linux: all of 127.0.0.0/8 is loopback; macOS
    has only 127.0.0.1 unless aliased): skip without them, or fail under CI=true."""
    import socket

    addresses = [f"127.0.0.{n}" for n in range(2, 18)]
    try:
        for address in addresses:
            with socket.socket() as sock:
                sock.bind((address, 0))
    except OSError as exc:
        message = f"cannot bind a client to {address}: {exc} (macOS: sudo ifconfig lo0 alias …)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; CI must run this test")
        pytest.skip(message)
    return addresses


#: Notebooks that need a tool besides Python, and the tool.
NOTEBOOK_NEEDS = {"06_compare.ipynb": ("chromium",),  # measures a browser's request
                  "07_scale_out.ipynb": ("redis-server", "nginx"),
                  "08_production.ipynb": ("nginx", "chromium")}


def tool_found(tool: str) -> bool:
    """Whether a tool is installed (Debian's nginx is in /usr/sbin, off a user's PATH)."""
    from labserver.nginx import find_nginx

    return bool(find_nginx() if tool == "nginx" else shutil.which(tool))


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    """Deselect and skip what the fast-tier-off copies leave out (see :data:`FAST_OFF_DIR`).
    Skip a notebook whose tool is missing, with the reason. Under CI=true it runs, and fails
    on the notebook's own clear error: CI must run it."""
    fast_off_collection(config, items)
    if os.environ.get("CI", "").lower() == "true":
        return
    for item in items:
        missing = [t for t in NOTEBOOK_NEEDS.get(item.path.name, ()) if not tool_found(t)]
        if missing:
            reason = f"{' and '.join(missing)} not installed (apt-get install {' '.join(missing)})"
            item.add_marker(pytest.mark.skip(reason=reason))


def pytest_collectstart(collector: Any) -> None:
    """nbval: never compare stderr (a child process or a library warning may write there)."""
    if str(getattr(collector, "path", "")).endswith(".ipynb"):
        collector.skip_compare += ("stderr",)


@pytest.fixture
def redis_server(redis_server_path: str) -> Iterator[Any]:
    """A real redis-server with an append-only file; ``.stop()`` and ``.start()`` restart it."""
    from labserver.cluster import RedisProcess

    with tempfile.TemporaryDirectory() as directory:
        server = RedisProcess(directory, redis_server_path)
        server.start()
        try:
            yield server
        finally:
            server.stop()


class JupyterProxy:
    """A Jupyter server with jupyter-server-proxy under JupyterHub's kind of prefix."""

    base_url = "/user/ada/"

    def __init__(self) -> None:
        self.port = free_port()
        self.process: Any = None

    def url_for(self, server_port: int, path: str = "") -> str:
        """The browser-facing URL of a labserver page, through the proxy."""
        return f"http://127.0.0.1:{self.port}{self.base_url}proxy/{server_port}/{path}"

    def start(self, root_dir: str) -> None:
        import subprocess
        import sys

        self.process = subprocess.Popen(
            [sys.executable, "-m", "jupyter", "server", "--no-browser", "--allow-root",
             f"--port={self.port}", "--ServerApp.ip=127.0.0.1", "--ServerApp.port_retries=0",
             f"--ServerApp.base_url={self.base_url}", f"--ServerApp.root_dir={root_dir}",
             # loopback only, for the test's own browser: no token to carry through the pages
             "--IdentityProvider.token=", "--ServerApp.password="],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        status = f"http://127.0.0.1:{self.port}{self.base_url}api/status"
        if not wait_until(lambda: answers(status), 30, process=self.process, interval_s=0.1):
            terminate(self.process, 10)
            raise RuntimeError("jupyter server did not start")

    def stop(self) -> None:
        terminate(self.process, 10)


@pytest.fixture(scope="session")
def jupyter_proxy() -> Iterator[JupyterProxy]:
    """One Jupyter server per test worker (about 3.5 s to start), shared by every hub-proxy
    test: each reaches its own labserver through it by port."""
    with tempfile.TemporaryDirectory() as root:
        proxy = JupyterProxy()
        proxy.start(root)
        try:
            yield proxy
        finally:
            proxy.stop()


@pytest.fixture
def browser_context_factory(chromium_path: str) -> Iterator[Any]:
    """``new_page()`` → a page in a fresh browser context of one headless Chromium: each
    context has its own cookies, so two pages are two users (two sessions)."""
    with chromium_sync(chromium_path) as browser:
        yield lambda: browser.new_context().new_page()


async def open_every_stream(session: Any, url: str, ws_query: str = "") -> tuple[Any, ...]:
    """One SSE stream, one ``/ws`` socket and one Socket.IO client (over WebSocket) on the app at
    ``url``: ``(sse, ws, sio, news)``, where ``news`` is a future for the first ``news`` event."""
    import asyncio

    import socketio

    sse = await session.get(url + "/sse")
    ws = await session.ws_connect(url + "/ws" + ws_query)
    sio = socketio.AsyncClient()
    news: asyncio.Future[dict] = asyncio.get_running_loop().create_future()
    sio.on("news", lambda event: news.done() or news.set_result(event))
    await sio.connect(url, transports=["websocket"])
    return sse, ws, sio, news


async def wait_until_open(counters: Any, long_polls: int) -> None:
    """Wait (5 s at most) until ``long_polls`` long polls and one SSE, ``/ws`` and Socket.IO
    connection are open by the app's counters."""
    import asyncio

    for _ in range(250):
        seen = (counters["long_poll"].open, counters["sse"].open, counters["ws"].open,
                counters["socketio"].open)
        if seen == (long_polls, 1, 1, 1):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"open (long_poll, sse, ws, socketio) is {seen}, not "
                         f"{(long_polls, 1, 1, 1)} after 5 s")


# The fast tier off, in the same session ------------------------------------------------------
#: ``tests/fast_off/test_X_off.py`` runs ``tests/test_X.py``'s tests again with labserver's
#: private tier off (``LABSERVER_FAST=0``: every transport served by the libraries' public APIs
#: alone, as when ``_fast.problems()`` finds a private part missing), in the same pytest session
#: as everything else: one session start, and the two workers stay busy to the end.
FAST_OFF_DIR = Path(__file__).parent / "fast_off"


def fast_off_copy(module_name: str, namespace: dict[str, Any]) -> None:
    """Give a ``tests/fast_off`` module every test and fixture of ``tests/<module_name>.py``."""
    module = importlib.import_module(module_name)
    namespace.update({k: v for k, v in vars(module).items() if not k.startswith("__")})


def in_fast_off(node: Any) -> bool:
    return Path(node.path).parent == FAST_OFF_DIR


def pytest_configure(config: Any) -> None:
    config.addinivalue_line(
        "markers", "own_protocol(why): tests labserver's own RFC 6455 (the fast tier's /ws); "
        "skipped with the fast tier off, where /ws is aiohttp's WebSocketResponse")


def fast_off_collection(config: Any, items: list[Any]) -> None:
    """In the fast-tier-off copies: no browser tests but the official Socket.IO client's (the
    rest test pages, not the tier), and no test of labserver's own WebSocket protocol."""
    kept, deselected = [], []
    for item in items:
        if in_fast_off(item) and "browser" in item.name and "official_client" not in item.name:
            deselected.append(item)
            continue
        kept.append(item)
        marker = item.get_closest_marker("own_protocol")
        if marker is not None and (in_fast_off(item) or not fast_by_default()):
            item.add_marker(pytest.mark.skip(reason=f"fast tier off: {marker.args[0]}"))
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


@pytest.fixture(scope="module", autouse=True)
def fast_tier_of_module(request: Any) -> Iterator[None]:
    """``LABSERVER_FAST=0`` for a ``tests/fast_off`` module's tests: ``start()``, ``create_app()``
    and ``python -m labserver`` read it when they make their options (module scope, so that it
    is set before any fixture of the module starts a server)."""
    if not in_fast_off(request.node):
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LABSERVER_FAST", "0")
        yield


#: Lessons run again, strict nbval, with the tier off: the ones whose every claim holds there
#: (03, 03b and 04 claim labserver's own WebSocket protocol; 06 and 07 pass too, but cost 50 s).
FAST_OFF_LESSONS = FAST_OFF_DIR / "lessons.txt"


def pytest_collect_file(file_path: Path, parent: Any) -> Any:
    if file_path == FAST_OFF_LESSONS and parent.config.option.nbval:
        return FastOffLessons.from_parent(parent, path=file_path)
    return None


class FastOffLessons(pytest.File):
    """The lessons named in ``tests/fast_off/lessons.txt``, each a notebook collector whose
    kernel starts with ``LABSERVER_FAST=0`` (so every ``labserver.start()`` in it has the tier
    off); node ids ``tests/fast_off/lessons.txt::01_polling.ipynb::Cell N``."""

    def collect(self) -> Iterator[Any]:
        notebooks = Path(__file__).parent.parent / "notebooks"
        for line in self.path.read_text(encoding="utf-8").splitlines():
            name = line.split("#")[0].strip()
            if name:
                yield FastOffNotebook.from_parent(self, path=notebooks / name, name=name,
                                                  nodeid=f"{self.nodeid}::{name}")


class FastOffNotebook(IPyNbFile):  # type: ignore[misc]
    def setup(self) -> None:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("LABSERVER_FAST", "0")
            super().setup()  # the kernel inherits the environment as it starts
