"""``python -m labserver``: the same app in a terminal, as the chapter runs ``node app.js``.

    python -m labserver --port 8005 --tick 3        # the chapter's server
    python -m labserver --host 0.0.0.0              # a classroom: prints the publish token

Stops cleanly on Ctrl-C, closing every open stream and socket first.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from dataclasses import fields
from typing import Any

from .app import create_app, serve
from .options import CHAPTER_PORT, Options, is_loopback

#: Each option's default, as ``Options`` documents it: the help below quotes these.
DEFAULTS = {f.name: f.default for f in fields(Options)}


def parse_args(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(
        prog="python -m labserver", description=__doc__.split("\n")[0].replace("``", ""),
        # wide enough that every option and its description share one line
        formatter_class=lambda prog: argparse.HelpFormatter(prog, max_help_position=42,
                                                            width=120),
    )
    d = DEFAULTS
    p.add_argument("--host", default=d["host"], metavar="ADDR",
                   help=f"address to listen on (default {d['host']}: this machine only)")
    p.add_argument("--port", type=int, default=CHAPTER_PORT,
                   help=f"port to listen on (default {CHAPTER_PORT}, the chapter's; 0: any free)")
    p.add_argument("--tick", type=float, metavar="S",
                   help="publish a status event every S seconds (default off)")
    p.add_argument("--redis", dest="redis_url", metavar="URL",
                   help="join a cluster through the Redis server at URL (default none)")
    p.add_argument("--log-size", type=int, metavar="N",
                   help=f"events kept for cursors and resume (default {d['log_size']})")
    p.add_argument("--heartbeat-s", type=float, metavar="S",
                   help=f"SSE comment and WebSocket ping interval (default {d['heartbeat_s']:g} s)")
    p.add_argument("--retry-ms", type=int, metavar="MS",
                   help=f"the SSE retry: value sent to clients (default {d['retry_ms']} ms)")
    p.add_argument("--max-message-bytes", type=int, metavar="N",
                   help="largest client message or /publish body "
                        f"(default {d['max_message_bytes']} bytes)")
    p.add_argument("--queue-size", type=int, metavar="N",
                   help=f"events queued for one slow client before it is dropped "
                        f"(default {d['queue_size']})")
    p.add_argument("--allowed-origins", nargs="*", metavar="ORIGIN",
                   help="extra browser origins for /ws and Socket.IO (default none: same origin)")
    p.add_argument("--trust-proxy", action="store_true", default=None,
                   help="client address from X-Forwarded-For's last entry (default off)")
    p.add_argument("--socketio-transports", nargs="+", choices=["polling", "websocket"],
                   metavar="NAME", help="Socket.IO transports offered: polling, websocket "
                                        "(default both)")
    p.add_argument("--session-secret", metavar="TEXT",
                   help="signs the session cookie, at least 16 characters (default random)")
    p.add_argument("--publish-token", metavar="TOKEN",
                   help="/publish and /drop need it (default none on loopback, else generated)")
    p.add_argument("--no-fast", dest="fast", action="store_false", default=None,
                   help="the libraries' public APIs only (default: the fast tier where it works)")
    args = vars(p.parse_args(argv))
    return {k: v for k, v in args.items() if v is not None}


def main(argv: list[str] | None = None) -> None:
    try:
        opts = Options.from_kwargs(**parse_args(argv))
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"labserver: {exc}") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    def ready(port: int) -> None:
        print(f"labserver on http://{opts.host}:{port}/  (Ctrl-C stops it)", flush=True)
        if opts.publish_token and not is_loopback(opts.host):
            print(f"publish_token: {opts.publish_token}  "
                  "(POST /publish and /drop need 'Authorization: Bearer <token>')", flush=True)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(create_app(_options=opts), stop, ready)
        print("labserver stopped", flush=True)

    asyncio.run(run())


if __name__ == "__main__":
    main()
