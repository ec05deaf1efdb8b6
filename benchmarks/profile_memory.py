"""What an idle connection costs labserver in memory, by allocation site (tracemalloc).

    .venv/bin/python benchmarks/profile_memory.py ws 500      # transport, connections

Runs labserver's app in a child process with ``tracemalloc`` on, connects 20 clients of the
transport with ``bench.py``'s load generator (a warm-up), takes a snapshot, connects N more,
takes another, and writes ``benchmarks/profiles/<transport>-memory.txt``: the bytes per
connection, then the allocation sites that grew, biggest first, with their tracebacks.
(tracemalloc counts what Python allocates; RSS adds the allocator's own overhead.)
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import bench

SERVER = r'''
import asyncio, gc, json, signal, sys, tracemalloc
tracemalloc.start(10)
from labserver.app import create_app, serve

async def main():
    stop, snaps = asyncio.Event(), []
    def snap():
        gc.collect()
        snaps.append(tracemalloc.take_snapshot())
        if len(snaps) == 2:
            n = int(sys.argv[2])
            stats = snaps[1].compare_to(snaps[0], "traceback")
            grown = sum(s.size_diff for s in stats)
            with open(sys.argv[1], "w") as f:
                f.write(f"{grown / n / 1024:.1f} KiB per connection ({n} connections)\n\n")
                for s in stats[:40]:
                    f.write(f"{s.size_diff / n:8.0f} B per connection\n")
                    for line in s.traceback.format()[-10:]:
                        f.write("    " + line + "\n")
            stop.set()
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, snap)
    await serve(create_app(), stop, lambda port: print(json.dumps({"port": port}), flush=True))
asyncio.run(main())
'''


async def measure(transport: str, n: int, out: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(out), str(n)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    stack = bench.Stack()
    stack.port, stack.pid = json.loads(proc.stdout.readline())["port"], proc.pid
    b = bench.Bench(stack)
    try:
        await b.open_publishers(1)
        await b.open_clients(transport, 20)
        await asyncio.sleep(0.3)
        os.kill(proc.pid, signal.SIGUSR1)
        await asyncio.sleep(1.0)
        await b.open_clients(transport, n)  # the server then holds 20 + n
        await asyncio.sleep(0.5)
        os.kill(proc.pid, signal.SIGUSR1)
        proc.wait(60)
    finally:
        b.close()
        if proc.poll() is None:
            proc.kill()


def main() -> None:
    transport, n = sys.argv[1], int(sys.argv[2])
    out = Path(tempfile.mkdtemp()) / "memory.txt"
    asyncio.run(measure(transport, n, out))
    bench.HERE.joinpath("profiles").mkdir(exist_ok=True)
    path = bench.HERE / "profiles" / f"{transport}-memory.txt"
    path.write_text(f"labserver, {n} idle {transport} connections, tracemalloc\n" + out.read_text())
    print("\n".join(path.read_text().splitlines()[:30]))
    print(f"\nwritten to {path.relative_to(bench.HERE.parent)}")


if __name__ == "__main__":
    main()
