"""The lessons as a learner meets them: JupyterLab in Chromium, driven from Python.

nbval and nbconvert run a notebook's code, but a learner *opens* it: JupyterLab renders the
Markdown (a Mermaid diagram that does not parse shows an error box instead of the picture), and
Run All runs the cells with the page alive around them (an ``IFrame`` is a real second client
of the lesson's server). This module starts the pinned JupyterLab on a free loopback port with
its settings and workspaces in a temporary folder, opens notebooks in Debian's headless
Chromium (Playwright; never a downloaded browser) and reads what Lab shows.

    with Lab(root) as lab, lab_browser() as page:
        open_lab(page, lab)
        print(check_mermaid(page, "02_sse.ipynb", root / "02_sse.ipynb"))
        print(run_all(page, "05_chat_rooms.ipynb").errors)

``python -m labserver.labdriver`` (``make lab-check``) copies ``notebooks/`` into a temporary
folder, and for every notebook checks its diagrams and runs it with Run All; it prints one line
per notebook and exits non-zero if any diagram or cell failed.

How Lab is driven (see PITFALLS, "JupyterLab as the learner meets it"): ``window.jupyterapp``
comes from ``--LabApp.expose_app_in_browser``; ``/lab?reset`` opens no earlier workspace;
``windowingMode: "none"`` keeps every cell in the DOM; Run All waits until the kernel is idle.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .browser import chromium_sync
from .children import answers, free_port, terminate, wait_until
from .screenshot import SCREENSHOTS_ENV

#: JupyterLab settings for a driven Lab: every cell in the DOM, each cell's timing recorded, no
#: autosave into the notebooks, no news fetched from the internet.
SETTINGS = {
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none", "recordTiming": True},
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false",
                                                    "checkForUpdates": False},
}

#: A fenced Mermaid block in a Markdown cell's source.
MERMAID_FENCE = re.compile(r"^\s*(```|~~~)\s*mermaid\s*$", re.MULTILINE)


class Lab:
    """A JupyterLab serving ``root`` on a free loopback port, its settings, workspaces and
    runtime files in a temporary folder; no token (loopback only, for the driving browser)."""

    def __init__(self, root: str | Path, *, start_timeout_s: float = 60) -> None:
        self.root = Path(root)
        self.start_timeout_s = start_timeout_s
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._home: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        """The server's own log (and every kernel's stray output)."""
        assert self._home is not None
        return Path(self._home.name) / "lab.log"

    def start(self) -> Lab:
        """Start Lab and wait until it answers."""
        return self.launch().wait_ready()

    def launch(self) -> Lab:
        """Start Lab without waiting (start the browser meanwhile), then :meth:`wait_ready`."""
        self._home = tempfile.TemporaryDirectory(prefix="labdriver-")
        home = Path(self._home.name)
        for name, values in SETTINGS.items():
            target = home / "settings" / f"{name}.jupyterlab-settings"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(values), encoding="utf-8")
        env = {k: v for k, v in os.environ.items()
               if k not in {SCREENSHOTS_ENV, "JUPYTERHUB_SERVICE_PREFIX"}}
        env.update(JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
                   JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
                   JUPYTER_RUNTIME_DIR=str(home / "runtime"))
        self.port = free_port()
        command = [sys.executable, "-m", "jupyter", "lab", "--no-browser",
                   f"--port={self.port}", "--ServerApp.ip=127.0.0.1",
                   "--ServerApp.port_retries=0", f"--ServerApp.root_dir={self.root}",
                   "--IdentityProvider.token=", "--ServerApp.password=",
                   "--LabApp.expose_app_in_browser=True"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.append("--allow-root")
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log,
                                            stderr=subprocess.STDOUT)
        return self

    def wait_ready(self) -> Lab:
        assert self.process is not None, "launch() first"
        if wait_until(lambda: answers(f"{self.url}/api/status"), self.start_timeout_s,
                      process=self.process, interval_s=0.1):
            return self
        tail = self.log.read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"JupyterLab did not start on {self.url}:\n{tail}")

    def stop(self) -> None:
        terminate(self.process, 15)
        self.process = None
        if self._home is not None:
            self._home.cleanup()
            self._home = None

    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def lessons(folder: Path) -> list[str]:
    """The lessons in a folder and its translations (``ko/``), as paths relative to it."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("[0-9]*.ipynb")
                  if ".ipynb_checkpoints" not in p.parts)


