"""``poll.html`` in Chromium: short and long polling side by side, directly and behind the hub.

The page runs a short-polling loop and a long-polling loop from the server's last event. Python
publishes an event; the test finds that event's id in both lanes of the page, and the server's
counters show the page's requests: short polls answered empty before the event, and a long poll
that was held until it came.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

import labserver

#: True once both loops have sent a request and the short poll has had an answer.
BOTH_ASKING = ("Number(document.getElementById('short-requests').textContent) >= 1 && "
               "Number(document.getElementById('long-requests').textContent) >= 1 && "
               "document.getElementById('short-cursor').textContent !== '?'")


def wait_until_held(srv: labserver.Server, timeout_s: float = 10) -> None:
    """Until the server holds the page's long poll (its ``open`` gauge)."""
    deadline = time.monotonic() + timeout_s
    while srv.stats()["transports"]["long_poll"]["open"] != 1:
        assert time.monotonic() < deadline, "the page's long poll never reached the server"
        time.sleep(0.05)


def publish_and_find(page: Any, srv: labserver.Server) -> None:
    page.wait_for_function(BOTH_ASKING, timeout=15_000)
    wait_until_held(srv)
    page.wait_for_function(  # at least one empty short poll before the event
        "Number(document.getElementById('short-empty').textContent) >= 1", timeout=10_000)
    before = srv.stats()["transports"]
    event_id = srv.publish({"note": "from Python"})
    for lane in ("short", "long"):
        row = page.locator(f'#{lane}-events li[data-id="{event_id}"]')
        row.wait_for(timeout=10_000)
        assert f"{lane} poll got id {event_id}" in row.text_content()
        assert "from Python" in row.text_content()
    after = srv.stats()["transports"]
    poll, long_poll = after["poll"], after["long_poll"]
    assert poll["requests"] > before["poll"]["requests"] >= 1  # it kept asking on its timer
    assert poll["empty"] >= 1 and poll["messages_out"] == 1
    assert long_poll["messages_out"] == 1  # the held request brought it...
    assert long_poll["empty"] == 0  # ...and none came back empty (held for 20 s)
    assert long_poll["requests"] == before["long_poll"]["requests"] + 1  # ...and it asked again
    assert page.locator("#long-count").text_content() == "1"
    assert page.locator("#short-count").text_content() == "1"


def test_poll_page_directly(browser_page: Any) -> None:
    with labserver.start() as srv:
        srv.publish({"note": "before the page"})  # not shown: the page starts after it
        browser_page.goto(srv.url + "/poll.html")
        publish_and_find(browser_page, srv)
        assert browser_page.locator("#short-events li").count() == 1


@pytest.mark.timeout(180)
def test_poll_page_through_the_hub_proxy(jupyter_proxy: Any, browser_page: Any) -> None:
    with labserver.start() as srv:
        browser_page.goto(jupyter_proxy.url_for(srv.port))  # from the index, by its link
        browser_page.click("a[href='poll.html']")
        assert browser_page.url == jupyter_proxy.url_for(srv.port, "poll.html")
        publish_and_find(browser_page, srv)
