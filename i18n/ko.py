"""The Korean edition of the lessons, kept in step with the English by gettext catalogs.

Theory of operation. The English notebooks (``notebooks/NN_name.ipynb``) are the source. Each
lesson has one catalog, ``i18n/ko/NN_name.po`` (polib: the format Sphinx, JupyterLab's language
packs and every gettext tool read): one entry per English Markdown cell — ``msgid`` the cell's
whole text, ``msgstr`` its Korean. A whole cell is the unit, so a Mermaid diagram, a table or a
folded ``<details>`` solution is translated in one piece and cannot be cut in half.

``make ko`` (this script) does three things, in order:

1. **update** each catalog from its English notebook, as ``msgmerge`` does: a cell whose text is
   in the catalog keeps its translation; a cell that changed keeps its old translation marked
   ``fuzzy``, with the English it was translated from as the previous msgid (``#| msgid``), so a
   translator sees the change; a new cell gets an empty entry; entries no cell uses any more
   become obsolete (``#~``), kept so that a cell which comes back finds its translation;
2. **build** ``notebooks/ko/NN_name.ipynb`` for every lesson whose catalog is complete — every
   entry translated, none fuzzy, none failing the checks of :func:`problems` — from the English
   notebook: the same cells (code, outputs, ids, byte for byte), each Markdown cell replaced by
   its translation, and one note inserted after the title (the book's section, the glossary,
   the English original). A lesson whose catalog is not complete is not shipped: its Korean
   notebook is removed, so a Korean lesson never runs code the English one no longer has;
3. **report** per lesson what is shipped and which cells are stale (fuzzy or untranslated).

Nobody edits a Korean notebook by hand: edit the catalog (any PO editor, or ``import`` below).

    .venv/bin/python i18n/ko.py              # update, build, report (what `make ko` runs)
    .venv/bin/python i18n/ko.py --check      # change nothing; exit 1 if a shipped lesson is stale
    .venv/bin/python i18n/ko.py export 01_polling > 01.txt   # stale cells, English beside Korean
    .venv/bin/python i18n/ko.py import 01.txt                # write the Korean back, unfuzzied

The ``export``/``import`` text is a translator's convenience, not a second store: blocks
``===== <cell id>`` with the Korean after the ``-----`` line.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import polib

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
CATALOGS = ROOT / "i18n" / "ko"
KO = NOTEBOOKS / "ko"
GLOSSARY = "glossary.md"

#: The book's sections (《Node.js 교과서》 12장) each lesson rebuilds, named as the book names them.
SECTIONS = {
    "12.1": "12.1 웹 소켓 이해하기",
    "12.2": "12.2 ws 모듈로 웹 소켓 사용하기",
    "12.3": "12.3 Socket.IO 사용하기",
    "12.4": "12.4 실시간 GIF 채팅방 만들기",
    "12.5": "12.5 미들웨어와 소켓 연결하기",
    "12.7": "12.7 핵심 정리",
}
LESSONS = {
    "01_polling": ["12.1"],
    "02_sse": ["12.1"],
    "03_ws": ["12.1", "12.2"],
    "03b_ws_in_practice": ["12.2"],
    "04_socketio": ["12.3", "12.5"],
    "05_chat_rooms": ["12.4", "12.5", "12.7"],
    "06_compare": ["12.1", "12.3"],
    "07_scale_out": ["12.7"],
    "08_production": ["12.2", "12.7"],
}
#: An old translation is offered (fuzzy) for a changed cell this similar to its old English.
SIMILAR = 0.6
NOTE_ID = "ko-note"


def english(lesson: str) -> Path:
    return NOTEBOOKS / f"{lesson}.ipynb"


def catalog_path(lesson: str) -> Path:
    return CATALOGS / f"{lesson}.po"


def korean(lesson: str) -> Path:
    return KO / f"{lesson}.ipynb"


def markdown_cells(nb: nbformat.NotebookNode) -> list[tuple[str, str]]:
    """(cell id, text) of every Markdown cell, in order."""
    return [(c["id"], c["source"]) for c in nb.cells if c.cell_type == "markdown"]


def cell_ids(entry: polib.POEntry) -> list[str]:
    """The cell ids of an entry's ``#: NN_name.ipynb:ID`` references."""
    refs = [f"{name}:{line}" if line else name for name, line in entry.occurrences]
    return [ref.rsplit(":", 1)[1] for ref in refs if ":" in ref]


