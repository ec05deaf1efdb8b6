"""Shared fixtures: a real labserver on loopback, a real Chromium, a real redis-server.

Browser and Redis tests skip with a reason where Chromium or redis-server is missing, but
fail under ``CI=true``: CI must run them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

import labserver

CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def require(tool: str, path: str | None) -> str:
    """The path of a tool a test needs: skip without it, or fail under CI=true."""
    if path:
        return path
    message = f"{tool} is not installed (apt-get install {tool})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI must run this test")
    pytest.skip(message)


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
    return require("chromium", shutil.which("chromium") or shutil.which("chromium-browser"))


@pytest.fixture
def browser_page(chromium_path: str) -> Iterator[Any]:
    """A Playwright page in Debian's headless Chromium (never a downloaded browser)."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield context.new_page()
        finally:
            context.close()


@pytest.fixture(scope="session")
def redis_server_path() -> str:
    return require("redis-server", shutil.which("redis-server"))


def pytest_collectstart(collector: Any) -> None:
    """nbval: never compare stderr (a child process or a library warning may write there)."""
    if str(getattr(collector, "path", "")).endswith(".ipynb"):
        collector.skip_compare += ("stderr",)


class RedisServer:
    """A real redis-server on a free loopback port, with an append-only file, restartable."""

    def __init__(self, path: str, directory: str) -> None:
        import socket

        self.path, self.directory = path, directory
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: Any = None

    def start(self) -> None:
        import socket
        import subprocess
        import time

        self.process = subprocess.Popen(
            [self.path, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.directory,
             "--appendonly", "yes", "--appendfsync", "always", "--save", "",
             "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: redis flushes its append-only file and exits
            self.process.wait(10)
        self.process = None


@pytest.fixture
def redis_server(redis_server_path: str) -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer(redis_server_path, directory)
        server.start()
        try:
            yield server
        finally:
            server.stop()
