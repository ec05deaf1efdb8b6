"""The Korean edition (notebooks/ko, built by `make ko` from i18n/ko/*.po) keeps step with the
English.

Fast: nothing runs, the catalogs are updated in memory from the English notebooks as `make ko`
would. A shipped Korean lesson fails here when its English changed after it was translated (the
entry went fuzzy), when it was edited by hand, or when its code differs from the English.
"""

from __future__ import annotations

import importlib.util
import io
import re
import sys
from pathlib import Path

import nbformat
import polib
import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("i18n_ko", ROOT / "i18n" / "ko.py")
ko = importlib.util.module_from_spec(_spec)
sys.modules["i18n_ko"] = ko
_spec.loader.exec_module(ko)

SHIPPED = [lesson for lesson in ko.LESSONS if ko.korean(lesson).exists()]


def current(lesson: str) -> polib.POFile:
    """The lesson's catalog as `make ko` would leave it now."""
    english = nbformat.read(ko.english(lesson), as_version=4)
    return ko.update(ko.load(lesson), lesson, ko.markdown_cells(english))


def test_every_lesson_has_a_catalog_and_nothing_else_is_shipped() -> None:
    lessons = {p.stem for p in (ROOT / "notebooks").glob("[0-9]*.ipynb")}
    assert set(ko.LESSONS) == lessons, "i18n/ko.py's LESSONS must name every English lesson"
    assert {p.stem for p in ko.CATALOGS.glob("*.po")} == lessons
    assert {p.stem for p in ko.KO.glob("*.ipynb")} <= lessons


@pytest.mark.parametrize("lesson", SHIPPED)
def test_shipped_catalog_is_complete(lesson: str) -> None:
    st = ko.status(current(lesson), lesson)
    out = io.StringIO()
    ko.report(st, out)
    assert st.complete, f"make ko would not ship {lesson} now:\n{out.getvalue()}"


@pytest.mark.parametrize("lesson", SHIPPED)
def test_code_cells_and_outputs_equal_the_english(lesson: str) -> None:
    en = nbformat.read(ko.english(lesson), as_version=4)
    kr = nbformat.read(ko.korean(lesson), as_version=4)
    assert [c for c in kr.cells if c.cell_type != "markdown"] == \
        [c for c in en.cells if c.cell_type != "markdown"]
    assert kr.metadata == en.metadata
    assert [c.id for c in kr.cells if c.id != ko.NOTE_ID] == [c.id for c in en.cells]


@pytest.mark.parametrize("lesson", SHIPPED)
def test_make_ko_changes_nothing(lesson: str) -> None:
    """The committed Korean notebook is exactly what `make ko` builds (no hand edits), and
    updating an up-to-date catalog again changes nothing."""
    po = current(lesson)
    assert ko.catalog_path(lesson).read_text(encoding="utf-8") == po.__unicode__(), \
        f"run make ko: i18n/ko/{lesson}.po is not up to date with the English"
    again = ko.update(po, lesson, ko.markdown_cells(nbformat.read(ko.english(lesson), 4)))
    assert again.__unicode__() == po.__unicode__()
    built = ko.text_of(ko.build(lesson, po, set(SHIPPED)))
    assert ko.korean(lesson).read_text(encoding="utf-8") == built, \
        f"notebooks/ko/{lesson}.ipynb differs from what make ko builds: run make ko"


@pytest.mark.parametrize("lesson", SHIPPED)
def test_korean_lesson_names_its_section_and_links_the_glossary(lesson: str) -> None:
    kr = nbformat.read(ko.korean(lesson), as_version=4)
    note = next(c for c in kr.cells if c.id == ko.NOTE_ID).source
    assert re.search(r"12\.\d", note) and f"]({ko.GLOSSARY})" in note
    assert (ko.KO / ko.GLOSSARY).exists()
    text = "\n".join(c.source for c in kr.cells if c.cell_type == "markdown")
    assert len(re.findall(r"[가-힣]", text)) > 1000, "the Markdown is not Korean"


def glossary_rows() -> list[tuple[str, str, list[str]]]:
    """(Korean, English, lessons) for each row of the glossary's table."""
    rows = []
    for line in (ko.KO / ko.GLOSSARY).read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and re.search(r"[가-힣]", cells[0]) and cells[1] != "English":
            lessons = re.findall(r"\((\d\w*)\.ipynb", cells[2])
            rows.append((cells[0], cells[1], lessons))
    return rows


def plain(term: str) -> str:
    """A table cell's term without Markdown: **웹 소켓** → 웹 소켓."""
    return re.sub(r"[*`]", "", term).split(" (")[0].strip()


