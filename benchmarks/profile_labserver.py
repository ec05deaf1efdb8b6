"""Where labserver's time goes in one benchmark scenario: py-spy samples the server process.

    .venv/bin/python benchmarks/profile_labserver.py ws 1000 10        # transport, N, events/s
    .venv/bin/python benchmarks/profile_labserver.py ws 100 burst      # the saturation burst

Starts labserver (pinned as in ``bench.py``), connects N clients of the transport with the
benchmark's own load generator, and runs ``py-spy record`` on the server for the measured part
only. Writes ``benchmarks/profiles/<transport>-<N>-<rate>.txt``: the scenario's figures, then
the functions with the most samples on CPU, by their own time and with their callees
("total"), then the collapsed stacks (``py-spy --format raw``) for a flame graph tool.
py-spy is a PyPI package (``pip install py-spy``); it needs the right to trace the server.
"""

from __future__ import annotations

import asyncio
import collections
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import bench

PROFILES = bench.HERE / "profiles"
SECONDS = 6.0


async def scenario(transport: str, n: int, rate: str) -> str:
    server_core, gen_core = bench.cpus()
    if gen_core is not None:
        os.sched_setaffinity(0, {gen_core})
    stack = bench.LabserverStack(server_core)
    b = bench.Bench(stack)
    raw = Path(tempfile.mkdtemp()) / "stacks.txt"
    try:
        await b.open_publishers(1 if rate != "burst" else bench.BURST_IN_FLIGHT)
        await b.open_clients(transport, n)
        await b.measure(200, 20)
        spy = subprocess.Popen(
            [shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), "record",
             "--pid", str(stack.pid), "--format", "raw", "--output", str(raw), "--rate", "500",
             "--duration", str(int(SECONDS)), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await asyncio.sleep(0.5)  # py-spy attaches
        results = []
        loop = asyncio.get_running_loop()
        end = loop.time() + SECONDS - 1.0
        while loop.time() < end:
            if rate == "burst":
                results.append(await b.measure(None, 200))
            else:
                results.append(await b.measure(int(rate), int(rate)))
        spy.wait(SECONDS + 10)
    finally:
        b.close()
        stack.stop()
    cpu = bench.med(r.cpu_us for r in results)
    p50 = bench.med(r.p50_ms for r in results)
    head = (f"labserver, {transport}, N={n}, rate {rate}: {len(results)} runs, "
            f"server CPU {cpu:.1f} µs/delivery, p50 {p50:.2f} ms (median of the runs)\n")
    return head + summarize(raw.read_text() if raw.exists() else "")


def summarize(collapsed: str, top: int = 40) -> str:
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        k = int(count)
        samples += k
        frames = [shorten(f) for f in stack.split(";")]
        if frames:
            own[frames[-1]] += k
        for f in set(frames):
            total[f] += k
    out = [f"\n{samples} samples\n", f"\nown time (top {top})\n"]
    out += [f"{100 * c / samples:6.1f}%  {f}" for f, c in own.most_common(top)]
    out += [f"\nwith callees (top {top})\n"]
    out += [f"{100 * c / samples:6.1f}%  {f}" for f, c in total.most_common(top)]
    out += ["\ncollapsed stacks (py-spy --format raw)\n", collapsed]
    return "\n".join(out)


def shorten(frame: str) -> str:
    """``send (aiohttp/_websocket/writer.py:97)`` without the site-packages prefix."""
    for marker in ("site-packages/", "lib/python3", "/labserver/"):
        i = frame.find(marker)
        if i >= 0:
            j = frame.rfind("(", 0, i)
            return frame[: j + 1] + frame[i + len(marker):] if marker != "/labserver/" \
                else frame[: j + 1] + "labserver/" + frame[i + len(marker):]
    return frame


def main() -> None:
    transport, n, rate = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    text = asyncio.run(scenario(transport, n, rate))
    PROFILES.mkdir(exist_ok=True)
    path = PROFILES / f"{transport}-{n}-{rate}.txt"
    path.write_text(text)
    print("\n".join(text.splitlines()[:60]))
    print(f"\nwritten to {path.relative_to(bench.HERE.parent)}")


if __name__ == "__main__":
    main()
