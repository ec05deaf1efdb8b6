"""The handle a notebook cell uses: ``srv = labserver.start()`` runs the server in a child process.

Why a child process: the client in the notebook and the server must not share one
interpreter lock, or the latency a lesson measures is the lock's, not the transport's.

How the child is tied to its parent: the parent holds the write end of a pipe that is the
child's standard input. The child reads it until end-of-file, which comes when the parent calls
:meth:`Server.stop` *or when the parent dies in any way* (kernel restart, crash, SIGKILL) — the
kernel closes a dead process's pipes. That works on Linux and macOS alike, unlike Linux's
``PR_SET_PDEATHSIG``. The child reads its options as the first line of that pipe (after its
imports, so that a child can be started ahead of need: :func:`keep_spare`), reports its port on
its standard output, then sends its own output to a bounded log file (``srv.log_path``), so
nothing it prints lands in a notebook cell. Under :func:`keep_spare` (a test suite) children are
forked from a :mod:`multiprocessing` fork server instead, tied the same way: the parent holds
the write end of a pipe the child reads until end-of-file, and the port comes back on another.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import logging.handlers
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any

from .children import terminate
from .counters import stats_diff
from .options import Options

#: How long ``start()`` waits for the child to answer before giving up.
START_TIMEOUT_S = 20.0
#: How long ``stop()`` waits for a clean exit before it terminates, then kills, the child.
STOP_TIMEOUT_S = 1.5
#: The child's log file is rotated past this size (one old file kept).
LOG_MAX_BYTES = 1024 * 1024

_no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Server:
    """A running labserver in a child process. Made by :func:`start`."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, options: Options,
                 log_path: str) -> None:
        self._process = process
        self.port = port
        self.options = options
        self.log_path = log_path
        host = "127.0.0.1" if options.host in ("0.0.0.0", "localhost") else options.host
        self.url = f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def browser_url(self) -> str:
        """Where a learner's browser reaches the server, always ending with ``/``.

        On a laptop that is :attr:`url`. On a JupyterHub or Binder the browser is not on the
        kernel's machine, so the page goes through jupyter-server-proxy at
        ``<JUPYTERHUB_SERVICE_PREFIX>proxy/<port>/``.
        """
        prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX")
        if prefix:
            return f"{prefix.rstrip('/')}/proxy/{self.port}/"
        return self.url + "/"

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.options.publish_token:
            headers["Authorization"] = f"Bearer {self.options.publish_token}"
        return headers

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers=self._headers())
        with _no_proxy.open(req, timeout=10) as resp:
            return json.loads(resp.read())

    def publish(self, data: Any) -> int:
        """Publish one event to every transport; returns its id."""
        return self._call("POST", "/publish", {"data": data})["id"]

    async def apublish(self, data: Any) -> int:
        """:meth:`publish` for a cell that runs clients on the kernel's loop: it never blocks it."""
        return (await self._acall("POST", "/publish", {"data": data}))["id"]

    async def _acall(self, method: str, path: str, body: Any = None) -> Any:
        import aiohttp  # the handle itself needs aiohttp only for the async calls

        async with aiohttp.ClientSession() as session, session.request(
            method, self.url + path, json=body, headers=self._headers()
        ) as resp:
            resp.raise_for_status()
            return await resp.json()

    def stats(self) -> dict[str, Any]:
        """The server's counters (``GET /stats``)."""
        return self._call("GET", "/stats")

    async def astats(self) -> dict[str, Any]:
        return await self._acall("GET", "/stats")

    def stats_since(self, before: dict[str, Any]) -> dict[str, Any]:
        """The counters of one experiment: now minus ``before`` (an earlier :meth:`stats`)."""
        return stats_diff(before, self.stats())

    def drop(self, transport: str = "all") -> int:
        """Close every open connection of a transport (``POST /drop``); returns how many."""
        return self._call("POST", "/drop", {"transport": transport})["dropped"]

    @property
    def running(self) -> bool:
        return self._process.poll() is None

    def stop(self) -> None:
        """Close every stream and socket and free the port, within about a second."""
        if self._process.stdin and not self._process.stdin.closed:
            self._process.stdin.close()  # end-of-file: the child shuts down cleanly
        try:
            self._process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            terminate(self._process, 1.0)
        if self._process.returncode == 0:  # a clean exit: its log has nothing left to tell
            for path in (self.log_path, self.log_path + ".1"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<labserver.Server {self.url} pid={self.pid} {state}>"

    def __del__(self) -> None:
        process = getattr(self, "_process", None)
        if process is not None and process.poll() is None and process.stdin:
            process.stdin.close()


def start(**options: Any) -> Server:
    """Start a labserver in a child process on a free loopback port; return once it answers."""
    opts = Options.from_kwargs(**options)
    config = {name: getattr(opts, name) for name in opts.__dataclass_fields__}
    return _spawn({"options": config}, opts)


def keep_spare(enabled: bool = True, fork: bool = True) -> None:
    """Start the next :func:`start`'s child with its imports already done (about 0.6 s of CPU
    each). A test suite that starts hundreds of servers saves that on each; it is off by
    default because in a lesson the spare would work on the other core while a cell measures.

    Where the platform has it (Linux, macOS), children are forked from one
    :mod:`multiprocessing` fork server that imported labserver once, so each start costs a fork,
    not an interpreter's imports; elsewhere (or with ``fork=False``) one spare child is kept
    warm.
    """
    global _keep_spare, _forks
    _keep_spare, _forks = enabled, None
    if not enabled:
        _close_spare()
    elif fork and "forkserver" in multiprocessing.get_all_start_methods() \
            and _main_is_safe():
        _forks = multiprocessing.get_context("forkserver")
        _forks.set_forkserver_preload(["labserver.app", "labserver.process"])


def _main_is_safe() -> bool:
    """Whether a fork server's child would import nothing of ``__main__``: it runs as
    ``python -m package`` (pytest), or ``__main__`` has no file (``python -c``, pytest-xdist's
    workers). A script's child would run the script again, as multiprocessing's children do
    (its docs: "safe importing of main module")."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None:
        return bool(spec.name.endswith(".__main__"))
    return getattr(main, "__file__", None) is None


_keep_spare = False
_spare: subprocess.Popen[bytes] | None = None
_forks: Any = None  # the fork server's context, while keep_spare() is on where it exists


def _new_child() -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "labserver.process"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C in a terminal or an interrupted cell is not its signal
    )


def _close_spare() -> None:
    global _spare
    if _spare is not None:
        if _spare.stdin:
            _spare.stdin.close()  # end-of-file before its options: the spare exits
        with contextlib.suppress(subprocess.TimeoutExpired):
            _spare.wait(STOP_TIMEOUT_S)
        _spare = None


atexit.register(_close_spare)


def _spawn(config: dict[str, Any], opts: Options) -> Server:
    global _spare
    fd, log_path = tempfile.mkstemp(prefix="labserver-", suffix=".log")
    os.close(fd)
    config["log_path"] = log_path
    if _forks is not None:
        return _fork(config, opts, log_path)
    process, _spare = _spare, None
    if process is None or process.poll() is not None:
        process = _new_child()
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(json.dumps(config).encode() + b"\n")
    process.stdin.flush()
    line = _read_line(process, START_TIMEOUT_S)
    process.stdout.close()
    if _keep_spare:
        _spare = _new_child()
    try:
        port = int(json.loads(line)["port"])
    except (ValueError, KeyError, TypeError):
        process.kill()
        process.wait()
        raise RuntimeError(f"labserver did not start; see {log_path}") from None
    return Server(process, port, opts, log_path)


def _read_line(process: subprocess.Popen[bytes], timeout_s: float) -> bytes:
    result: list[bytes] = []
    reader = threading.Thread(target=lambda: result.append(process.stdout.readline()),  # type: ignore[union-attr]
                              daemon=True)
    reader.start()
    reader.join(timeout_s)
    return result[0] if result else b""


class _Forked:
    """A child forked from the fork server, with what :class:`Server` uses of a ``Popen``: its
    ``stdin`` is the tie (closing it is the end-of-file that stops the child)."""

    def __init__(self, process: Any, tie: Any) -> None:
        self._process, self.stdin, self.pid = process, tie, process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired("labserver", timeout or 0)
        return self._process.exitcode

    def send_signal(self, signum: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _fork(config: dict[str, Any], opts: Options, log_path: str) -> Server:
    """:func:`start` through the fork server: the child gets the read end of the tie and the
    write end of its report, as the Popen child gets its stdin and stdout."""
    tie_read, tie = _forks.Pipe(duplex=False)
    report_read, report = _forks.Pipe(duplex=False)
    process = _forks.Process(target=_forked_main, args=(config, tie_read, report), daemon=True)
    process.start()
    tie_read.close()
    report.close()
    child = _Forked(process, tie)
    try:
        if not report_read.poll(START_TIMEOUT_S):
            raise EOFError
        port = int(report_read.recv()["port"])
    except (EOFError, OSError, KeyError, TypeError, ValueError):
        tie.close()
        terminate(child)  # type: ignore[arg-type]
        raise RuntimeError(f"labserver did not start; see {log_path}") from None
    finally:
        report_read.close()
    return Server(child, port, opts, log_path)  # type: ignore[arg-type]


def _forked_main(config: dict[str, Any], tie: Any, report: Any) -> None:
    """The fork server's child: a session of its own, nothing on the terminal, then
    :func:`_run_child` with the tie and the report pipe in place of stdin and stdout."""
    os.setsid()  # Ctrl-C in a terminal or an interrupted cell is not its signal
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)

    def wait_for_parent() -> None:
        with contextlib.suppress(EOFError, OSError):
            tie.recv()  # nothing is ever sent: this returns at the parent's close, or death

    def ready(port: int) -> None:
        report.send({"port": port, "pid": os.getpid()})
        report.close()

    _run_child(config, wait_for_parent, ready)


# --- the child's side -------------------------------------------------------------------


def _child_main() -> None:
    """A ``Popen`` child: its options are the first line of stdin, whose end-of-file stops it;
    its port goes to stdout, which is then sent to /dev/null."""
    line = sys.stdin.buffer.readline()  # the options: the first line the parent writes
    if not line:
        return  # a spare whose parent went away (or no longer needs it)

    def wait_for_eof() -> None:
        while sys.stdin.buffer.read(4096):
            pass

    def ready(port: int) -> None:
        sys.stdout.write(json.dumps({"port": port, "pid": os.getpid()}) + "\n")
        sys.stdout.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)  # nothing the server prints may land in a notebook cell

    _run_child(json.loads(line), wait_for_eof, ready)


def _run_child(config: dict[str, Any], wait_for_parent: Any, ready: Any) -> None:
    """Serve until ``wait_for_parent()`` returns (the parent's stop, or its death) or SIGTERM;
    ``ready(port)`` once listening; the log to ``config["log_path"]``; then exit at once."""
    from aiohttp import web

    from .app import create_app, serve

    log_path = config["log_path"]
    handler = logging.handlers.RotatingFileHandler(log_path, maxBytes=LOG_MAX_BYTES,
                                                   backupCount=1)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)

    def make_app() -> web.Application:
        return create_app(**config["options"])

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def watch_parent() -> None:
            try:
                wait_for_parent()
            finally:
                loop.call_soon_threadsafe(stop.set)

        threading.Thread(target=watch_parent, daemon=True).start()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await serve(make_app(), stop, ready)

    started = time.monotonic()
    asyncio.run(main())
    logging.getLogger("labserver").info("stopped after %.1f s", time.monotonic() - started)
    # Every socket is closed and the log written: skip the interpreter's teardown of a few
    # hundred modules (about 0.15 s, most of a stop; a test suite stops hundreds of servers).
    logging.shutdown()
    os._exit(0)


if __name__ == "__main__":
    _child_main()
