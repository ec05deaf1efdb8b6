"""A real nginx in front of labserver nodes, started like :class:`~labserver.cluster.RedisProcess`.

What a learner meets in production is a reverse proxy, and real-time transports break there in
ways a lesson can measure: the WebSocket upgrade not forwarded, SSE buffered, idle streams cut
at ``proxy_read_timeout``, Socket.IO's polling start spread over two nodes. :class:`Nginx`
writes an ``nginx.conf`` with the options a lesson wants to show, starts the system's nginx
(Debian's ``nginx``, conda-forge's ``nginx``) from a temporary prefix on free loopback ports as
the current user, and stops it by PID::

    with Nginx([a.url, b.url], balance="cookie:labserver_session") as proxy:
        print(proxy.config_for_reading)   # what a learner copies
        ...                               # clients connect to proxy.url

The configuration keeps every path relative to the prefix (``nginx -p DIR``): the pid file,
the logs and every ``*_temp_path`` live in the temporary directory, so nothing reaches for
``/var/log/nginx`` or ``/run`` (which a non-root user cannot write).

``balance`` chooses how requests are spread over the upstreams (nginx's ``upstream`` block):

* ``"round_robin"`` — nginx's default: each request to the next node;
* ``"hash_addr"`` — ``hash $remote_addr consistent``: one client address, one node (not
  ``ip_hash``, which keys on the first three octets of an IPv4 address, so every 127.0.0.x
  client would land on one node);
* ``"cookie:NAME"`` — ``hash $cookie_NAME consistent``: one cookie value, one node (the
  application sets the cookie; open-source nginx has no ``sticky cookie``).
"""

from __future__ import annotations

import atexit
import datetime
import ipaddress
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .children import free_port, listening, release, terminate, wait_until, watchdog

#: How long :meth:`Nginx.start` waits for nginx to listen before giving up.
START_TIMEOUT_S = 10.0
#: How long :meth:`Nginx.stop` waits after SIGTERM (nginx's fast shutdown) before SIGKILL.
STOP_TIMEOUT_S = 1.0
#: Free ports are picked, then bound by nginx: if another process took one meanwhile, retry.
START_ATTEMPTS = 3
#: The temporary directories nginx writes request and response bodies to, relative to the prefix.
TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
BALANCES = ("round_robin", "hash_addr", "cookie:<NAME>")


def find_nginx() -> str | None:
    """The nginx executable: on the PATH, or Debian's ``/usr/sbin/nginx`` (not on a user's PATH)."""
    found = shutil.which("nginx")
    if found:
        return found
    if os.access("/usr/sbin/nginx", os.X_OK):
        return "/usr/sbin/nginx"
    return None


def make_certificate(directory: str | Path,
                     hosts: Sequence[str] = ("127.0.0.1", "localhost")) -> tuple[Path, Path]:
    """A self-signed certificate for ``hosts`` (its subjectAltName) and its key, as PEM files.

    Returns ``(cert_path, key_path)`` in ``directory``. A client trusts it by loading the
    certificate itself (``ssl.create_default_context(cafile=cert_path)``); a browser must be told
    to accept it (Playwright's ``ignore_https_errors=True``). Valid from an hour ago for 30 days.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts else "labserver")])
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        # Its own issuer: a CA for itself, so that a client can trust it as a root.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False),
                       critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    directory = Path(directory)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def _nginx_time(seconds: float) -> str:
    """``proxy_read_timeout``'s units: whole seconds as ``60s``, anything finer as ``1500ms``."""
    if seconds <= 0:
        raise ValueError("a timeout must be positive")
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"


def _upstream_address(url: str) -> str:
    match = re.fullmatch(r"http://([^/]+?)/?", url)
    if match is None:
        raise ValueError(f"an upstream is a base URL like http://127.0.0.1:8005, not {url!r}")
    return match.group(1)


