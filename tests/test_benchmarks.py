"""A smoke run of ``benchmarks/bench.py``: every stack, every transport, five clients.

Not a measurement (the machine is shared; ``make bench`` measures): it checks that the load
generator drives labserver, the Node stack and the ``websockets`` server alike — every event
delivered to every client, latencies and CPU figures present, the table printed. The Node
stack needs ``node`` and ``npm ci`` in ``benchmarks/node``; the test runs ``npm ci`` itself
when npm is there, and otherwise skips, or fails under ``CI=true``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NODE_DIR = ROOT / "benchmarks" / "node"


def node_stack_ready() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed (apt-get install nodejs npm)"
    if not (NODE_DIR / "node_modules" / "socket.io").is_dir():
        if shutil.which("npm") is None:
            return "benchmarks/node has no node_modules and npm is not installed"
        done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR,
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            return f"npm ci failed in benchmarks/node: {done.stderr[-500:]}"
    return None


@pytest.fixture(scope="module")
def node_stack() -> None:
    why = node_stack_ready()
    if why is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{why}; CI must run the benchmark smoke test")
    pytest.skip(why)


@pytest.mark.timeout(180)
def test_tiny_run_drives_every_stack_and_prints_the_table(node_stack: None) -> None:
    # A child process: the benchmark pins itself to one core, pytest must not be.
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--tiny"],
                          capture_output=True, text=True, timeout=150, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("| transport | N | R/s |"))
    stacks = [c.strip().split()[0] for c in header.strip("|").split("|")[3:-3]]
    assert stacks == ["labserver", "node", "websockets", "aiohttp"], header
    rows = {}
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 6 + len(stacks) and cells[1] == "5" and cells[2] == "100":
            rows[cells[0]] = cells
    # Latency table: one row per transport, every stack that serves it with a p50/p99/max
    # (websockets: WebSocket only; aiohttp's floor: long polling only), nothing lost.
    assert set(rows) == {"long polling", "SSE", "WebSocket", "Socket.IO"}, table
    for name, cells in rows.items():
        served = [col for col in cells[3:3 + len(stacks)] if col]
        assert len(served) == (3 if name in ("WebSocket", "long polling") else 2), (name, cells)
        assert cells[3 + len(stacks)].split("/") == ["0"] * len(served), (name, cells)
        for col in served:
            p50, p99, worst = (float(x) for x in col.split(" / "))
            assert 0 < p50 <= p99 <= worst < 2000, (name, cells)
        assert float(cells[4 + len(stacks)]) > 0  # the ratio to Node was computed within the round
    # Saturation: every stack delivered the whole burst and has a CPU figure.
    for stack in ("labserver", "node", "websockets"):
        match = re.search(rf"^\| {stack} \| (\d+) \| ([\d.]+) \| [\d.]+ \| (\d+) \|", table, re.M)
        assert match, (stack, table)
        assert int(match.group(1)) > 0 and float(match.group(2)) > 0
        assert match.group(3) == "0"
    assert "WebSocket CPU per delivery at saturation" in table
