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
from typing import Any

from .app import create_app, serve
from .options import CHAPTER_PORT, Options, is_loopback


def parse_args(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m labserver", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=CHAPTER_PORT, help="default 8005, the chapter's")
    p.add_argument("--tick", type=float, help="publish a status event every TICK seconds")
    p.add_argument("--redis", dest="redis_url", metavar="URL", help="join a cluster on Redis")
    p.add_argument("--log-size", type=int)
    p.add_argument("--heartbeat-s", type=float)
    p.add_argument("--retry-ms", type=int)
    p.add_argument("--max-message-bytes", type=int)
    p.add_argument("--queue-size", type=int)
    p.add_argument("--allowed-origins", nargs="*", metavar="ORIGIN")
    p.add_argument("--trust-proxy", action="store_true", default=None)
    p.add_argument("--socketio-transports", nargs="+", choices=["polling", "websocket"])
    p.add_argument("--session-secret")
    p.add_argument("--publish-token")
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
