"""The handle: a server in a child process that starts fast, stops fast and dies with its parent."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

import aiohttp
import pytest

import labserver


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def pid_is_gone(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_start_returns_a_server_that_answers() -> None:
    with labserver.start() as srv:
        assert srv.url == f"http://127.0.0.1:{srv.port}"
        assert srv.browser_url == srv.url + "/"
        assert srv.pid != os.getpid() and srv.running
        assert srv.stats()["events"]["last_id"] == 0
    assert not srv.running and port_is_free(srv.port)


def test_browser_url_goes_through_the_hub_proxy(monkeypatch) -> None:
    with labserver.start() as srv:
        monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/ada/")
        assert srv.browser_url == f"/user/ada/proxy/{srv.port}/"


async def test_stop_closes_held_requests_within_about_a_second() -> None:
    srv = labserver.start()
    async with aiohttp.ClientSession() as session:
        held = asyncio.create_task(session.get(srv.url + "/long-poll?timeout=60"))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        await asyncio.get_running_loop().run_in_executor(None, srv.stop)
        assert time.monotonic() - started < 1.6
        try:
            await asyncio.wait_for(held, 2)
        except (TimeoutError, aiohttp.ClientError):
            pass
    assert port_is_free(srv.port) and not srv.running


PARENT = """
import json, sys, time, labserver
srv = labserver.start()
print(json.dumps({"pid": srv.pid, "port": srv.port}), flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("how", ["popen", "forked"])
def test_a_killed_parent_leaves_no_server_behind(how: str) -> None:
    """A kernel restart kills the parent: its server goes too, started as a plain child or
    forked from the fork server of keep_spare() (which dies with the parent as well)."""
    code = PARENT if how == "popen" else \
        ("import labserver.process\nlabserver.process.keep_spare()\n"
         "assert labserver.process._forks is not None\n" + PARENT)
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        child = json.loads(parent.stdout.readline())
        assert not port_is_free(child["port"])
        parent.send_signal(signal.SIGKILL)  # what a kernel restart does to the kernel
        parent.wait(5)
        assert pid_is_gone(child["pid"], within_s=5)
        assert port_is_free(child["port"])
    finally:
        parent.kill()
        parent.wait()


def test_the_server_writes_nothing_to_the_parents_output() -> None:
    code = "import labserver\nwith labserver.start() as s: s.publish(1); s.stats()\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    assert out.returncode == 0 and out.stdout == b"" and out.stderr == b""


def test_a_spare_child_serves_the_next_start_and_exits_when_dropped() -> None:
    """keep_spare(): the next start() uses a child whose imports are done; the spare left over
    exits at end-of-file, before it ever reads options."""
    from labserver import process

    was = process._keep_spare
    process.keep_spare(True, fork=False)
    try:
        with labserver.start() as first:
            spare = process._spare
            assert spare is not None and spare.poll() is None
            with labserver.start() as second:
                assert second.pid == spare.pid and second.pid != first.pid
                assert second.stats()["events"]["last_id"] == 0
            left = process._spare
            assert left is not None and left.pid != spare.pid
        process.keep_spare(False)
        # within 10 s: a spare still doing its imports on a loaded machine reads its EOF after
        assert process._spare is None and pid_is_gone(left.pid, within_s=10)
    finally:
        process.keep_spare(was)


def test_forked_children_serve_and_stop_with_their_tie() -> None:
    """keep_spare() where a fork server exists (pytest runs as ``python -m pytest``, its xdist
    workers with no ``__main__`` file): each
    start() forks a child of its own from the server that imported labserver once; closing
    the tie (stop(), or the parent's death) ends it cleanly, and a failed start says so."""
    from labserver import process

    was = process._keep_spare
    process.keep_spare(True)
    try:
        assert process._forks is not None, "pytest's __main__ is a package's, or has no file"
        with labserver.start() as first, labserver.start(log_size=3) as second:
            assert first.pid != second.pid and os.getpgid(first.pid) == first.pid  # own session
            assert first.publish({"n": 1}) == 1 and second.stats()["events"]["last_id"] == 0
            pid = first.pid
        assert pid_is_gone(pid, within_s=5) and first._process.returncode == 0
    finally:
        process.keep_spare(was)
