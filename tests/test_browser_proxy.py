"""The demo pages through jupyter-server-proxy, as on a JupyterHub or Binder.

A Jupyter server with jupyter-server-proxy runs under a hub-like prefix (``/user/ada/``); the
browser opens ``/user/ada/proxy/PORT/<page>``, so every URL the page uses must be relative.
Each test publishes from Python and finds that event's id in the page.
"""

from __future__ import annotations

from typing import Any

import pytest

import labserver

#: page → a JavaScript condition that is true once the page's connection is open.
PAGES = {
    "sse.html": "document.getElementById('state').textContent === 'OPEN'",
    "ws.html": "document.getElementById('state').textContent === 'OPEN (1)'",
    # connected, and upgraded from polling to WebSocket through the proxy
    "socketio.html": "document.getElementById('transport').textContent === 'websocket'",
}


@pytest.mark.parametrize("page_name", sorted(PAGES))
def test_demo_page_works_through_the_hub_proxy(
    page_name: str, jupyter_proxy: Any, browser_page: Any, monkeypatch: Any
) -> None:
    with labserver.start() as srv:
        monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", jupyter_proxy.base_url)
        assert srv.browser_url == f"{jupyter_proxy.base_url}proxy/{srv.port}/"
        page = browser_page
        page.goto(jupyter_proxy.url_for(srv.port, page_name))
        page.wait_for_function(PAGES[page_name], timeout=15_000)
        event_id = srv.publish({"through": "the proxy"})
        page.locator(f'#events li[data-id="{event_id}"]').wait_for(timeout=10_000)
        assert "the proxy" in page.locator(f'#events li[data-id="{event_id}"]').text_content()


def test_index_links_work_through_the_hub_proxy(jupyter_proxy: Any, browser_page: Any) -> None:
    with labserver.start() as srv:
        page = browser_page
        page.goto(jupyter_proxy.url_for(srv.port))
        page.click("text=stats")
        assert page.url == jupyter_proxy.url_for(srv.port, "stats")
        assert '"transports"' in page.content()
