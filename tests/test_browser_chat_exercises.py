"""05_chat_rooms' JavaScript exercises, checked in Chromium: each solution, as the notebook
shows it, is added to the chapter's chat page (``chat.html``) in two browser contexts (two
users), and what it does is checked there — a typing indicator, and deleting a room through
``DELETE rooms/{room}``.

The solutions are read from the notebook itself (the ```javascript block inside each
exercise's ``<details>``), so a change to the lesson's code is a change to what this tests.
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import labserver

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "05_chat_rooms.ipynb"


def solution(title: str) -> str:
    """The JavaScript solution of the exercise whose heading contains ``title``."""
    cells = json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]
    text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    start = text.index(title)
    details = text[text.index("<details>", start):text.index("</details>", start)]
    found = re.search(r"```javascript\n(.*?)```", details, re.S)
    assert found, f"no JavaScript solution under {title!r}"
    return found.group(1)


def chat_page(page: Any, url: str, room: str, js: str) -> str:
    """Open the chat page, join ``room``, add the solution's code; the user's name."""
    page.goto(url + "/chat.html")
    page.wait_for_function("document.getElementById('sid').textContent.length > 15")
    page.fill("#room-name", room)
    page.click("#join")
    page.wait_for_function(f"document.getElementById('current').textContent === '{room}'")
    page.add_script_tag(content=js)  # as a learner pastes it into the console
    return page.text_content("#me")


def rooms(srv: labserver.Server) -> list[str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(srv.url + "/rooms", timeout=5) as resp:
        return [r["room"] for r in json.loads(resp.read())["rooms"]]


def test_exercise_1_typing_indicator(srv: labserver.Server, browser_context_factory: Any) -> None:
    js = solution("Exercise 1")
    ann, bob = browser_context_factory(), browser_context_factory()
    chat_page(ann, srv.url, "t", js)
    bob_name = chat_page(bob, srv.url, "t", js)
    bob.type("#text", "hel")
    ann.wait_for_function(
        "n => document.getElementById('typing').textContent.includes(n)", arg=bob_name)
    assert "is typing in t" in ann.text_content("#typing")
    assert bob.text_content("#typing") == ""  # the typist is not told about itself
    ann.wait_for_function("document.getElementById('typing').textContent === ''",
                          timeout=5000)  # cleared after 2 s of quiet


def test_exercise_2_delete_a_room_through_the_route(
    srv: labserver.Server, browser_context_factory: Any,
) -> None:
    js = solution("Exercise 2")
    ann, bob = browser_context_factory(), browser_context_factory()
    ann_name = chat_page(ann, srv.url, "doomed", js)
    chat_page(bob, srv.url, "doomed", js)
    assert rooms(srv) == ["doomed"]
    # Without the cookie the route cannot tell who asks: the book's server-side call's problem.
    assert ann.evaluate("deleteRoom('doomed', 'omit')") == 401
    assert rooms(srv) == ["doomed"]
    ann.click("#delete")  # the room named in the box: 'doomed'
    bob.wait_for_selector(f"#messages li.notice >> text={ann_name} deleted doomed")
    bob.wait_for_function("document.getElementById('current').textContent !== 'doomed'")
    assert rooms(srv) == []
    ann.wait_for_function("!document.getElementById('rooms').textContent.includes('doomed')")


@pytest.mark.parametrize("title", ["Exercise 1", "Exercise 2"])
def test_each_solution_is_folded(title: str) -> None:
    assert solution(title).strip()
