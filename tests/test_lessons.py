"""What each lesson asks of a learner, checked: a person can get through it in one sitting.

Reading time counts prose at 150 words a minute, code and printed output at 10 lines a minute,
and half a minute per figure (the pace of the series' models: the Python Data Science Handbook,
Software Carpentry). Every lesson must stay within 35 minutes, no code cell may be over 25 lines,
each lesson has at least two exercises whose solutions are folded away (``<details>``), opens
with its objectives, ends with key points, draws at least one sequence diagram, and puts a
screenshot taken in the run beside every demo IFrame.

Run it alone to see the table: ``.venv/bin/python tests/test_lessons.py``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("[0-9]*.ipynb"))

MAX_MINUTES = 35
MAX_CELL_LINES = 25
MIN_EXERCISES = 2
WORDS_PER_MINUTE = 150
LINES_PER_MINUTE = 10
MINUTES_PER_FIGURE = 0.5

EXERCISE = re.compile(r"^#+\s*(exercise|challenge|try it)|^\*\*(exercise|challenge)", re.I | re.M)
FENCE = re.compile(r"```.*?```", re.S)
OBJECTIVES = re.compile(r"objective|you will be able to|by the end", re.I)
KEY_POINTS = re.compile(r"^#+\s*key points", re.I | re.M)
MERMAID = re.compile(r"```mermaid\s+sequenceDiagram", re.I)


def source(cell: dict) -> str:
    return "".join(cell.get("source", ""))


def load(path: Path) -> dict:
    """The learner load of one notebook: minutes, longest cell, exercises and the rest."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    words = code_lines = printed = figures = exercises = visible = diagrams = longest = 0
    bare_iframes = 0
    for i, cell in enumerate(cells):
        text = source(cell)
        if cell["cell_type"] == "markdown":
            words += len(FENCE.sub(" ", text).split())
            code_lines += sum(block.count("\n") for block in FENCE.findall(text))
            diagrams += len(MERMAID.findall(text))
            found = len(EXERCISE.findall(text))
            exercises += found
            after = cells[i + 1] if i + 1 < len(cells) else None
            if found and "<details" not in text and after and after["cell_type"] == "code":
                code = source(after)
                # a solution is visible when the next cell is filled-in code with its output
                if code.strip() and after.get("outputs") and "..." not in code \
                        and "NotImplemented" not in code:
                    visible += 1
            continue
        if cell["cell_type"] != "code":
            continue
        lines = [line for line in text.splitlines() if line.strip()]
        code_lines += len(lines)
        longest = max(longest, len(lines))
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "image/png" in data or "image/svg+xml" in data:
                figures += 1
            shown = "".join(out.get("text", "")) or "".join(data.get("text/plain", ""))
            printed += shown.count("\n")
        if "IFrame(" in text:
            following = [source(c) for c in cells[i:i + 3] if c["cell_type"] == "code"]
            if not any("screenshot(" in code for code in following):
                bare_iframes += 1
    minutes = (words / WORDS_PER_MINUTE + (code_lines + printed) / LINES_PER_MINUTE
               + figures * MINUTES_PER_FIGURE)
    markdown = [source(c) for c in cells if c["cell_type"] == "markdown"]
    return {
        "minutes": round(minutes, 1), "words": words, "code lines": code_lines,
        "printed lines": printed, "figures": figures, "longest cell": longest,
        "exercises": exercises, "visible solutions": visible, "diagrams": diagrams,
        "iframes without screenshot": bare_iframes,
        "objectives first": bool(markdown) and bool(OBJECTIVES.search(markdown[0])),
        "key points": any(KEY_POINTS.search(m) for m in markdown[-3:]),
    }


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_a_learner_can_finish_the_lesson(path: Path) -> None:
    row = load(path)
    problems = []
    if row["minutes"] > MAX_MINUTES:
        problems.append(f"{row['minutes']} minutes of reading > {MAX_MINUTES}")
    if row["longest cell"] > MAX_CELL_LINES:
        problems.append(f"a {row['longest cell']}-line code cell > {MAX_CELL_LINES}")
    if row["exercises"] < MIN_EXERCISES:
        problems.append(f"{row['exercises']} exercises < {MIN_EXERCISES}")
    if row["visible solutions"]:
        problems.append(f"{row['visible solutions']} solution(s) in the next cell, not folded")
    if not row["diagrams"]:
        problems.append("no Mermaid sequence diagram")
    if row["iframes without screenshot"]:
        problems.append("an IFrame without a screenshot taken in the run beside it")
    if not row["objectives first"]:
        problems.append("the first cell does not state the objectives")
    if not row["key points"]:
        problems.append("no 'Key points' heading at the end")
    assert not problems, f"{path.name}: " + "; ".join(problems)


def test_the_checker_sees_an_overlong_lesson(tmp_path: Path) -> None:
    """The check can fail: a notebook of 6,000 words and a 30-line cell is over the bar."""
    cells = [
        {"cell_type": "markdown", "source": "## Objectives\n" + "word " * 6000},
        {"cell_type": "code", "source": "x = 1\n" * 30, "outputs": []},
        {"cell_type": "markdown", "source": "### Exercise 1: try\nDo it."},
        {"cell_type": "code", "source": "x = 2", "outputs": [{"text": "2\n"}]},
    ]
    path = tmp_path / "99_long.ipynb"
    path.write_text(json.dumps({"cells": cells}), encoding="utf-8")
    row = load(path)
    assert row["minutes"] > MAX_MINUTES and row["longest cell"] == 30
    assert row["exercises"] == 1 and row["visible solutions"] == 1
    assert not row["key points"] and not row["diagrams"]


if __name__ == "__main__":
    total = 0.0
    for nb in NOTEBOOKS:
        row = load(nb)
        total += row["minutes"]
        print(nb.stem, row)
    print(f"series: {total:.0f} minutes of reading")
    sys.exit(0)
