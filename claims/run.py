"""make claims: run the lessons K times and write the ledger of every claim they check.

Each notebook is executed in a fresh kernel (nbclient, as nbval runs it) into a temporary copy —
the committed notebooks are not touched — with ``LABSERVER_CLAIMS_LOG`` set, so every call of
:mod:`labserver.claims` appends its claim, prediction, tolerance and measured value to a log.
``LABSERVER_CLAIMS_KEEP_GOING=1`` lets a run that contradicts one claim record the rest.
The last ``--busy`` runs are made with both cores busy (one spinning process per core, stopped
when the run ends), as on a CI machine that runs two test workers.

The ledger is one JSON file per notebook, ``claims/NN_name.json``: for every claim its cell, kind,
prediction, tolerance, basis, the perturbation that makes it fail, the min/median/max measured
over the runs (quiet and busy apart) and how many runs it passed. ``claims/README.md`` is the
table a person reads. ``tests/test_claims.py`` reads the ledger.

    .venv/bin/python claims/run.py                       # all notebooks, 5 runs, 2 busy
    .venv/bin/python claims/run.py --only 01_polling --runs 3 --busy 1
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
LEDGER = ROOT / "claims"
KEY = re.compile(r"""\b(?:claims\.)?(?:check|exact|at_most|at_least|order)\(\s*(?:key=)?["']"""
                 r"""(\d\d[a-z]?\.[A-Za-z0-9_.-]+)["']""")
#: How long one spinning process may run at most (s): it is stopped when its run ends, and
#: stops itself after this whatever happens.
BUSY_LIMIT_S = 1800


def claim_cells(path: Path) -> dict[str, int]:
    """Every claim key that a notebook's code cells name, with the cell index it stands in."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    found: dict[str, int] = {}
    for index, cell in enumerate(cells):
        if cell["cell_type"] == "code":
            for key in KEY.findall("".join(cell["source"])):
                found.setdefault(key, index)
    return found


def spin(deadline: float) -> None:
    while time.monotonic() < deadline:
        sum(i * i for i in range(10_000))


def run_once(path: Path, log: Path, timeout_s: int) -> str | None:
    """Execute one notebook into a temporary copy with the claims log on; the error, if any."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    os.environ.update({"LABSERVER_CLAIMS_LOG": str(log), "LABSERVER_CLAIMS_KEEP_GOING": "1",
                       "LABSERVER_CLAIMS_NOTEBOOK": path.stem})
    client = NotebookClient(nb, timeout=timeout_s, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    try:
        client.execute()
    except Exception as exc:  # a cell that raised: the claims before it are still in the log
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:200]}"
    return None


def summary(values: list[Any]) -> dict[str, Any] | None:
    """min/median/max of numbers; of values that are not numbers (an exact claim on a list or a
    string), the distinct ones the runs saw."""
    if not values:
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        distinct = list(dict.fromkeys(json.dumps(v, ensure_ascii=False) for v in values))
        return {"distinct": distinct, "n": len(values)}
    return {"min": min(values), "median": statistics.median(values), "max": max(values),
            "n": len(values)}


def ledger_for(path: Path, records: list[dict], runs: list[dict]) -> dict:
    """The ledger entry of one notebook from the claims its runs recorded."""
    cells = claim_cells(path)
    by_key: dict[str, list[dict]] = {}
    for record in records:
        by_key.setdefault(record["key"], []).append(record)
    claims = []
    for key in sorted(set(cells) | set(by_key), key=lambda k: (cells.get(k, 10**6), k)):
        seen = by_key.get(key, [])
        last = seen[-1] if seen else {}
        entry = {
            "key": key, "cell": cells.get(key), "text": last.get("text"), "kind": last.get("kind"),
            "unit": last.get("unit"), "predicted": last.get("predicted"),
            "tolerance": last.get("tolerance"), "basis": last.get("basis"),
            "fails_if": last.get("fails_if"), "wide": last.get("wide"),
            "runs": len(seen), "passed": sum(1 for r in seen if r["passed"]),
        }
        if entry["kind"] == "order":
            entry["measured"] = {name: summary([r["measured"][name] for r in seen])
                                 for name in (last.get("measured") or {})}
        else:
            values = [r["measured"] for r in seen]
            entry["measured"] = summary(values)
            entry["quiet"] = summary([r["measured"] for r in seen if not r.get("busy")])
            entry["busy"] = summary([r["measured"] for r in seen if r.get("busy")])
            if last.get("kind") == "check":
                deviations = [r["measured"] - r["predicted"] for r in seen]
                entry["deviation"] = summary(deviations)
        claims.append(entry)
    return {"notebook": path.name, "runs": runs, "claims": claims}