def load(lesson: str) -> polib.POFile:
    path = catalog_path(lesson)
    if path.exists():
        return polib.pofile(str(path), wrapwidth=0)
    po = polib.POFile(wrapwidth=0)
    po.metadata = {
        "Project-Id-Version": f"realtime-lab {lesson}",
        "Language": "ko",
        "MIME-Version": "1.0",
        "Content-Type": "text/plain; charset=UTF-8",
        "Content-Transfer-Encoding": "8bit",
    }
    return po


def reflowed(a: str, b: str) -> bool:
    """Whether two cells differ only in how their prose lines wrap (Markdown renders them the
    same): the code blocks identical, the words between them the same."""
    split = re.compile(r"(```.*?```)", re.S)
    pa, pb = split.split(a), split.split(b)
    return len(pa) == len(pb) and all(x == y if x.startswith("```") else x.split() == y.split()
                                      for x, y in zip(pa, pb, strict=True))


def update(po: polib.POFile, lesson: str, cells: list[tuple[str, str]]) -> polib.POFile:
    """A new catalog for ``cells`` (msgmerge's rules, see the module docstring)."""
    new = polib.POFile(wrapwidth=0)
    new.metadata = dict(po.metadata)
    old = list(po)
    by_text = {e.msgid: e for e in old}
    by_cell = {cid: e for e in old for cid in cell_ids(e)}
    used: set[str] = set()
    made: dict[str, polib.POEntry] = {}

    def offer(text: str, cid: str) -> polib.POEntry | None:
        """The old entry to take a fuzzy translation from: the same cell, else a similar one."""
        candidate = by_cell.get(cid)
        if candidate is not None and candidate.msgstr and candidate.msgid not in used:
            return candidate
        best, score = None, SIMILAR
        for e in old:
            if e.msgstr and e.msgid not in used and e.msgid not in cells_text:
                ratio = difflib.SequenceMatcher(None, e.msgid, text, autojunk=False).ratio()
                if ratio > score:
                    best, score = e, ratio
        return best

    cells_text = {text for _, text in cells}
    for cid, text in cells:
        if text in made:
            made[text].occurrences.append((f"{lesson}.ipynb", cid))
            continue
        entry = polib.POEntry(msgid=text, msgstr="", occurrences=[(f"{lesson}.ipynb", cid)])
        same = by_text.get(text)
        if same is not None and same.msgstr:
            entry.msgstr = same.msgstr
            entry.flags = list(same.flags)
            entry.previous_msgid = same.previous_msgid
            entry.tcomment = same.tcomment
            used.add(text)
        else:
            source = offer(text, cid)
            if source is not None:
                entry.msgstr = source.msgstr
                entry.flags = ["fuzzy"]
                # the English the Korean was written from (kept across several changes)
                entry.previous_msgid = (source.previous_msgid if source.fuzzy else None) or \
                    source.msgid
                entry.tcomment = source.tcomment
                used.add(source.msgid)
        if entry.fuzzy and entry.previous_msgid and reflowed(entry.previous_msgid, text):
            entry.flags.remove("fuzzy")           # only rewrapped: the translation still holds
            entry.previous_msgid = None
        made[text] = entry
        new.append(entry)
    for e in old:
        if e.msgid not in made and e.msgid not in used and e.msgstr:
            gone = polib.POEntry(msgid=e.msgid, msgstr=e.msgstr, obsolete=True)
            new.append(gone)
    return new


# --- checks on a translation ------------------------------------------------------------------

