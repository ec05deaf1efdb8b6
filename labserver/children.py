"""Child processes of a lesson or a test: a free port, a wait until it answers, a watchdog, a stop.

Plumbing, not a lesson: every tool that runs a server beside the notebook — labserver itself
(:mod:`labserver.process`), nginx (:mod:`labserver.nginx`), redis-server
(:class:`labserver.cluster.RedisProcess`), JupyterLab (:mod:`labserver.labdriver`) and the
tests' Jupyter server — needs the same four things, and they live here once:

* :func:`free_port` — a loopback port nobody listens on *now*. Another process can take it
  before the child binds it, so a caller that can tell (nginx's "Address already in use") picks
  again;
* :func:`wait_until` — poll a check (the port accepts: :func:`listening`; ``PING`` answers
  ``PONG``; a status page answers: :func:`answers`) until it holds, giving up early when the
  child has exited;
* :func:`watchdog` and :func:`release` — tie a child that reads no pipe to this process: the
  watchdog reads its standard input until end-of-file, which comes from :func:`release` or when
  this process dies in any way (a kernel restart, a crash, SIGKILL: the kernel closes a dead
  process's pipes), then sends the child SIGTERM. labserver's own child reads such a pipe
  itself (:mod:`labserver.process`); nginx and redis-server do not;
* :func:`terminate` — SIGTERM, a bounded wait, then SIGKILL: a stop that always returns.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable

#: A watchdog beside a child: it reads its standard input, a pipe this process holds, until
#: end-of-file — which comes from :func:`release` or when this process dies in any way (kernel
#: restart, crash, SIGKILL) — then stops the child. This is how nginx and redis-server are tied
#: to the notebook that started them, on Linux and macOS alike (no ``PR_SET_PDEATHSIG``).
WATCHDOG = """import os, signal, sys
sys.stdin.buffer.read()
try:
    os.kill(int(sys.argv[1]), signal.SIGTERM)
except OSError:
    pass
"""

#: How often :func:`wait_until` tries its check (s): quick to notice, light on the CPU.
POLL_INTERVAL_S = 0.02

_no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` that nobody listens on now (the kernel's choice for port 0)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def listening(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) == 0


def answers(url: str, timeout_s: float = 2.0) -> bool:
    """Whether ``url`` answers an HTTP GET with a success status (no proxy: loopback)."""
    try:
        with _no_proxy.open(url, timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_until(check: Callable[[], bool], timeout_s: float, *,
               process: subprocess.Popen[bytes] | None = None,
               interval_s: float = POLL_INTERVAL_S) -> bool:
    """Call ``check`` every ``interval_s`` until it returns true (then ``True``), ``timeout_s``
    passes or ``process`` has exited (then ``False``: the caller says why, with the child's log).
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        if check():
            return True
        time.sleep(interval_s)
    return False


def watchdog(pid: int) -> subprocess.Popen[bytes]:
    """Start a :data:`WATCHDOG` for the child ``pid``; :func:`release` (or this process's end)
    stops the child."""
    return subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", WATCHDOG, str(pid)],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)


def release(guard: subprocess.Popen[bytes] | None, timeout_s: float = 1.0) -> None:
    """Close a watchdog's pipe and wait for it: it has sent its SIGTERM when this returns.

    Call it while the child is not yet reaped, so that its pid cannot have been reused."""
    if guard is not None:
        assert guard.stdin is not None
        guard.stdin.close()
        try:
            guard.wait(timeout_s)
        except subprocess.TimeoutExpired:  # a watchdog too slow to go: the caller goes on
            guard.kill()
            guard.wait()


def terminate(process: subprocess.Popen[bytes] | None, timeout_s: float = 1.0, *,
              group: bool = False) -> None:
    """Stop a child: SIGTERM, up to ``timeout_s`` for it to exit, then SIGKILL (to its whole
    process group with ``group=True``: a child started with ``start_new_session=True`` and its
    own children, as nginx's master and workers). Nothing to do if it has already exited."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        if group:
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
        process.wait()