def markdown(ledgers: list[dict]) -> str:
    lines = [
        "# The ledger of the lessons' claims",
        "",
        "Made by `make claims` (`claims/run.py`): every notebook run K times in a fresh kernel,",
        "the last runs with both cores busy. One row per claim: its prediction and tolerance as",
        "the notebook states them, what the runs measured (min / median / max), how many runs it",
        "passed, and the perturbation that was tried once and made it fail.",
        "`tests/test_claims.py` fails when a notebook names a claim the ledger lacks, or when a",
        "tolerance is wider than four times the spread the runs show without a reason (`wide`).",
        "",
    ]
    for ledger in ledgers:
        runs = ledger["runs"]
        busy = sum(1 for r in runs if r["busy"])
        lines += [f"## {ledger['notebook']}", "",
                  f"{len(runs)} runs ({busy} with both cores busy).", "",
                  "| claim | cell | predicted | tolerance | measured min / median / max | passed "
                  "| fails if | wide because |",
                  "| --- | ---: | --- | --- | --- | --- | --- | --- |"]
        for c in ledger["claims"]:
            unit = f" {c['unit']}" if c.get("unit") else ""
            m = c.get("measured")
            if c.get("kind") == "order":
                shown = "; ".join(f"{k} {v['median']:.3g}" for k, v in (m or {}).items() if v)
            elif m and "distinct" in m:
                shown = " or ".join(f"`{v}`" for v in m["distinct"]) + unit
            elif m:
                shown = f"{m['min']:.4g} / {m['median']:.4g} / {m['max']:.4g}{unit}"
            else:
                shown = "not recorded"
            predicted = c.get("predicted")
            if c.get("kind") == "order":
                predicted = " < ".join(predicted)
            elif isinstance(predicted, list | str):
                predicted = f"`{json.dumps(predicted, ensure_ascii=False)}`"
            elif isinstance(predicted, float):
                predicted = f"{predicted:.4g}"
            tol = c.get("tolerance")
            tol_text = "" if tol is None else f"{tol:.3g}"
            if c.get("kind") == "check":
                tol_text = f"±{tol_text}"
            elif c.get("kind") in ("at_most", "at_least"):
                tol_text = f"{c['kind'].replace('_', ' ')} (headroom {tol_text})"
            elif c.get("kind") == "exact":
                tol_text = "exact"
            cell = "" if c.get("cell") is None else str(c["cell"])
            text = (c.get("text") or "").replace("|", "\\|")
            lines.append(
                f"| `{c['key']}` {text} | {cell} | {predicted}{unit} | {tol_text} | {shown} | "
                f"{c['passed']}/{c['runs']} | {(c.get('fails_if') or '').replace('|', '/')} | "
                f"{(c.get('wide') or '').replace('|', '/')} |")
        lines.append("")
    return "\n".join(lines)


def write_readme() -> None:
    ledgers = [json.loads(p.read_text(encoding="utf-8"))
               for p in sorted(LEDGER.glob("[0-9]*.json"))]
    (LEDGER / "README.md").write_text(markdown(ledgers), encoding="utf-8")


