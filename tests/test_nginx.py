"""The nginx handle: the configuration it writes, and a real nginx in front of two nodes."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import ssl
import time
from collections.abc import Iterator

import aiohttp
import pytest

import labserver
from labserver.nginx import Nginx, make_certificate

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def nodes() -> Iterator[list[labserver.Server]]:
    """Two plain nodes (no Redis: the handle's tests look at routing, not at events)."""
    a, b = labserver.start(), labserver.start()
    try:
        yield [a, b]
    finally:
        a.stop()
        b.stop()


def get(url: str, path: str, source: str = "127.0.0.1",
        headers: dict[str, str] | None = None) -> tuple[str, dict]:
    """GET ``path`` from a client bound to ``source``; (the node that answered, the JSON)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10, source_address=(source, 0))
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.headers["X-Upstream"], json.loads(resp.read())
    finally:
        conn.close()


def test_the_configuration_keeps_every_path_in_the_prefix(nginx_path: str) -> None:
    proxy = Nginx(["http://127.0.0.1:1", "http://127.0.0.1:2"], nginx_path=nginx_path)
    config = proxy.config
    for line in ("daemon off;", "pid nginx.pid;", "error_log error.log info;",
                 "proxy_temp_path proxy_temp;", "client_body_temp_path client_body_temp;",
                 "server 127.0.0.1:1;", "server 127.0.0.1:2;", "proxy_http_version 1.1;",
                 "proxy_set_header Connection $connection_upgrade;",
                 "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;"):
        assert line in config
    assert not re.search(r"\s/\w", config), "no absolute path: everything under the prefix"
    assert ("user " in config) == (os.geteuid() == 0)
    reading = proxy.config_for_reading
    assert reading.startswith("http {") and set(reading.splitlines()) <= set(config.splitlines())
    assert not re.search(r"pid |_log |temp_path|user ", reading)


@pytest.mark.parametrize(("options", "present", "absent"), [
    ({}, [], ["proxy_buffering", "proxy_read_timeout", "hash "]),
    ({"buffering": False}, ["proxy_buffering off;"], []),
    ({"buffering": True}, ["proxy_buffering on;"], []),
    ({"read_timeout_s": 1.5}, ["proxy_read_timeout 1500ms;"], []),
    ({"read_timeout_s": 75}, ["proxy_read_timeout 75s;"], []),
    ({"balance": "hash_addr"}, ["hash $remote_addr consistent;"], ["ip_hash"]),
    ({"balance": "cookie:labserver_session"}, ["hash $cookie_labserver_session consistent;"], []),
    ({"websocket": False}, [], ["Upgrade", "proxy_http_version", "map "]),
    ({"forwarded_for": False}, [], ["X-Forwarded-For"]),
    ({"tls": True, "http2": True}, ["ssl http2;", "ssl_certificate cert.pem;"], []),
    ({"extra_location": "gzip on;", "extra_http": "keepalive_timeout 5s;"},
     ["            gzip on;", "    keepalive_timeout 5s;"], []),
])
def test_each_option_is_one_directive(nginx_path: str, options: dict, present: list[str],
                                      absent: list[str]) -> None:
    config = Nginx(["http://127.0.0.1:1"], nginx_path=nginx_path, **options).config
    assert all(text in config for text in present), config
    assert not any(text in config for text in absent), config


@pytest.mark.parametrize(("options", "message"), [
    ({"balance": "ip_hash"}, "balance"),
    ({"http2": True}, "http2 needs tls"),
    ({"read_timeout_s": 0}, "positive"),
])
def test_bad_options_are_refused(nginx_path: str, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Nginx(["http://127.0.0.1:1"], nginx_path=nginx_path, **options)
    with pytest.raises(ValueError, match="base URL"):
        Nginx(["127.0.0.1:1"], nginx_path=nginx_path)


def test_round_robin_alternates_and_forwards_the_client_address(
        nodes: list[labserver.Server], nginx_path: str) -> None:
    with Nginx([n.url for n in nodes], nginx_path=nginx_path) as proxy:
        answers = [get(proxy.url, "/whoami") for _ in range(4)]
    upstreams = [n.url.removeprefix("http://") for n in nodes]
    assert [node for node, _ in answers] == upstreams * 2
    # the node sees nginx's address; the header carries the client's
    assert {(w["address"], w["x_forwarded_for"]) for _, w in answers} == {
        ("127.0.0.1", "127.0.0.1")}


def test_hash_addr_pins_each_client_address(nodes: list[labserver.Server], nginx_path: str,
                                            loopback_clients: list[str]) -> None:
    with Nginx([n.url for n in nodes], balance="hash_addr", nginx_path=nginx_path) as proxy:
        chosen = {}
        for source in loopback_clients:  # 127.0.0.2 … 127.0.0.17
            seen = {get(proxy.url, "/whoami", source)[0] for _ in range(3)}
            assert len(seen) == 1, f"{source} went to {seen}"
            chosen[source] = seen.pop()
    assert len(set(chosen.values())) == 2, "sixteen addresses spread over both nodes"


def test_cookie_hash_pins_each_session(nodes: list[labserver.Server], nginx_path: str) -> None:
    with Nginx([n.url for n in nodes], balance="cookie:labserver_session",
               nginx_path=nginx_path) as proxy:
        chosen = {}
        for n in range(16):
            cookie = {"Cookie": f"labserver_session=client-{n}"}
            seen = {get(proxy.url, "/whoami", headers=cookie)[0] for _ in range(3)}
            assert len(seen) == 1
            chosen[n] = seen.pop()
    assert len(set(chosen.values())) == 2, "sixteen sessions spread over both nodes"


async def test_websocket_upgrades_only_with_the_upgrade_headers(
        nodes: list[labserver.Server], nginx_path: str) -> None:
    async with aiohttp.ClientSession() as session:
        with Nginx([nodes[0].url], nginx_path=nginx_path) as proxy:
            async with session.ws_connect(proxy.url.replace("http", "ws") + "/ws") as ws:
                await ws.send_json({"echo": "through nginx"})
                assert await ws.receive_json(timeout=5) == {"echo": "through nginx"}
        with Nginx([nodes[0].url], websocket=False, nginx_path=nginx_path) as proxy:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(proxy.url.replace("http", "ws") + "/ws")
    assert refused.value.status != 101


@pytest.mark.parametrize("http2", [False, True])
def test_tls_with_a_certificate_made_in_the_run(nodes: list[labserver.Server], nginx_path: str,
                                                http2: bool) -> None:
    with Nginx([nodes[0].url], tls=True, http2=http2, nginx_path=nginx_path) as proxy:
        assert proxy.https_url is not None and proxy.cert_path is not None
        context = ssl.create_default_context(cafile=str(proxy.cert_path))
        context.set_alpn_protocols(["h2", "http/1.1"])
        port = int(proxy.https_url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.selected_alpn_protocol() == ("h2" if http2 else "http/1.1")
        context = ssl.create_default_context(cafile=str(proxy.cert_path))
        conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=5)
        conn.request("GET", "/whoami")
        assert json.loads(conn.getresponse().read())["address"] == "127.0.0.1"
        conn.close()


def test_an_untrusted_certificate_is_refused(tmp_path, nodes: list[labserver.Server],
                                             nginx_path: str) -> None:
    other, _ = make_certificate(tmp_path)  # the same names, another key: not the one served
    with Nginx([nodes[0].url], tls=True, nginx_path=nginx_path) as proxy:
        context = ssl.create_default_context(cafile=str(other))
        conn = http.client.HTTPSConnection("127.0.0.1", int(proxy.https_url.rsplit(":", 1)[1]),
                                           context=context, timeout=5)
        with pytest.raises(ssl.SSLCertVerificationError):
            conn.request("GET", "/whoami")


def test_a_bad_directive_fails_with_the_error_log(nginx_path: str) -> None:
    proxy = Nginx(["http://127.0.0.1:1"], extra_location="no_such_directive on;",
                  nginx_path=nginx_path)
    with pytest.raises(RuntimeError, match='unknown directive "no_such_directive"'):
        proxy.start()
    assert not proxy.running and proxy.directory is None


def test_stop_is_prompt_idempotent_and_frees_the_port(nodes: list[labserver.Server],
                                                      nginx_path: str) -> None:
    proxy = Nginx([nodes[0].url], nginx_path=nginx_path).start()
    pid, port = proxy.pid, proxy.port
    assert "start worker process" in proxy.error_log()
    started = time.monotonic()
    proxy.stop()
    assert time.monotonic() - started < 1.5
    proxy.stop()
    assert not proxy.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0


def test_nginx_stops_when_the_process_that_started_it_dies(nginx_path: str) -> None:
    """A kernel restart must not leave nginx behind: its watchdog sees the pipe close."""
    import subprocess
    import sys

    script = ("import time; from labserver.nginx import Nginx; "
              f"n = Nginx(['http://127.0.0.1:1'], nginx_path={nginx_path!r}).start(); "
              "print(n.pid, flush=True); time.sleep(30)")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        assert os.path.exists(f"/proc/{pid}") or sys.platform != "linux"
    finally:
        parent.kill()  # SIGKILL: no atexit, no stop()
        parent.wait()

    def alive() -> bool:  # an exited nginx, reparented, may stay a zombie until init reaps it
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        try:
            with open(f"/proc/{pid}/stat") as stat:
                return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 5
    while alive():
        assert time.monotonic() < deadline, "nginx outlived the process that started it"
        time.sleep(0.05)
