"""labserver.children: the plumbing every child process of a lesson or a test relies on.

What the callers (process, nginx, cluster, labdriver, the tests' Jupyter server) rely on: a free
port can be bound, a wait ends early when the child has died, a stop always returns (SIGKILL
after a SIGTERM that is ignored), and a watchdog stops its child when its pipe closes.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from labserver.children import (
    free_port,
    listening,
    release,
    terminate,
    wait_until,
    watchdog,
)

#: A child that ignores SIGTERM and says so once it does, then sleeps.
STUBBORN = ("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)")


def test_a_free_port_can_be_bound_and_listening_tells() -> None:
    port = free_port()
    assert not listening(port)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        assert listening(port)


def test_wait_until_gives_up_at_once_when_the_child_has_exited() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    started = time.monotonic()
    assert not wait_until(lambda: False, 5, process=child)
    assert time.monotonic() - started < 1
    assert wait_until(lambda: True, 5)


def test_terminate_kills_a_child_that_ignores_sigterm() -> None:
    child = subprocess.Popen([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"
    started = time.monotonic()
    terminate(child, 0.3)
    assert child.returncode is not None and child.returncode < 0  # ended by a signal: SIGKILL
    assert time.monotonic() - started < 5
    terminate(child)  # an ended child: nothing to do


def test_a_watchdog_stops_its_child_when_its_pipe_closes() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    guard = watchdog(child.pid)
    try:
        release(guard, 5)  # as when this process ends: the pipe closes, the child gets SIGTERM
        assert child.wait(5) < 0
    finally:
        terminate(child)