def suggest() -> None:
    """For every claim in the ledger: its tolerance against the spread the runs showed, and a
    tolerance that covers the runs with room (1.5x the largest deviation, at least twice the
    spread) while staying within the ledger test's four times the spread."""
    for path in sorted(LEDGER.glob("[0-9]*.json")):
        for c in json.loads(path.read_text(encoding="utf-8"))["claims"]:
            if c.get("kind") not in ("check", "at_most", "at_least") or not c.get("runs"):
                continue
            m = c.get("deviation") or c["measured"]
            spread = m["max"] - m["min"]
            if c["kind"] == "check":
                worst = max(abs(m["max"]), abs(m["min"]))
                tol = c["tolerance"]
                want = max(1.5 * worst, 2 * spread)
                flag = "WIDE" if tol > 4 * spread else "TIGHT" if tol < worst else ""
                print(f"{c['key']:32} check tol {tol:<8.4g} spread {spread:<8.4g} "
                      f"worst {worst:<8.4g} suggest {want:<8.4g} {flag}"
                      f"{' (wide: ' + c['wide'][:50] + ')' if c.get('wide') else ''}")
            else:
                headroom = abs(c["predicted"] - c["measured"]["median"])
                flag = "WIDE" if headroom > 4 * spread else ""
                print(f"{c['key']:32} {c['kind']:8} limit {c['predicted']:<8.4g} headroom "
                      f"{headroom:<8.4g} spread {spread:<8.4g} {flag}"
                      f"{' (wide: ' + c['wide'][:50] + ')' if c.get('wide') else ''}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5,
                        help="runs of each notebook (K, default 5)")
    parser.add_argument("--busy", type=int, default=2,
                        help="how many of the runs (the last ones) have both cores busy "
                             "(default 2)")
    parser.add_argument("--only", action="append", default=[],
                        help="a notebook's name (01_polling); repeat for more; default: all")
    parser.add_argument("--timeout", type=int, default=180, help="seconds per cell (default 180)")
    parser.add_argument("--suggest", action="store_true",
                        help="run nothing: print each claim's tolerance against the ledger's "
                             "spread, with a suggested one")
    args = parser.parse_args()
    if args.suggest:
        suggest()
        return 0
    if not 1 <= args.runs <= 20 or not 0 <= args.busy <= args.runs:
        parser.error("--runs is 1 to 20 and --busy 0 to --runs")
    paths = sorted(NOTEBOOKS.glob("[0-9]*.ipynb"))
    if args.only:
        paths = [p for p in paths if p.stem in args.only]
        if not paths:
            parser.error(f"no notebook named {args.only}")
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        records: dict[str, list[dict]] = {p.stem: [] for p in paths}
        runs: dict[str, list[dict]] = {p.stem: [] for p in paths}
        for run in range(args.runs):
            busy = run >= args.runs - args.busy
            spinners = []
            if busy:
                deadline = time.monotonic() + BUSY_LIMIT_S
                spinners = [multiprocessing.Process(target=spin, args=(deadline,), daemon=True)
                            for _ in range(os.cpu_count() or 2)]
                for p in spinners:
                    p.start()
            try:
                for path in paths:
                    log = Path(tmp) / f"{path.stem}-{run}.jsonl"
                    started = time.monotonic()
                    error = run_once(path, log, args.timeout)
                    took = time.monotonic() - started
                    seen = [json.loads(line) for line in log.read_text().splitlines()] \
                        if log.exists() else []
                    for record in seen:
                        record["busy"] = busy
                    records[path.stem] += seen
                    failed = [r["key"] for r in seen if not r["passed"]]
                    failures += len(failed) + (error is not None)
                    runs[path.stem].append({"busy": busy, "seconds": round(took, 1),
                                            "error": error, "failed": failed})
                    which = ": " + ", ".join(failed) if failed else ""
                    print(f"run {run + 1}/{args.runs}{' (busy)' if busy else ''} {path.stem}: "
                          f"{len(seen)} claims, {len(failed)} failed{which}"
                          f"{'; ' + error if error else ''} ({took:.0f} s)", flush=True)
            finally:
                for p in spinners:
                    p.terminate()
                    p.join()
        for path in paths:
            ledger = ledger_for(path, records[path.stem], runs[path.stem])
            (LEDGER / f"{path.stem}.json").write_text(
                json.dumps(ledger, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    write_readme()
    print(f"ledger written to {LEDGER.relative_to(ROOT)}/; {failures} failed claims or errors")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
