"""The server's options: one place for every limit, with its default and why.

``create_app(**options)``, ``start(**options)`` and ``python -m labserver --kebab-case`` all
take these names. Every number is bounded; a value out of bounds raises ``ValueError`` with a
sentence a learner can read.
"""

from __future__ import annotations

import ipaddress
import math
import os
import secrets
from dataclasses import dataclass, field, fields
from typing import Any

from .events import DEFAULT_LOG_SIZE, DEFAULT_QUEUE_SIZE

#: Long polling holds a request this long by default: under the 30 s many proxies cut idle
#: requests at, as RFC 6202 §5.5 advises.
LONG_POLL_DEFAULT_S = 25.0
#: ...and never longer than this, whatever the client asks.
LONG_POLL_MAX_S = 60.0
#: Largest client message or ``/publish`` body. 64 KiB is far above any lesson's payload and
#: small enough that a flood of them cannot exhaust memory.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024
#: The chapter's port.
CHAPTER_PORT = 8005


def fast_by_default() -> bool:
    """The ``fast`` option's default: on, unless the environment says ``LABSERVER_FAST=0``
    (how a test run serves every transport with the libraries' public APIs alone)."""
    return os.environ.get("LABSERVER_FAST", "1") != "0"


@dataclass(frozen=True)
class Options:
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port (``start()``); the CLI's default is 8005, the chapter's
    tick: float | None = None  # publish a status event every ``tick`` seconds
    log_size: int = DEFAULT_LOG_SIZE
    heartbeat_s: float = 15.0  # SSE comment and WebSocket ping interval
    retry_ms: int = 3000  # the SSE ``retry:`` value
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    queue_size: int = DEFAULT_QUEUE_SIZE
    allowed_origins: tuple[str, ...] = ()  # extra browser origins for /ws and Socket.IO
    trust_proxy: bool = False  # take the client address from X-Forwarded-For
    socketio_transports: tuple[str, ...] = ("polling", "websocket")
    session_secret: str = field(default_factory=lambda: secrets.token_hex(32), repr=False)
    publish_token: str | None = field(default=None, repr=False)
    redis_url: str | None = None
    # The private tier (labserver._fast): on unless turned off here, by LABSERVER_FAST=0, or
    # by its canary (a private part of aiohttp, python-engineio or CPython missing).
    fast: bool = field(default_factory=fast_by_default)

    def __post_init__(self) -> None:
        def check(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        check(0 <= self.port <= 65535, "port must be between 0 and 65535")
        if self.tick is not None:
            check(
                math.isfinite(self.tick) and 0.01 <= self.tick <= 3600,
                "tick must be between 0.01 and 3600 seconds",
            )
        check(1 <= self.log_size <= 1_000_000, "log_size must be between 1 and 1000000")
        check(
            math.isfinite(self.heartbeat_s) and 0.05 <= self.heartbeat_s <= 3600,
            "heartbeat_s must be between 0.05 and 3600 seconds",
        )
        check(0 <= self.retry_ms <= 3_600_000, "retry_ms must be between 0 and 3600000")
        check(
            256 <= self.max_message_bytes <= 16 * 1024 * 1024,
            "max_message_bytes must be between 256 and 16 MiB",
        )
        check(1 <= self.queue_size <= 100_000, "queue_size must be between 1 and 100000")
        check(
            set(self.socketio_transports) <= {"polling", "websocket"}
            and len(self.socketio_transports) > 0,
            "socketio_transports must be a non-empty subset of polling, websocket",
        )
        check(len(self.session_secret) >= 16, "session_secret must be at least 16 characters")
        if self.publish_token is None and not is_loopback(self.host):
            # Serving a classroom: anyone on the network could publish. Require a token.
            object.__setattr__(self, "publish_token", secrets.token_urlsafe(16))

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> Options:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"unknown option(s): {', '.join(unknown)}")
        for name in ("allowed_origins", "socketio_transports"):
            if name in kwargs and kwargs[name] is not None:
                value = kwargs[name]
                kwargs[name] = (value,) if isinstance(value, str) else tuple(value)
        return cls(**kwargs)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
