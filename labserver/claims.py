"""One way to state a lesson's quantitative claim: predicted, measured, tolerance, checked.

The series promises that every number in its prose is a *prediction* with a reason, measured in
front of the learner and checked by an assert that fails when the claim is false. This module is
that promise's one home. Each call prints one line a learner reads beside the prose —

    ✓ every 100 ms, the mean wait is half the interval: predicted 50 ms, measured 50.7 ms,
      tolerance ±6 ms (spread of 7 runs, 2 with both cores busy) [01.wait-100]

— and raises :class:`ClaimFailed` (an ``AssertionError``) with the same sentence, marked ✗, when
the measurement contradicts the prediction. Four forms cover the lessons:

- :func:`check`: ``|measured - predicted| <= tol`` — "half the interval", "one request per event".
- :func:`exact`: counts and byte sizes that do not vary are asserted exactly ("32 bytes").
- :func:`at_most` / :func:`at_least`: a claim that *is* a bound ("the p99 stays within one
  interval"); the bound is the claim, so it says so.
- :func:`order`: a ranking ("WebSocket costs the fewest bytes"), with an optional margin.

Every claim has a ``key`` (``"01.wait-100"``: the notebook's number, then a name), a ``basis``
(where the tolerance comes from: the spread of repeated runs) and ``fails_if`` (the perturbation
that was tried once and made it fail). A tolerance much wider than the spread the runs show needs
``wide=`` — a written reason — or the ledger test fails (``make claims``, ``claims/``).

Recording. With ``LABSERVER_CLAIMS_LOG=path`` in the environment, every claim is also appended to
that file as one JSON line (``make claims`` sets it, runs the series K times, and writes the
committed ledger). ``LABSERVER_CLAIMS_KEEP_GOING=1`` records a failed claim and goes on instead
of raising, so that one run records every claim of a notebook.

Numbers in a claim's printed line that vary from run to run follow the word ``measured``; nbval's
sanitize file replaces that part, so the saved output compares while the assert still checks.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Claim", "ClaimFailed", "at_least", "at_most", "check", "exact", "order"]

LOG_ENV = "LABSERVER_CLAIMS_LOG"
KEEP_GOING_ENV = "LABSERVER_CLAIMS_KEEP_GOING"
NOTEBOOK_ENV = "LABSERVER_CLAIMS_NOTEBOOK"


class ClaimFailed(AssertionError):
    """A lesson's claim that its own measurement contradicts; the message is the printed line."""


@dataclass(frozen=True)
class Claim:
    """One claim as checked: what the ledger records."""

    key: str
    text: str
    kind: str  # "check" | "exact" | "at_most" | "at_least" | "order"
    predicted: Any  # a number; a ranking (order); any JSON value (exact)
    measured: Any  # the same kinds; for order, a value per name
    tolerance: float | None  # half-width (check), headroom (bounds), 0 (exact), margin (order)
    unit: str
    basis: str
    fails_if: str
    wide: str | None
    passed: bool
    line: str
    notebook: str | None = field(default=None)

    def _ipython_display_(self) -> None:
        """A claim's line is printed when it is checked: as a cell's last expression, a claim
        shows nothing more (no dataclass repr under the line, in Lab and under nbval alike)."""