def test_glossary_terms_are_the_lessons_terms() -> None:
    """Each glossary term is used, in Korean and in English, by the lessons it points to."""
    rows = glossary_rows()
    assert len(rows) >= 20
    for korean, english, lessons in rows:
        assert lessons, f"glossary: {korean} names no lesson where it is measured"
        said = []
        for lesson in lessons:
            po = ko.load(lesson)
            ko_text = re.sub(r"[*`]", "", "\n".join(e.msgstr for e in po if not e.obsolete))
            en_text = re.sub(r"[*`]", "", "\n".join(e.msgid for e in po if not e.obsolete))
            if lesson in SHIPPED:
                assert plain(korean) in ko_text, f"{lesson} does not use {korean}"
            said.append(plain(english).lower() in en_text.lower())
        assert any(said), f"none of {lessons} says {english} (any more?): update the glossary"


def test_readme_ko_lists_the_lessons_in_order() -> None:
    text = (ROOT / "README.ko.md").read_text(encoding="utf-8")
    found = re.findall(r"notebooks/ko/(\d\w*)\.ipynb", text)
    assert list(dict.fromkeys(found)) == list(ko.LESSONS)
    assert "README.ko.md" in (ROOT / "README.md").read_text(encoding="utf-8")[:600], \
        "README.md links the Korean front door at its top"


# --- the test of the test: a changed English cell makes its entry fuzzy, and that fails -------

CELLS = [("a1", "# Title\n\nOne sentence."),
         ("b2", "```mermaid\nsequenceDiagram\n    A->>B: GET /poll\n```"),
         ("c3", "Key points.")]
KOREAN = {"# Title\n\nOne sentence.": "# 제목\n\n한 문장입니다.",
          CELLS[1][1]: "```mermaid\nsequenceDiagram\n    A->>B: GET /poll 요청\n```",
          "Key points.": "핵심 정리."}


def translated() -> polib.POFile:
    po = ko.update(polib.POFile(wrapwidth=0), "99_demo", CELLS)
    for e in po:
        e.msgstr = KOREAN[e.msgid]
    return po


def test_a_complete_catalog_ships() -> None:
    assert ko.status(translated(), "99_demo").complete


def test_a_changed_english_cell_goes_fuzzy_and_is_not_shipped() -> None:
    changed = [CELLS[0], ("b2", CELLS[1][1].replace("GET /poll", "GET /poll?after=3")), CELLS[2]]
    po = ko.update(translated(), "99_demo", changed)
    st = ko.status(po, "99_demo")
    assert not st.complete and len(st.fuzzy) == 1 and not st.untranslated
    [entry] = st.fuzzy
    assert entry.msgstr == KOREAN[CELLS[1][1]]            # the old Korean is kept, to be revised
    assert entry.previous_msgid == CELLS[1][1]             # with the English it was written from
    assert ko.cell_ids(entry) == ["b2"]
    assert not [e for e in po if e.obsolete]               # its old English is the #| msgid
    # unchanged cells keep their translation, not fuzzy
    assert sum(1 for e in po if e.translated() and not e.obsolete) == 2


def test_a_new_english_cell_is_untranslated_and_a_removed_one_obsolete() -> None:
    po = ko.update(translated(), "99_demo", [CELLS[0], ("d4", "A new cell."), CELLS[1]])
    st = ko.status(po, "99_demo")
    assert [e.msgid for e in st.untranslated] == ["A new cell."] and not st.fuzzy
    assert [e.msgid for e in po if e.obsolete] == ["Key points."]
    # the removed cell's translation comes back with the cell
    po = ko.update(po, "99_demo", CELLS)
    assert ko.status(po, "99_demo").complete


def test_a_translation_that_breaks_a_diagram_or_a_fold_is_not_shipped() -> None:
    po = translated()
    diagram = next(e for e in po if "mermaid" in e.msgid)
    diagram.msgstr = diagram.msgstr.replace("GET /poll 요청", "요청; 응답")
    assert ko.problems(diagram.msgid, diagram.msgstr)
    assert not ko.status(po, "99_demo").complete
    fold = "<details><summary>Solution</summary>\n\nx\n</details>"
    assert ko.problems(fold, "<details><summary>풀이</summary>\n\nx") != []
    assert ko.problems(fold, "<details><summary>풀이</summary>\n\nx\n</details>") == []


def test_a_rewrapped_english_cell_keeps_its_translation_and_a_changed_code_block_does_not() -> None:
    """Markdown renders rewrapped prose the same: no fuzzy for that. A code block is not prose."""
    rewrapped = [CELLS[0], CELLS[1], ("c3", "Key\npoints.")]
    assert ko.status(ko.update(translated(), "99_demo", rewrapped), "99_demo").complete
    assert ko.reflowed("a b\nc", "a\nb c") and not ko.reflowed("```\na b\n```", "```\na\nb\n```")
    po = ko.update(translated(), "99_demo", [CELLS[0], ("b2", CELLS[1][1].replace("    A", "A")),
                                             CELLS[2]])
    assert [ko.cell_ids(e) for e in ko.status(po, "99_demo").fuzzy] == [["b2"]]
