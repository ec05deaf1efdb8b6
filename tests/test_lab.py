"""The lessons as a learner meets them: every notebook opened in the pinned JupyterLab in Chromium.

Every fenced Mermaid block of every notebook must be drawn (``<figure><img>`` inside
``.jp-RenderedMermaid``); a block Lab cannot parse shows ``.jp-mod-warning`` with "Parse error on
line N" and fails the test, naming the notebook, the cell and Lab's text. One Lab serves the
whole module (a temporary copy of the notebooks' Markdown cells, which is all a diagram needs),
so all notebooks cost one Lab start.

Run All in the live Lab is checked here on a small notebook (each error reported with its cell,
ename and evalue; an IFrame's page a real client of the server). ``make lab-check``
(``python -m labserver.labdriver``) runs every lesson with Run All: minutes, beyond the
``make test`` budget.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labserver import labdriver

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
LESSONS = labdriver.lessons(NOTEBOOKS)  # and their translations, notebooks/ko/

#: A Note with a ``;``: a statement separator in Mermaid, so this diagram does not parse.
BROKEN = """```mermaid
sequenceDiagram
    participant B as Browser
    participant S as Server
    B->>S: GET /sse
    Note over B,S: the connection drops; B waits retry ms
    S-->>B: id: 3
```"""
GOOD = """```mermaid
sequenceDiagram
    B->>S: GET /poll
    S-->>B: 200, [] (nothing new)
```"""


@pytest.fixture(scope="module")
def lab_root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="test-lab-") as root:
        labdriver.copy_notebooks(NOTEBOOKS, Path(root), markdown_only=True)
        yield Path(root)


@pytest.fixture(scope="module")
def lab_page(chromium_path: str, lab_root: Path) -> Iterator[Any]:
    """One JupyterLab on a free loopback port, loaded once in one headless Chromium."""
    lab = labdriver.Lab(lab_root).launch()  # Lab and Chromium start side by side
    try:
        with labdriver.lab_browser(chromium_path) as page:
            labdriver.open_lab(page, lab.wait_ready())
            yield page
    finally:
        lab.stop()


def failures(cells: list[labdriver.MermaidCell]) -> list[str]:
    return [str(cell) for cell in cells if not cell.ok]


@pytest.mark.parametrize("name", LESSONS)
def test_every_mermaid_diagram_renders(lab_page: Any, lab_root: Path, name: str) -> None:
    cells = labdriver.check_mermaid(lab_page, name, lab_root / name)
    expected = labdriver.mermaid_blocks(lab_root / name)  # cell indices: the notebook's own
    bad = failures(cells)
    assert not bad, f"{name}: " + "; ".join(bad)
    assert sum(c.drawn for c in cells) == sum(expected.values())


def write_notebook(path: Path, *markdown: str) -> None:
    cells = [{"cell_type": "markdown", "metadata": {}, "source": text} for text in markdown]
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4,
                                "nbformat_minor": 5}), encoding="utf-8")


def test_a_diagram_that_does_not_parse_fails_with_labs_error(lab_page: Any,
                                                             lab_root: Path) -> None:
    """The test of the test: a ``;`` in a Note is caught, with the cell and Lab's own text."""
    write_notebook(lab_root / "zz_broken.ipynb", "# A lesson", GOOD, BROKEN)
    cells = labdriver.check_mermaid(lab_page, "zz_broken.ipynb", lab_root / "zz_broken.ipynb")
    assert [(c.cell, c.expected, c.drawn) for c in cells] == [(1, 1, 1), (2, 1, 0)]
    [bad] = failures(cells)
    assert bad.startswith("cell 2: 0 of 1 Mermaid diagram(s) drawn — JupyterLab shows: ")
    assert "Parse error on line 5" in bad and "B waits retry ms" in bad, bad


def test_mermaid_blocks_counts_fences_in_markdown_only(tmp_path: Path) -> None:
    path = tmp_path / "x.ipynb"
    write_notebook(path, GOOD + "\n\ntext\n\n" + GOOD, "no diagram", "```python\nx = 1\n```")
    notebook = json.loads(path.read_text())
    notebook["cells"].append({"cell_type": "code", "metadata": {}, "outputs": [],
                              "execution_count": None, "source": "'''\n```mermaid\n'''"})
    path.write_text(json.dumps(notebook))
    assert labdriver.mermaid_blocks(path) == {0: 2}


def test_a_markdown_only_copy_keeps_the_cell_indices(tmp_path: Path) -> None:
    source, copy = tmp_path / "src", tmp_path / "copy"
    source.mkdir()
    notebook = {"nbformat": 4, "nbformat_minor": 5, "metadata": {},
                "cells": [code("x = 1"), {"cell_type": "markdown", "metadata": {},
                                          "source": GOOD}, code("y = 2")]}
    (source / "01_x.ipynb").write_text(json.dumps(notebook))
    assert labdriver.copy_notebooks(source, copy, markdown_only=True) == ["01_x.ipynb"]
    assert [c["cell_type"] for c in json.loads((copy / "01_x.ipynb").read_text())["cells"]] \
        == ["markdown"]
    assert labdriver.mermaid_blocks(copy / "01_x.ipynb") == {1: 1}


def code(source: str) -> dict[str, Any]:
    return {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
            "source": source}


#: A cell that fails unless the IFrame above it is a live page with its EventSource open.
WAIT_FOR_THE_IFRAME = """import json, time, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
for _ in range(400):  # 20 s at most, for a loaded machine
    stats = json.load(opener.open(URL + "/stats"))
    if stats["transports"]["sse"]["open"] == 1:
        break
    time.sleep(0.05)
assert stats["transports"]["sse"]["open"] == 1, "the IFrame's page never connected"
"""


def test_run_all_reports_each_error_and_runs_the_iframe(lab_page: Any, lab_root: Path,
                                                        srv: Any) -> None:
    """Run All in the live Lab: every error with its cell, ename and evalue (the run goes on
    after one); an IFrame's page is loaded, a real client of the server."""
    notebook = {"nbformat": 4, "nbformat_minor": 5,
                "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                            "language": "python"}},
                "cells": [code("from IPython.display import IFrame\nx = 1"),
                          code(f"IFrame({srv.url + '/sse.html'!r}, width=600, height=300)"),
                          code("raise ValueError('broken on purpose')"),
                          code(WAIT_FOR_THE_IFRAME.replace("URL", repr(srv.url))),
                          code("1 / 0")]}
    (lab_root / "zz_run.ipynb").write_text(json.dumps(notebook), encoding="utf-8")
    result = labdriver.run_all(lab_page, "zz_run.ipynb", timeout_s=60)
    assert [str(e) for e in result.errors] == ["cell 2: ValueError: broken on purpose",
                                               "cell 4: ZeroDivisionError: division by zero"]
    assert (result.code_cells, result.cells_run, result.ok) == (5, 5, False)
    assert result.iframes == [srv.url + "/sse.html"]