FENCE = re.compile(r"^\s*```", re.M)
MERMAID = re.compile(r"```mermaid\n(.*?)```", re.S)
LINK = re.compile(r"(\]\(|src=\")([^)\"\s]+)")


def mermaid_skeleton(block: str) -> list[str]:
    """A diagram with its words taken out: who talks to whom, with which arrow, in which order."""
    skeleton = []
    for line in block.strip().splitlines():
        line = line.strip()
        line = re.sub(r"^(participant|actor)\s+(\S+)(\s+as\s+.*)?$", r"\1 \2", line)
        line = re.sub(r"^(Note\s+(?:over|left of|right of)\s+[^:]+):.*$", r"\1:", line)
        line = re.sub(r"^((?:loop|alt|else|opt|par|and|critical|break|rect|box)\b).*$", r"\1", line)
        line = re.sub(r"^([^:]*?(?:-->>|->>|-->|->|--x|-x|--\)|-\))[+-]?[^:]*):.*$", r"\1:", line)
        line = re.sub(r"^(title)\b.*$", r"\1", line)
        skeleton.append(line)
    return skeleton


def mermaid_texts(block: str) -> list[str]:
    """The words of a diagram's messages and notes (where a `;` would end the statement)."""
    return [line.split(":", 1)[1] for line in block.splitlines() if ":" in line]


def problems(msgid: str, msgstr: str) -> list[str]:
    """What a translation breaks in its cell's structure, in words (empty: nothing)."""
    found = []

    def count(pattern: str, text: str) -> int:
        return len(re.findall(pattern, text, re.M))

    for name, pattern in [("code fences", FENCE.pattern), ("<details>", r"<details"),
                          ("</details>", r"</details>"), ("<summary>", r"<summary"),
                          ("table rows", r"^\s*\|"), ("headings", r"^#{1,6} "),
                          ("images", r"!\[")]:
        want, got = count(pattern, msgid), count(pattern, msgstr)
        if want != got:
            found.append(f"{name}: {got} in the Korean, {want} in the English")
    en, ko = MERMAID.findall(msgid), MERMAID.findall(msgstr)
    if len(en) != len(ko):
        found.append(f"mermaid blocks: {len(ko)} in the Korean, {len(en)} in the English")
    for i, (a, b) in enumerate(zip(en, ko, strict=False)):
        if mermaid_skeleton(a) != mermaid_skeleton(b):
            diff = [d for d in difflib.unified_diff(mermaid_skeleton(a), mermaid_skeleton(b),
                                                    lineterm="", n=0)][2:5]
            found.append(f"mermaid block {i + 1} differs in shape: {' | '.join(diff)}")
        if any(";" in text for text in mermaid_texts(b)):
            found.append(f"mermaid block {i + 1}: a ';' in a message ends the statement")
    if re.search(r"[가-힣]", msgid) is None and msgstr.strip() and \
            re.search(r"[가-힣]", msgstr) is None and len(re.sub(r"`[^`]*`|\W", "", msgid)) > 40:
        found.append("no Hangul in the Korean")
    return found


# --- building a Korean notebook -------------------------------------------------------------


