"""``python -m labserver``: the chapter's server in a terminal, stopped by Ctrl-C."""

from __future__ import annotations

import json
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
