"""labserver.claims, and the ledger that ``make claims`` writes of every lesson's claims.

The ledger tests are fast: they read ``claims/*.json`` and the notebooks, run nothing. They fail
when a notebook names a claim the ledger lacks (or the ledger one no notebook names), when the
ledger was made with fewer than five runs or fewer than two busy ones, when a claim failed in any
recorded run, and when a tolerance is wider than four times the spread the runs showed without a
reason written beside it (``wide=``).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from labserver import claims

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
SPREAD_FACTOR = 4
MIN_RUNS, MIN_BUSY = 5, 2


def runner():
    spec = importlib.util.spec_from_file_location("claims_run", ROOT / "claims" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the helper itself -------------------------------------------------------------------------

def test_check_prints_one_line_and_passes(capsys):
    c = claims.check("00.demo", "the wait is half the interval", predicted=50, measured=52.4,
                     tol=6, unit="ms", basis="spread of 5 runs", fails_if="a drifting client")
    out = capsys.readouterr().out
    assert out == ("✓ the wait is half the interval: predicted 50 ms, measured 52.4 ms; "
                   "tolerance ±6 ms (spread of 5 runs) [00.demo]\n")
    assert c.passed


def test_check_raises_with_the_same_sentence(capsys):
    with pytest.raises(claims.ClaimFailed) as failed:
        claims.check("00.demo", "the wait is half the interval", predicted=50, measured=57,
                     tol=6, unit="ms", basis="b", fails_if="f")
    assert str(failed.value) == capsys.readouterr().out.strip()
    assert str(failed.value).startswith("✗ ")
    assert isinstance(failed.value, AssertionError)


def test_exact_and_bounds_and_order(capsys):
    claims.exact("00.bytes", "framing", predicted=32, measured=32, unit="bytes", fails_if="f")
    assert "exactly 32 bytes, as predicted" in capsys.readouterr().out
    with pytest.raises(claims.ClaimFailed, match="predicted exactly 32 bytes, but measured 33"):
        claims.exact("00.bytes", "framing", predicted=32, measured=33, unit="bytes", fails_if="f")
    claims.at_most("00.p99", "p99 within the interval", measured=5.6, limit=100, unit="ms",
                   basis="b", fails_if="f")
    with pytest.raises(claims.ClaimFailed):
        claims.at_least("00.n", "at least", measured=3, limit=4, basis="b", fails_if="f")
    claims.order("00.rank", "ws is cheapest", measured={"sse": 40.0, "ws": 14.0},
                 predicted=["ws", "sse"], unit="bytes", basis="b", fails_if="f")
    with pytest.raises(claims.ClaimFailed):
        claims.order("00.rank", "ws is cheapest", measured={"sse": 10.0, "ws": 14.0},
                     predicted=["ws", "sse"], basis="b", fails_if="f")
    with pytest.raises(claims.ClaimFailed):  # a margin the gap does not clear
        claims.order("00.rank", "ws is cheapest", measured={"sse": 14.5, "ws": 14.0},
                     predicted=["ws", "sse"], margin=1, basis="b", fails_if="f")


def test_exact_compares_values_that_are_not_numbers(capsys):
    grid = [[1, 0], [0, 1]]
    claims.exact("00.who", "who received", predicted=grid, measured=[[1, 0], [0, 1]],
                 fails_if="f")
    assert capsys.readouterr().out == ("✓ who received: exactly [[1, 0], [0, 1]], as predicted "
                                       "[00.who]\n")
    with pytest.raises(claims.ClaimFailed, match=r"but measured \[\[1, 1\], \[0, 1\]\]"):
        claims.exact("00.who", "who received", predicted=grid, measured=[[1, 1], [0, 1]],
                     fails_if="f")
    claims.exact("00.reason", "the close reason", predicted="send queue full",
                 measured="send queue full", fails_if="f")
    assert "exactly send queue full, as predicted" in capsys.readouterr().out


def test_the_ledger_summarises_values_that_are_not_numbers():
    summary = runner().summary
    assert summary([[1, 0], [1, 0], [1, 1]]) == {"distinct": ["[1, 0]", "[1, 1]"], "n": 3}
    assert summary([3, 1, 2]) == {"min": 1, "median": 2, "max": 3, "n": 3}


def test_a_claim_needs_its_basis_and_perturbation():
    with pytest.raises(ValueError):
        claims.check("00.x", "t", predicted=1, measured=1, tol=0, basis="", fails_if="f")
    with pytest.raises(ValueError):
        claims.check("00.x", "t", predicted=1, measured=1, tol=0, basis="b", fails_if="")


def test_small_values_never_print_as_zero():
    assert claims.fmt(0.04) == "0.040"
    assert claims.fmt(0.3) == "0.30"
    assert claims.fmt(12.34) == "12.3"
    assert claims.fmt(32) == "32"


def test_the_log_records_and_keep_going_does_not_raise(tmp_path, monkeypatch, capsys):
    log = tmp_path / "claims.jsonl"
    monkeypatch.setenv(claims.LOG_ENV, str(log))
    monkeypatch.setenv(claims.KEEP_GOING_ENV, "1")
    monkeypatch.setenv(claims.NOTEBOOK_ENV, "00_demo")
    claims.check("00.a", "t", predicted=1, measured=3, tol=1, basis="b", fails_if="f")
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["key"], r["passed"], r["notebook"]) for r in records] == [("00.a", False, "00_demo")]


def test_the_sanitize_file_hides_only_what_was_measured():
    import configparser
    import re

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "tests" / "sanitize.cfg", encoding="utf-8")
    line = ("✓ framing: predicted 50 ms, measured 52.4 ms; tolerance ±6 ms (spread) [00.x]")
    for section in cfg.sections():
        line = re.sub(cfg[section]["regex"], cfg[section]["replace"], line)
    assert "52.4" not in line and "[00.x]" in line and "tolerance" in line


def test_the_key_pattern_finds_every_form():
    key = runner().KEY
    text = ('check("01.a", "t")\nclaims.exact(\n  "02b.bytes-x", "t")\n'
            'at_most(key="06.p99", text="t")\norder("05.rank", "t")')
    assert key.findall(text) == ["01.a", "02b.bytes-x", "06.p99", "05.rank"]


# --- the ledger --------------------------------------------------------------------------------

def ledger(path: Path) -> dict | None:
    file = ROOT / "claims" / f"{path.stem}.json"
    return json.loads(file.read_text(encoding="utf-8")) if file.exists() else None


def spread(entry: dict) -> float:
    m = entry.get("deviation") or entry["measured"]
    return m["max"] - m["min"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_ledger_has_every_claim_of_the_notebook(path):
    named = runner().claim_cells(path)
    if not named:
        pytest.fail(f"{path.name} states no claim through labserver.claims")
    found = ledger(path)
    assert found is not None, f"claims/{path.stem}.json is missing: run make claims"
    recorded = {c["key"] for c in found["claims"] if c["runs"]}
    assert set(named) <= recorded, f"not in the ledger (run make claims): {set(named) - recorded}"
    assert recorded <= set(named), f"in the ledger but in no cell: {recorded - set(named)}"
    runs = found["runs"]
    assert len(runs) >= MIN_RUNS and sum(r["busy"] for r in runs) >= MIN_BUSY, \
        f"{path.name}: the ledger has {len(runs)} runs; make claims makes 5, 2 of them busy"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_claim_held_in_every_run_and_its_tolerance_follows_the_spread(path):
    found = ledger(path)
    if found is None:
        pytest.fail(f"claims/{path.stem}.json is missing: run make claims")
    problems = []
    for c in found["claims"]:
        if c["passed"] != c["runs"]:
            problems.append(f"{c['key']}: passed {c['passed']} of {c['runs']} runs")
        if c["kind"] in ("check", "at_most", "at_least") and c["runs"] and not c.get("wide"):
            allowed = SPREAD_FACTOR * spread(c)
            tolerance = c["tolerance"] if c["kind"] == "check" else \
                abs(c["predicted"] - c["measured"]["median"])
            if tolerance > allowed:
                problems.append(f"{c['key']}: tolerance {tolerance:.4g} is over {SPREAD_FACTOR}× "
                                f"the runs' spread {spread(c):.4g}; narrow it or say why (wide=)")
    assert not problems, "\n".join(problems)


def test_keys_are_unique_across_the_series():
    seen: dict[str, str] = {}
    for path in NOTEBOOKS:
        for key in runner().claim_cells(path):
            assert key not in seen, f"{key} is claimed in {seen[key]} and {path.name}"
            assert key.startswith(path.stem.split("_")[0] + "."), \
                f"{key} in {path.name} should start with {path.stem.split('_')[0]}."
            seen[key] = path.name