def copy_notebooks(source: Path, target: Path, *, markdown_only: bool = False) -> list[str]:
    """Copy a folder's :func:`lessons` and their ``screenshots/`` to ``target``, so a
    driven Lab never writes into the committed notebooks; the names copied, sorted.

    ``markdown_only=True`` keeps only the Markdown cells, each noting its index in the original
    (``metadata.labdriver_cell``, which :func:`read_mermaid` reports): Lab opens such a copy in
    a third of the time (no code editors, no outputs), and its diagrams are the same."""
    names = lessons(source)
    for name in names:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        notebook = json.loads((source / name).read_text(encoding="utf-8"))
        if markdown_only:
            notebook["cells"] = [{**cell, "metadata": {**cell["metadata"], "labdriver_cell": i}}
                                 for i, cell in enumerate(notebook["cells"])
                                 if cell["cell_type"] == "markdown"]
        (target / name).write_text(json.dumps(notebook, ensure_ascii=False, indent=1),
                                   encoding="utf-8")
    for shots in source.rglob("screenshots"):
        if shots.is_dir():
            shutil.copytree(shots, target / shots.relative_to(source), dirs_exist_ok=True)
    return names


def mermaid_blocks(notebook: Path) -> dict[int, int]:
    """How many fenced Mermaid blocks each Markdown cell of a notebook holds (cell index →
    count; cells without one left out). In a Markdown-only copy the index is the original's."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    found = {}
    for index, cell in enumerate(cells):
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if cell["cell_type"] == "markdown" and (n := len(MERMAID_FENCE.findall(source))):
            found[cell.get("metadata", {}).get("labdriver_cell", index)] = n
    return found


@contextlib.contextmanager
def lab_browser(chromium: str | None = None, *, width: int = 1280,
                height: int = 900) -> Iterator[Any]:
    """A Playwright page (sync API) in a fresh headless Chromium, closed after."""
    with chromium_sync(chromium) as browser:
        yield browser.new_page(viewport={"width": width, "height": height})


def open_lab(page: Any, lab: Lab, *, timeout_s: float = 90) -> None:
    """Load JupyterLab in ``page`` with no earlier workspace, and wait until it has restored."""
    page.goto(f"{lab.url}/lab?reset", timeout=timeout_s * 1000)
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell",
                           timeout=timeout_s * 1000)
    page.evaluate("() => jupyterapp.restored.then(() => { window.__labRestored = true })")
    page.wait_for_function("() => window.__labRestored === true", timeout=timeout_s * 1000)


def open_notebook(page: Any, *paths: str, kernel: bool, timeout_s: float = 60) -> None:
    """Open notebooks (paths relative to Lab's root), each in a tab, the last one current,
    and wait until all their cells are in the DOM. ``kernel=False`` opens them without starting
    a kernel (for reading)."""
    page.evaluate(
        """async ({paths, kernel}) => {
             const args = {factory: 'Notebook'};
             if (!kernel) args.kernelPreference = {shouldStart: false, canStart: false};
             window.__nb = window.__nb || {};
             for (const path of paths) {
               const w = await jupyterapp.commands.execute('docmanager:open', {...args, path});
               jupyterapp.shell.activateById(w.id);
               window.__nb[path] = w;
             }
           }""",
        {"paths": list(paths), "kernel": kernel},
    )
    page.wait_for_function(
        """paths => paths.every(path => { const w = window.__nb[path];
             return w.context.isReady && w.content.model &&
               w.content.widgets.length === w.content.model.cells.length &&
               w.content.widgets.every(c => c.node.isConnected); })""",
        arg=list(paths), timeout=timeout_s * 1000,
    )


def close_notebook(page: Any, path: str) -> None:
    """Close the notebook's tab, shutting its kernel down (if it has one)."""
    page.evaluate(
        """async path => { const w = window.__nb[path]; delete window.__nb[path];
             if (w.sessionContext.session?.kernel) await w.sessionContext.shutdown();
             w.dispose(); }""",
        path,
    )


@dataclass
class MermaidCell:
    """One Markdown cell's diagrams: how many its source has, how many Lab drew, and the
    error text Lab shows for each it could not parse."""

    cell: int
    expected: int
    drawn: int
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.drawn == self.expected and not self.errors

    def __str__(self) -> str:
        said = "; ".join(self.errors) or "no error shown"
        return (f"cell {self.cell}: {self.drawn} of {self.expected} Mermaid diagram(s) drawn"
                + ("" if self.ok else f" — JupyterLab shows: {said}"))


_READ_MERMAID = """path => {
  const w = window.__nb[path];
  return w.content.widgets.map((cell, index) => {
    if (cell.model.type !== 'markdown') return null;
    const boxes = [...cell.node.querySelectorAll('.jp-RenderedMermaid')];
    return {index: cell.model.getMetadata('labdriver_cell') ?? index,
            drawn: boxes.filter(b => !b.classList.contains('jp-mod-warning')
                                     && b.querySelector('figure img, figure svg')).length,
            errors: boxes.filter(b => b.classList.contains('jp-mod-warning')).map(b => {
              // the error's <pre> sits in a closed <details>: innerText is empty there
              const pre = ([...b.querySelectorAll('details > pre')].pop() || b).cloneNode(true);
              pre.querySelectorAll('br').forEach(br => br.replaceWith('\\n'));
              return pre.textContent.trim();
            })};
  }).filter(Boolean);
}"""


def read_mermaid(page: Any, path: str, expected: dict[int, int]) -> list[MermaidCell]:
    """What Lab shows now for each Markdown cell with Mermaid in the source (or drawn)."""
    shown = {c["index"]: c for c in page.evaluate(_READ_MERMAID, path)}
    for c in shown.values():  # "Parse error on line N:", the line, its caret; not the list of
        c["errors"] = [" / ".join(e.splitlines()[:3]) for e in c["errors"]]  # tokens expected
    cells = set(expected) | {i for i, c in shown.items() if c["drawn"] or c["errors"]}
    return [MermaidCell(i, expected.get(i, 0), shown.get(i, {}).get("drawn", 0),
                        list(shown.get(i, {}).get("errors", []))) for i in sorted(cells)]


def check_mermaid(page: Any, path: str, source: Path, *,
                  timeout_s: float = 60) -> list[MermaidCell]:
    """Open a notebook (``path`` in Lab; ``source``, the file whose Mermaid blocks count)
    without a kernel, and wait (bounded) until Lab has drawn or refused every block; every cell
    with Mermaid, as Lab shows it. Closed after."""
    expected = mermaid_blocks(source)
    open_notebook(page, path, kernel=False)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            cells = read_mermaid(page, path, expected)
            if all(c.drawn + len(c.errors) >= c.expected for c in cells) or \
                    time.monotonic() > deadline:
                return cells
            time.sleep(0.1)
    finally:
        close_notebook(page, path)


@dataclass
class CellError:
    cell: int
    ename: str
    evalue: str

    def __str__(self) -> str:
        return f"cell {self.cell}: {self.ename}: {self.evalue}"


@dataclass
class RunAll:
    """What Run All did in a live Lab: errors shown, cells run, seconds, the IFrames' pages."""

    path: str
    seconds: float
    code_cells: int
    cells_run: int
    errors: list[CellError]
    iframes: list[str]
    slowest: list[tuple[int, float]]
    timed_out: bool = False
    running: int | None = None

    @property
    def ok(self) -> bool:
        return not self.errors and not self.timed_out and self.cells_run == self.code_cells

    def __str__(self) -> str:
        head = (f"{self.path}: {'ok' if self.ok else 'FAILED'} in {self.seconds:.0f} s, "
                f"{self.cells_run}/{self.code_cells} code cells run, "
                f"{len(self.iframes)} IFrame(s) live")
        lines = [head] + [f"  {e}" for e in self.errors]
        if self.timed_out:
            lines.append(f"  timed out, cell {self.running} still running")
        if self.slowest:
            lines.append("  slowest cells: " + ", ".join(f"{i} ({s:.1f} s)"
                                                        for i, s in self.slowest))
        return "\n".join(lines)


_READ_RUN = """path => {
  const w = window.__nb[path];
  // an empty code cell (an exercise's answer cell) is never sent to the kernel: not counted
  const cells = w.content.widgets.map((cell, index) => ({cell, index}))
                 .filter(({cell}) => cell.model.type === 'code' &&
                                     cell.model.sharedModel.getSource().trim() !== '');
  const errors = [], timing = [];
  let run = 0, running = null;
  for (const {cell, index} of cells) {
    if (cell.model.executionCount !== null) run += 1;
    if (cell.model.executionState === 'running' || cell.promptNode?.innerText.includes('*'))
      running = running ?? index;
    for (const o of cell.model.outputs.toJSON())
      if (o.output_type === 'error') errors.push({cell: index, ename: o.ename, evalue: o.evalue});
    const ex = cell.model.getMetadata('execution') || {};
    const start = ex['iopub.execute_input'], end = ex['shell.execute_reply'];
    if (start && end) timing.push([index, (Date.parse(end) - Date.parse(start)) / 1000]);
  }
  const iframes = [...w.node.querySelectorAll('iframe')].map(f => f.src);
  return {code: cells.length, cells: w.content.widgets.length, run, running, errors, timing,
          iframes};
}"""


def run_all(page: Any, path: str, *, timeout_s: float = 600, kernel_timeout_s: float = 60,
            keep_going: bool = True) -> RunAll:
    """Open a notebook with its kernel, wait until the kernel is idle, Run All, and wait until
    every cell has run; what Lab shows. An error stops Run All; with ``keep_going`` the run goes
    on from the next cell, so that every error is reported. The notebook's tab is closed and its
    kernel shut down after."""
    started = time.monotonic()
    open_notebook(page, path, kernel=True)
    try:
        page.wait_for_function(
            "path => window.__nb[path].sessionContext.session?.kernel?.status === 'idle'",
            arg=path, timeout=kernel_timeout_s * 1000)
        command, timed_out, resumed_after = "notebook:run-all-cells", False, -1
        deadline = time.monotonic() + timeout_s
        while True:
            page.evaluate(
                """([path, command]) => { const w = window.__nb[path];
                     jupyterapp.shell.activateById(w.id);
                     window.__runAll = {done: false};
                     jupyterapp.commands.execute(command).then(
                       ok => { window.__runAll = {done: true, ok}; },
                       e => { window.__runAll = {done: true, ok: false, error: String(e)}; });
                   }""",
                [path, command])
            try:
                page.wait_for_function("() => window.__runAll.done", polling=250,
                                       timeout=max(deadline - time.monotonic(), 1) * 1000)
                # Outputs that arrive after the reply (an IFrame, a late stream) settle while
                # the kernel goes back to idle.
                page.wait_for_function(
                    "path => window.__nb[path].sessionContext.session?.kernel?.status === 'idle'",
                    arg=path, timeout=30_000)
            except Exception as exc:  # Playwright's TimeoutError: report the cell still running
                if "Timeout" not in type(exc).__name__:
                    raise
                timed_out = True
                break
            seen = page.evaluate(_READ_RUN, path)
            # An error stops Run All (the kernel drops the queued cells). To see every error at
            # once, go on from the cell after the last one that failed ("Run Selected Cell and
            # All Below"), as a learner who reads the error and goes on would.
            after = max((e["cell"] for e in seen["errors"]), default=-1)
            if not keep_going or after <= resumed_after or after + 1 >= seen["cells"]:
                break
            resumed_after = after
            page.evaluate("([path, i]) => { window.__nb[path].content.activeCellIndex = i; }",
                          [path, after + 1])
            command = "notebook:run-all-below"
        seen = page.evaluate(_READ_RUN, path)
        slowest = sorted(seen["timing"], key=lambda t: -t[1])[:3]
        return RunAll(path=path, seconds=time.monotonic() - started, code_cells=seen["code"],
                      cells_run=seen["run"],
                      errors=[CellError(e["cell"], e["ename"], e["evalue"])
                              for e in seen["errors"]],
                      iframes=seen["iframes"], slowest=[(i, s) for i, s in slowest],
                      timed_out=timed_out, running=seen["running"] if timed_out else None)
    finally:
        close_notebook(page, path)


def main(argv: list[str] | None = None) -> int:
    """``make lab-check``: every lesson's diagrams, then Run All in a live Lab."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notebooks", type=Path,
                        default=Path(__file__).resolve().parent.parent / "notebooks")
    parser.add_argument("--only", nargs="*", default=[],
                        help="notebook names (or prefixes: 05, 03b_ws) to check")
    parser.add_argument("--no-run", action="store_true", help="diagrams only, no Run All")
    parser.add_argument("--timeout", type=float, default=600, help="per notebook (s)")
    args = parser.parse_args(argv)
    failed = 0
    with tempfile.TemporaryDirectory(prefix="lab-check-") as root:
        names = copy_notebooks(args.notebooks, Path(root))
        if args.only:
            names = [n for n in names if any(n.startswith(o) for o in args.only)]
        with Lab(root) as lab, lab_browser() as page:
            open_lab(page, lab)
            for name in names:
                diagrams = check_mermaid(page, name, Path(root) / name)
                bad = [c for c in diagrams if not c.ok]
                failed += bool(bad)
                drawn = sum(c.drawn for c in diagrams)
                print(f"{name}: Mermaid " + (f"ok, {drawn} drawn" if not bad else "FAILED"),
                      flush=True)
                for cell in bad:
                    print(f"  {cell}", flush=True)
                if not args.no_run:
                    result = run_all(page, name, timeout_s=args.timeout)
                    failed += not result.ok
                    print(result, flush=True)
    print("lab-check: " + (f"{failed} failure(s)" if failed else "every notebook passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