def fmt(value: float, digits: int | None = None) -> str:
    """A number as a learner reads it: integers plainly, small values with enough decimals
    that nothing under a millisecond prints as 0."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and digits is None
                                  and abs(value) >= 1):
        return f"{int(value):,}".replace(",", " ") if abs(value) >= 10_000 else str(int(value))
    if digits is None:
        magnitude = abs(value)
        digits = 0 if magnitude >= 1000 else 1 if magnitude >= 10 else 2 if magnitude >= 0.1 else 3
    return f"{value:.{digits}f}"


#: What :func:`exact` compares: a number, or a value of JSON's kinds (the ledger records it).
Exact = float | str | Sequence[Any]


def _shown(value: Exact) -> str:
    return fmt(value) if isinstance(value, int | float) else str(value)


def _with_unit(text: str, unit: str) -> str:
    if not unit:
        return text
    return f"{text}{unit}" if unit in ("%", "×") else f"{text} {unit}"


def _finish(claim: Claim) -> Claim:
    print(claim.line)
    path = os.environ.get(LOG_ENV)
    if path:
        record = asdict(claim)
        record["notebook"] = os.environ.get(NOTEBOOK_ENV)
        with open(path, "a", encoding="utf-8") as log:
            log.write(json.dumps(record, ensure_ascii=False) + "\n")
    if not claim.passed and os.environ.get(KEEP_GOING_ENV) != "1":
        raise ClaimFailed(claim.line)
    return claim


def _require(key: str, basis: str, fails_if: str) -> None:
    if not key or not basis or not fails_if:
        raise ValueError("a claim needs a key, a basis (where its tolerance comes from) and "
                         "fails_if (the perturbation that makes it fail)")


def _number(name: str, value: float) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
        raise TypeError(f"{name} must be a number, not {value!r}")
    return value


def _line(passed: bool, text: str, body: str, key: str) -> str:
    return f"{'✓' if passed else '✗'} {text}: {body} [{key}]"


def check(key: str, text: str, *, predicted: float, measured: float, tol: float,
          unit: str = "", basis: str, fails_if: str, wide: str | None = None,
          digits: int | None = None) -> Claim:
    """The claim "``measured`` is ``predicted`` within ±``tol``"; prints it, raises if false."""
    _require(key, basis, fails_if)
    predicted, measured, tol = (_number("predicted", predicted), _number("measured", measured),
                                _number("tol", tol))
    if tol < 0:
        raise ValueError("tol is a half-width: it cannot be negative")
    passed = abs(measured - predicted) <= tol
    body = (f"predicted {_with_unit(fmt(predicted, digits), unit)}, "
            f"measured {_with_unit(fmt(measured, digits), unit)}; "
            f"tolerance ±{_with_unit(fmt(tol, digits), unit)} ({basis})")
    return _finish(Claim(key, text, "check", predicted, measured, tol, unit, basis, fails_if,
                         wide, passed, _line(passed, text, body, key)))


def exact(key: str, text: str, *, predicted: Exact, measured: Exact, unit: str = "",
          basis: str = "exact: no run-to-run variation", fails_if: str) -> Claim:
    """The claim "``measured`` is exactly ``predicted``": counts, byte sizes, or a value that
    is not a number (a status, a close reason, who received what as a list of counts)."""
    _require(key, basis, fails_if)
    passed = measured == predicted
    if passed:
        body = f"exactly {_with_unit(_shown(predicted), unit)}, as predicted"
    else:
        body = (f"predicted exactly {_with_unit(_shown(predicted), unit)}, "
                f"but measured {_with_unit(_shown(measured), unit)}")
    return _finish(Claim(key, text, "exact", predicted, measured, 0, unit, basis, fails_if,
                         None, passed, _line(passed, text, body, key)))


def _bound(kind: str, key: str, text: str, measured: float, limit: float, unit: str,
           basis: str, fails_if: str, wide: str | None, digits: int | None) -> Claim:
    _require(key, basis, fails_if)
    measured, limit = _number("measured", measured), _number("limit", limit)
    passed = measured <= limit if kind == "at_most" else measured >= limit
    word = "at most" if kind == "at_most" else "at least"
    body = (f"predicted {word} {_with_unit(fmt(limit, digits), unit)}, "
            f"measured {_with_unit(fmt(measured, digits), unit)}; ({basis})")
    return _finish(Claim(key, text, kind, limit, measured, abs(limit - measured), unit, basis,
                         fails_if, wide, passed, _line(passed, text, body, key)))


def at_most(key: str, text: str, *, measured: float, limit: float, unit: str = "",
            basis: str, fails_if: str, wide: str | None = None,
            digits: int | None = None) -> Claim:
    """The claim "``measured`` ≤ ``limit``", where the bound itself is what the prose says."""
    return _bound("at_most", key, text, measured, limit, unit, basis, fails_if, wide, digits)


def at_least(key: str, text: str, *, measured: float, limit: float, unit: str = "",
             basis: str, fails_if: str, wide: str | None = None,
             digits: int | None = None) -> Claim:
    """The claim "``measured`` ≥ ``limit``", where the bound itself is what the prose says."""
    return _bound("at_least", key, text, measured, limit, unit, basis, fails_if, wide, digits)


def order(key: str, text: str, *, measured: Mapping[str, float], predicted: Sequence[str],
          unit: str = "", margin: float = 0.0, basis: str, fails_if: str,
          digits: int | None = None) -> Claim:
    """The claim that ``measured``'s values rise in the order ``predicted`` (smallest first),
    each at least ``margin`` above the one before it."""
    _require(key, basis, fails_if)
    if sorted(predicted) != sorted(measured):
        raise ValueError(f"predicted names {list(predicted)} are not measured's {list(measured)}")
    values = [_number(name, measured[name]) for name in predicted]
    pairs = zip(values, values[1:], strict=False)
    passed = all(b - a > margin if margin else b > a for a, b in pairs)
    ranked = sorted(measured, key=measured.__getitem__)
    shown = " < ".join(f"{name} {fmt(measured[name], digits)}" for name in ranked)
    body = f"predicted {' < '.join(predicted)}, measured {_with_unit(shown, unit)}"
    if margin:
        body += f"; each by more than {_with_unit(fmt(margin, digits), unit)} ({basis})"
    else:
        body += f" ({basis})"
    return _finish(Claim(key, text, "order", list(predicted), dict(measured), margin, unit, basis,
                         fails_if, None, passed, _line(passed, text, body, key)))