@dataclass
class Status:
    lesson: str
    total: int = 0
    fuzzy: list[polib.POEntry] = field(default_factory=list)
    untranslated: list[polib.POEntry] = field(default_factory=list)
    broken: list[tuple[polib.POEntry, list[str]]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.total > 0 and not (self.fuzzy or self.untranslated or self.broken)

    @property
    def translated(self) -> int:
        return self.total - len(self.fuzzy) - len(self.untranslated)


def status(po: polib.POFile, lesson: str) -> Status:
    st = Status(lesson)
    for e in po:
        if e.obsolete:
            continue
        st.total += 1
        if not e.msgstr:
            st.untranslated.append(e)
        elif e.fuzzy:
            st.fuzzy.append(e)
        elif found := problems(e.msgid, e.msgstr):
            st.broken.append((e, found))
    return st


def localize_links(text: str, shipped: set[str]) -> str:
    """Relative links written for ``notebooks/`` made to work from ``notebooks/ko/``: a lesson
    links to its Korean sibling when that is shipped, anything else one folder up."""
    parts = re.split(r"(```.*?```)", text, flags=re.S)

    def fix(m: re.Match[str]) -> str:
        target = m.group(2)
        if target.startswith(GLOSSARY) or re.match(r"^([a-z]+:|/|#|\.\./)", target):
            return m.group(0)
        lesson = re.match(r"^(\d\w*)\.ipynb", target)
        if lesson and lesson.group(1) in shipped:
            return m.group(0)
        return m.group(1) + "../" + target

    return "".join(p if p.startswith("```") else LINK.sub(fix, p) for p in parts)


def object_particle(word: str) -> str:
    """을 after a final consonant (받침), 를 after a vowel: 정리를, 이해하기를."""
    last = word[-1]
    if "가" <= last <= "힣":
        return "을" if (ord(last) - ord("가")) % 28 else "를"
    return "을(를)"


def note(lesson: str) -> str:
    sections = ", ".join(f"**{SECTIONS[s]}**" for s in LESSONS[lesson])
    particle = object_particle(SECTIONS[LESSONS[lesson][-1]])
    return (f"> **한국어판** · 《Node.js 교과서》 12장의 {sections}{particle} 다시 만듭니다.  \n"
            f"> 용어는 [용어집]({GLOSSARY})에 영어와 함께 모았습니다. "
            f"영어 원문: [{lesson}](../{lesson}.ipynb) · 코드와 출력은 원문과 같습니다.")


def build(lesson: str, po: polib.POFile, shipped: set[str]) -> nbformat.NotebookNode:
    """The Korean notebook of a complete catalog: the English notebook, Markdown translated."""
    nb = nbformat.read(english(lesson), as_version=4)
    ko = {e.msgid: e.msgstr for e in po if not e.obsolete}
    ko_nb = copy.deepcopy(nb)
    for cell in ko_nb.cells:
        if cell.cell_type == "markdown":
            cell.source = localize_links(ko[cell.source], shipped)
    first = next(i for i, c in enumerate(ko_nb.cells) if c.cell_type == "markdown")
    ko_nb.cells.insert(first + 1, nbformat.v4.new_markdown_cell(note(lesson), id=NOTE_ID))
    return ko_nb


def text_of(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"


def run(*, write: bool, out=sys.stdout) -> list[Status]:
    """Update every catalog, build every complete lesson, report. With ``write=False`` nothing
    is written; the statuses say what would be shipped."""
    statuses, catalogs = [], {}
    for lesson in LESSONS:
        po = update(load(lesson), lesson, markdown_cells(nbformat.read(english(lesson), 4)))
        catalogs[lesson] = po
        statuses.append(status(po, lesson))
        if write:
            CATALOGS.mkdir(parents=True, exist_ok=True)
            path = catalog_path(lesson)
            new = po.__unicode__()
            if not path.exists() or path.read_text(encoding="utf-8") != new:
                path.write_text(new, encoding="utf-8")
    shipped = {st.lesson for st in statuses if st.complete}
    for st in statuses:
        target = korean(st.lesson)
        if st.complete:
            text = text_of(build(st.lesson, catalogs[st.lesson], shipped))
            if write and (not target.exists() or target.read_text(encoding="utf-8") != text):
                target.write_text(text, encoding="utf-8")
        elif write and target.exists():
            target.unlink()
        report(st, out)
    return statuses


def first_line(text: str) -> str:
    line = next((s for s in text.splitlines() if s.strip()), "")
    return line[:70] + ("…" if len(line) > 70 else "")


def report(st: Status, out) -> None:
    mark = "shipped" if st.complete else "not shipped"
    print(f"{st.lesson:20} {st.translated:3}/{st.total:<3} translated  "
          f"{len(st.fuzzy)} fuzzy  {len(st.untranslated)} untranslated  → {mark}", file=out)
    for kind, entries in (("fuzzy", st.fuzzy), ("untranslated", st.untranslated)):
        for e in entries:
            print(f"    {kind:12} {','.join(cell_ids(e))}: {first_line(e.msgid)}", file=out)
    for e, found in st.broken:
        print(f"    check failed {','.join(cell_ids(e))}: {'; '.join(found)}", file=out)


# --- the translator's text form ---------------------------------------------------------------


def export(lesson: str, everything: bool = False) -> str:
    po = update(load(lesson), lesson, markdown_cells(nbformat.read(english(lesson), 4)))
    blocks = []
    for e in po:
        if e.obsolete or (e.msgstr and not e.fuzzy and not everything):
            continue
        head = f"===== {lesson} {cell_ids(e)[0]}"
        previous = ""
        if e.fuzzy and e.previous_msgid:
            changes = difflib.unified_diff(e.previous_msgid.splitlines(), e.msgid.splitlines(),
                                           "translated from", "English now", lineterm="", n=0)
            previous = "\n".join(changes) + "\n~~~~~\n"
        blocks.append(f"{head}\n{previous}{e.msgid}\n-----\n{e.msgstr}\n")
    return "\n".join(blocks)


def import_(path: Path) -> None:
    """Write the Korean of ``===== lesson id`` blocks into their catalogs (fuzzy cleared)."""
    text = path.read_text(encoding="utf-8")
    blocks = re.split(r"^===== ", text, flags=re.M)[1:]
    pos: dict[str, polib.POFile] = {}
    for block in blocks:
        head, _, rest = block.partition("\n")
        lesson, cid = head.split()[:2]
        en, _, ko = ("\n" + rest).rpartition("\n-----\n")
        en, ko = en.rpartition("\n~~~~~\n")[2].strip("\n"), ko.strip("\n")
        if lesson not in pos:
            pos[lesson] = update(load(lesson), lesson,
                                 markdown_cells(nbformat.read(english(lesson), 4)))
        entry = next((e for e in pos[lesson] if not e.obsolete and cid in cell_ids(e)), None)
        if entry is None:
            # the cell is gone (rewritten under a new id): keep the translation of the English
            # it was made from, so that update() offers it, fuzzy, to the cell most like it
            print(f"{lesson}: no cell {cid} any more; kept as obsolete", file=sys.stderr)
            if en:
                pos[lesson].append(polib.POEntry(msgid=en, msgstr=ko, obsolete=True))
            continue
        if found := problems(entry.msgid, ko):
            print(f"{lesson} {cid}: {'; '.join(found)}", file=sys.stderr)
        entry.msgstr = ko
        if en and en != entry.msgid:
            # the English changed after the export: the Korean is of the exported English
            entry.flags = sorted(set(entry.flags) | {"fuzzy"})
            entry.previous_msgid = en
            print(f"{lesson} {cid}: the English changed since the export; fuzzy", file=sys.stderr)
            continue
        if entry.fuzzy:
            entry.flags.remove("fuzzy")
        entry.previous_msgid = None
    for lesson, po in pos.items():
        po = update(po, lesson, markdown_cells(nbformat.read(english(lesson), 4)))
        CATALOGS.mkdir(parents=True, exist_ok=True)
        catalog_path(lesson).write_text(po.__unicode__(), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="?", default="make", choices=["make", "export", "import"])
    parser.add_argument("arg", nargs="?", help="export: a lesson; import: a file")
    parser.add_argument("--all", action="store_true", help="export every entry, not only stale")
    parser.add_argument("--check", action="store_true", help="write nothing; 1 if out of step")
    args = parser.parse_args(argv)
    if args.command == "export":
        sys.stdout.write(export(args.arg, args.all))
        return 0
    if args.command == "import":
        import_(Path(args.arg))
        return 0
    statuses = run(write=not args.check)
    if args.check:
        stale = [st.lesson for st in statuses if korean(st.lesson).exists() and not st.complete]
        return 1 if stale else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