class Nginx:
    """A real nginx proxying to labserver nodes, on free loopback ports, as the current user."""

    def __init__(
        self,
        upstreams: Sequence[str],
        *,
        balance: str = "round_robin",
        websocket: bool = True,
        buffering: bool | None = None,
        read_timeout_s: float | None = None,
        forwarded_for: bool = True,
        tls: bool = False,
        http2: bool = False,
        extra_location: str = "",
        extra_server: str = "",
        extra_http: str = "",
        nginx_path: str | None = None,
    ) -> None:
        if not upstreams:
            raise ValueError("nginx needs at least one upstream")
        if balance not in ("round_robin", "hash_addr") and not re.fullmatch(
                r"cookie:[A-Za-z0-9_]+", balance):
            raise ValueError(f"balance must be one of {', '.join(BALANCES)}, not {balance!r}")
        if http2 and not tls:
            raise ValueError("http2 needs tls: browsers speak HTTP/2 only over TLS")
        self.upstreams = [_upstream_address(url) for url in upstreams]
        self.balance, self.websocket, self.buffering = balance, websocket, buffering
        self.read_timeout_s, self.forwarded_for = read_timeout_s, forwarded_for
        self.tls, self.http2 = tls, http2
        self.extra_location, self.extra_server, self.extra_http = (
            extra_location, extra_server, extra_http)
        if read_timeout_s is not None:
            _nginx_time(read_timeout_s)  # refuse a bad value now, not when nginx starts
        self.executable = nginx_path or find_nginx()
        if self.executable is None:
            raise FileNotFoundError(
                "nginx not found: install it (Debian/Ubuntu: apt-get install nginx; macOS: brew "
                "install nginx; conda: conda install -c conda-forge nginx)")
        self.port = free_port()
        self.tls_port: int | None = free_port() if tls else None
        self.directory: Path | None = None
        self.cert_path: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None

    # --- the configuration --------------------------------------------------------------

    @property
    def url(self) -> str:
        """The plain-HTTP listener: ``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def https_url(self) -> str | None:
        """The TLS listener (``https://127.0.0.1:PORT``) when started with ``tls=True``."""
        return None if self.tls_port is None else f"https://127.0.0.1:{self.tls_port}"

    @property
    def config(self) -> str:
        """The whole ``nginx.conf`` this handle runs (paths relative to its prefix)."""
        return self._render(plumbing=True)

    @property
    def config_for_reading(self) -> str:
        """The ``http`` block a learner copies: :attr:`config` without this run's plumbing
        (pid file, logs, temporary paths, the ``user`` line of a root run)."""
        return self._render(plumbing=False)

    def _render(self, plumbing: bool) -> str:
        lines: list[str] = []
        if plumbing:
            if os.geteuid() == 0:  # as root, nginx would hand its workers to "nobody"
                import grp
                import pwd

                user = pwd.getpwuid(os.geteuid()).pw_name
                group = grp.getgrgid(os.getegid()).gr_name
                lines.append(f"user {user} {group};")
            lines += ["daemon off;", "worker_processes 1;", "pid nginx.pid;",
                      "error_log error.log info;", "events { worker_connections 1024; }", ""]
        lines.append("http {")
        if plumbing:
            lines.append("    access_log access.log;")
            lines += [f"    {name}_temp_path {name}_temp;" for name in TEMP_PATHS]
        if self.websocket:
            lines += ["    # Connection: upgrade when the client asked for one, close otherwise",
                      "    map $http_upgrade $connection_upgrade {",
                      "        default upgrade;",
                      "        ''      close;",
                      "    }"]
        lines.append("    upstream labserver {")
        if self.balance == "hash_addr":
            lines.append("        hash $remote_addr consistent;   # one client address, one node")
        elif self.balance.startswith("cookie:"):
            name = self.balance.split(":", 1)[1]
            lines.append(f"        hash $cookie_{name} consistent;   # one cookie, one node")
        lines += [f"        server {address};" for address in self.upstreams]
        lines.append("    }")
        lines += [f"    {line}" for line in self.extra_http.strip().splitlines()]
        lines.append("    server {")
        lines.append(f"        listen 127.0.0.1:{self.port};")
        if self.tls_port is not None:
            h2 = " http2" if self.http2 else ""
            lines += [f"        listen 127.0.0.1:{self.tls_port} ssl{h2};",
                      "        ssl_certificate cert.pem;",
                      "        ssl_certificate_key key.pem;"]
        lines += [f"        {line}" for line in self.extra_server.strip().splitlines()]
        lines.append("        location / {")
        lines.append("            proxy_pass http://labserver;")
        lines.append("            proxy_set_header Host $http_host;   # the Origin check "
                     "compares it")
        if self.forwarded_for:
            lines.append("            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;")
        if self.websocket:
            lines += ["            proxy_http_version 1.1;",
                      "            proxy_set_header Upgrade $http_upgrade;",
                      "            proxy_set_header Connection $connection_upgrade;"]
        if self.buffering is not None:
            lines.append(f"            proxy_buffering {'on' if self.buffering else 'off'};")
        if self.read_timeout_s is not None:
            lines.append(f"            proxy_read_timeout {_nginx_time(self.read_timeout_s)};")
        lines.append("            add_header X-Upstream $upstream_addr always;   # which node "
                     "answered")
        lines += [f"            {line}" for line in self.extra_location.strip().splitlines()]
        lines += ["        }", "    }", "}", ""]
        return "\n".join(lines)

    # --- running it -----------------------------------------------------------------------

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("nginx is not running")
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout_s: float = START_TIMEOUT_S) -> Nginx:
        """Write the configuration, start nginx, and return once it listens on every port.

        Raises ``RuntimeError`` with the tail of ``error.log`` if nginx refuses to start.
        """
        if self.running:
            return self
        if self.directory is None:
            # 0o755: workers of a root master read nothing here, but they must reach the temp paths
            self.directory = Path(tempfile.mkdtemp(prefix="labserver-nginx-"))
            self.directory.chmod(0o755)
            if self.tls:
                self.cert_path, _ = make_certificate(self.directory)
        for attempt in range(1, START_ATTEMPTS + 1):
            error = self._start_once(timeout_s)
            if error is None:
                assert self._process is not None
                self._watchdog = watchdog(self._process.pid)
                atexit.register(self.stop)
                return self
            if "Address already in use" not in error or attempt == START_ATTEMPTS:
                self.stop()
                raise RuntimeError(f"nginx did not start:\n{error}")
            self.port = free_port()
            self.tls_port = free_port() if self.tls else None
        raise AssertionError("unreachable")

    def _start_once(self, timeout_s: float) -> str | None:
        """Start nginx once; None when it listens, else the tail of its error log."""
        assert self.directory is not None
        (self.directory / "nginx.conf").write_text(self.config)
        (self.directory / "error.log").write_text("")
        prefix = str(self.directory)
        self._process = subprocess.Popen(
            [str(self.executable), "-p", prefix + "/", "-c", prefix + "/nginx.conf",
             "-e", prefix + "/error.log"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # an interrupted cell's Ctrl-C is not nginx's signal
        )
        ports = [p for p in (self.port, self.tls_port) if p is not None]
        if wait_until(lambda: all(listening(port) for port in ports), timeout_s,
                      process=self._process):
            return None
        if self._process.poll() is not None:
            self._process = None
            return self._error_tail()
        tail = self._error_tail()
        self.stop()
        return "timed out\n" + tail

    def error_log(self) -> str:
        """The text of nginx's ``error.log`` in this run (empty before :meth:`start`)."""
        if self.directory is None:
            return ""
        try:
            return (self.directory / "error.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _error_tail(self, lines: int = 20) -> str:
        return "\n".join(self.error_log().splitlines()[-lines:])

    def stop(self) -> None:
        """Stop nginx (SIGTERM, then SIGKILL to its process group) and remove its directory.

        Idempotent; within about a second.
        """
        process, self._process = self._process, None
        guard, self._watchdog = self._watchdog, None
        release(guard, STOP_TIMEOUT_S)  # SIGTERM to nginx, still our unreaped child
        # SIGTERM is nginx's fast shutdown; SIGKILL goes to its session: master and workers
        terminate(process, STOP_TIMEOUT_S, group=True)
        atexit.unregister(self.stop)
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None
            self.cert_path = None

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self._process.pid} running" if self.running else "stopped"
        return f"<labserver.Nginx {self.url} {state}>"
