"""Run the Autobahn|Testsuite fuzzing client against labserver's WebSocket; print its table.

``make conformance`` runs every case; ``make conformance CASES=1-7,10`` (what CI runs, through
tests/test_conformance.py) a fast subset. Steps:

1. serve :func:`echo_app.make_app` on a free loopback port, in this process;
2. write a ``fuzzingclient`` spec for ``ws://127.0.0.1:PORT/echo`` and run Autobahn's
   ``wstest`` (Python 2 code: it lives in its own virtualenv, ``conformance/.venv2``, which
   ``make conformance-env`` makes; see README.md);
3. read the report (``index.json``) and print one row per case group: how many cases were
   OK, NON-STRICT, INFORMATIONAL, UNIMPLEMENTED, FAILED;
4. send the flood Autobahn has no case for (issue 14): a text frame with FIN=0 and then empty
   continuation frames, which must close with 1009.

Exit status 1 if any case FAILED or the flood did not close with 1009.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from echo_app import MAX_MESSAGE_BYTES, make_app  # noqa: E402

from labserver.app import serving  # noqa: E402
from labserver.wsframes import FRAGMENT_COST_BYTES  # noqa: E402

WSTEST = HERE / ".venv2" / "bin" / "wstest"
BEHAVIORS = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")
#: Empty continuation frames in the flood: each counts FRAGMENT_COST_BYTES (64) against the
#: 16 MiB bound, so the last of these trips it (1.5 MB of frames; the server reads them all,
#: so its Close frame is not lost to a reset).
FLOOD_FRAMES = (MAX_MESSAGE_BYTES - 1) // FRAGMENT_COST_BYTES + 1


def case_patterns(cases: str) -> list[str]:
    """``"1-7,10"`` → Autobahn's case patterns ``["1.*", …, "7.*", "10.*"]``; ``"*"``: all."""
    if cases == "*":
        return ["*"]
    groups: list[int] = []
    for part in cases.split(","):
        low, _, high = part.partition("-")
        groups += range(int(low), int(high or low) + 1)
    return [f"{group}.*" for group in groups]


def group_of(case: str) -> int:
    return int(case.split(".")[0])


def table(results: dict[str, dict[str, str]]) -> tuple[str, Counter[str]]:
    """One markdown row per case group, and the totals."""
    rows: dict[int, Counter[str]] = {}
    for case, result in results.items():
        behavior = result["behavior"]
        if result.get("behaviorClose") == "FAILED":
            behavior = "FAILED"
        rows.setdefault(group_of(case), Counter())[behavior] += 1
    totals: Counter[str] = Counter()
    lines = ["| group | cases | " + " | ".join(BEHAVIORS) + " |",
             "| ---: | ---: | " + " | ".join("---:" for _ in BEHAVIORS) + " |"]
    for group in sorted(rows):
        counts = rows[group]
        totals.update(counts)
        lines.append(f"| {group} | {sum(counts.values())} | "
                     + " | ".join(str(counts[b]) for b in BEHAVIORS) + " |")
    lines.append(f"| all | {sum(totals.values())} | "
                 + " | ".join(str(totals[b]) for b in BEHAVIORS) + " |")
    return "\n".join(lines), totals


async def flood(port: int) -> tuple[int, str]:
    """A text frame with FIN=0, then :data:`FLOOD_FRAMES` empty continuation frames: the
    close code and reason the server answers with."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(f"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                 f"Sec-WebSocket-Version: 13\r\n\r\n".encode())
    await reader.readuntil(b"\r\n\r\n")
    mask = b"\0\0\0\0"
    writer.write(b"\x01\x81" + mask + b"x")  # text, FIN=0, masked, 1 byte
    empty = b"\x00\x80" + mask  # continuation, FIN=0, masked, empty
    try:
        for sent in range(0, FLOOD_FRAMES, 10_000):
            writer.write(empty * min(10_000, FLOOD_FRAMES - sent))
            await writer.drain()
    except ConnectionError:
        pass  # the server closed while frames were on their way
    try:
        while True:
            b0, b1 = await asyncio.wait_for(reader.readexactly(2), 10)
            payload = await reader.readexactly(b1 & 0x7F)
            if b0 & 0x0F == 0x8:
                return int.from_bytes(payload[:2], "big"), payload[2:].decode()
    except (asyncio.IncompleteReadError, ConnectionError):
        return 1006, "closed without a Close frame"
    except TimeoutError:
        return 0, "no Close frame within 10 s: the flood was not bounded"
    finally:
        writer.close()


async def main(cases: str, wstest: Path, outdir: Path) -> int:
    async with serving(make_app()) as port:
        spec = {"outdir": str(outdir), "cases": case_patterns(cases), "exclude-cases": [],
                "exclude-agent-cases": {},
                "servers": [{"agent": "labserver", "url": f"ws://127.0.0.1:{port}/echo"}]}
        spec_path = outdir / "fuzzingclient.json"
        spec_path.write_text(json.dumps(spec, indent=2))
        started = time.monotonic()
        wstest_run = await asyncio.create_subprocess_exec(
            str(wstest), "-m", "fuzzingclient", "-s", str(spec_path), cwd=outdir,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _, stderr = await wstest_run.communicate()
        seconds = time.monotonic() - started
        flood_code, flood_reason = await flood(port)
    if wstest_run.returncode != 0:
        print(stderr.decode(errors="replace")[-3000:], file=sys.stderr)
        print(f"wstest exited with {wstest_run.returncode}", file=sys.stderr)
        return 1
    results = json.loads((outdir / "index.json").read_text())["labserver"]
    text, totals = table(results)
    print(f"Autobahn|Testsuite fuzzingclient, cases {cases}, against labserver's "
          f"WebSocketConnection (conformance/echo_app.py): {seconds:.0f} s\n")
    print(text)
    failed = sorted((c for c, r in results.items() if "FAILED" in (
        r["behavior"], r.get("behaviorClose"))), key=lambda c: [int(p) for p in c.split(".")])
    if failed:
        print("\nFAILED: " + ", ".join(failed))
    print(f"\nempty-continuation flood ({FLOOD_FRAMES} frames of 6 bytes after a FIN=0 text "
          f"frame): closed with {flood_code} \"{flood_reason}\"")
    return 1 if totals["FAILED"] or flood_code != 1009 else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default="*", help='case groups, e.g. "1-7,10" (default: all)')
    parser.add_argument("--wstest", type=Path, default=WSTEST)
    parser.add_argument("--outdir", type=Path, help="where Autobahn writes its report "
                                                    "(default: a temporary folder)")
    args = parser.parse_args()
    if not args.wstest.exists():
        sys.exit(f"{args.wstest} is missing: run `make conformance-env` first (README.md, "
                 "'WebSocket conformance')")
    with tempfile.TemporaryDirectory(prefix="autobahn-") as tmp:
        outdir = args.outdir or Path(tmp)
        outdir.mkdir(parents=True, exist_ok=True)
        sys.exit(asyncio.run(main(args.cases, args.wstest, outdir)))
