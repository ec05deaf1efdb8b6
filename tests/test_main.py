"""``python -m labserver``: the chapter's server in a terminal, stopped by Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def run_cli(*args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "labserver", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    assert match, line
    return proc, f"http://127.0.0.1:{match.group(1)}"


def test_tick_and_ctrl_c_with_a_client_connected() -> None:
    proc, url = run_cli("--tick", "0.1")
    try:
        with opener.open(url + "/long-poll?after=0&timeout=10", timeout=10) as resp:
            assert json.loads(resp.read())["events"][0]["data"]["tick"] == 1
        held = subprocess.Popen([sys.executable, "-c",
                                 f"import urllib.request as u; u.urlopen('{url}/long-poll?"
                                 "after=999999&timeout=60')"],
                                stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(5) == 0
        assert time.monotonic() - started < 3
        assert "labserver stopped" in proc.stdout.read()
        held.wait(5)
    finally:
        proc.kill()
        proc.wait()


def test_publish_token_from_the_command_line() -> None:
    proc, url = run_cli("--publish-token", "classroom-token-42")
    try:
        req = urllib.request.Request(url + "/publish", data=b'{"data": 1}', method="POST")
        try:
            opener.open(req, timeout=5)
            raise AssertionError("publish without the token was accepted")
        except urllib.error.HTTPError as err:
            assert err.code == 401
        req.add_header("Authorization", "Bearer classroom-token-42")
        with opener.open(req, timeout=5) as resp:
            assert json.loads(resp.read()) == {"id": 1}
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(5)


def test_bad_option_is_a_readable_error() -> None:
    out = subprocess.run([sys.executable, "-m", "labserver", "--log-size", "0"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "log_size must be between" in out.stderr


#: The options of DESIGN.md's table ("Options"), and the flag each has on the command line.
DESIGN_OPTIONS = {
    "host": "--host", "port": "--port", "tick": "--tick", "log_size": "--log-size",
    "heartbeat_s": "--heartbeat-s", "retry_ms": "--retry-ms",
    "max_message_bytes": "--max-message-bytes", "queue_size": "--queue-size",
    "allowed_origins": "--allowed-origins", "trust_proxy": "--trust-proxy",
    "socketio_transports": "--socketio-transports", "session_secret": "--session-secret",
    "publish_token": "--publish-token", "redis_url": "--redis",
    "fast": "--no-fast",  # not in DESIGN.md's table: labserver._fast is optional (issue 19)
}
HELP_LINE = re.compile(r"^  (--[a-z-]+)(?: [A-Z[][A-Z .[\]]*)?\s{2,}(\S.*)$")


def test_help_describes_every_option_in_one_line() -> None:
    from dataclasses import fields

    from labserver.__main__ import parse_args
    from labserver.options import Options

    assert set(DESIGN_OPTIONS) == {f.name for f in fields(Options)}  # the table is complete
    assert parse_args(["--no-fast"])["fast"] is False and "fast" not in parse_args([])
    out = subprocess.run([sys.executable, "-m", "labserver", "--help"], capture_output=True,
                         text=True, timeout=30, env={**os.environ, "COLUMNS": "80"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    described = {m.group(1): m.group(2) for line in lines if (m := HELP_LINE.match(line))}
    for name, flag in DESIGN_OPTIONS.items():
        assert flag in described, f"{flag} ({name}) has no one-line description in --help"
        assert len(described[flag].split()) >= 4 and "default" in described[flag], flag
    wrapped = [line for line in lines[lines.index("options:"):] if line.startswith(" " * 10)]
    assert not wrapped, f"descriptions wrapped onto a second line: {wrapped}"
