"""``anna-embed serve``: the command line, the listening socket and the server's lifecycle (see
:mod:`anna_embed.serve.app` for the app itself)."""

from __future__ import annotations

import argparse
import logging
import signal
import socket
from collections.abc import Callable
from dataclasses import replace

from anna_embed import config as C
from anna_embed.serve.api import API_KEYS_ENV, read_api_keys
from anna_embed.serve.app import create_app
from anna_embed.serve.config import ServeConfig

logger = logging.getLogger(__name__)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port).

    The protocol is given explicitly (``IPPROTO_TCP``): asyncio turns Nagle's algorithm off only on
    connections whose socket says TCP, and without that every small answer waits ~40 ms for a delayed ACK.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def load_config(args: argparse.Namespace) -> ServeConfig:
    """The resolved config: ``--config`` file, then ``--set`` overrides, then the explicit flags."""
    cfg = C.load(ServeConfig, args.config, args.set or [])
    flags = {"model": args.model, "host": args.host, "port": args.port, "api_key_file": args.api_key_file}
    cfg = replace(cfg, **{k: v for k, v in flags.items() if v is not None})
    if not cfg.model:
        raise ValueError("--model is required (or model = ... in --config)")
    return cfg


def add_cli(verb: str, parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """``anna-embed serve``."""
    parser.add_argument("--model", help="short name, local folder or hub id")
    parser.add_argument("--host", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port (default 8080; 0: any free port)")
    parser.add_argument(
        "--api-key-file", help=f"API keys, one per line (also ${API_KEYS_ENV}, comma-separated)"
    )
    parser.add_argument("--config", help="serve.toml with ServeConfig fields")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field")

    def run(args: argparse.Namespace) -> int:
        import uvicorn

        from anna_embed.model.embedder import Embedder

        cfg = load_config(args)
        keys = read_api_keys(cfg.api_key_file)
        sock = bind(cfg.host, cfg.port)
        cfg = replace(cfg, port=sock.getsockname()[1])
        if not keys and cfg.host not in ("127.0.0.1", "localhost", "::1"):
            logger.warning("Serving on %s without API keys: anyone who can reach it can use it", cfg.host)
        failed: list[BaseException] = []

        def load() -> Embedder:
            return Embedder.from_pretrained(
                cfg.model, max_length=cfg.max_length, dtype=cfg.dtype, device=cfg.device
            )

        def fatal(err: BaseException) -> None:
            failed.append(err)
            server.should_exit = True

        app = create_app(cfg, load=load, api_keys=keys, on_fatal=fatal)
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                log_config=None,
                log_level="warning",
                access_log=False,
                lifespan="on",
                timeout_graceful_shutdown=cfg.shutdown_timeout_s,
            )
        )
        # uvicorn re-raises SIGTERM once its graceful shutdown is over; a no-op handler makes that exit 0
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
        try:
            server.run(sockets=[sock])
        finally:
            signal.signal(signal.SIGTERM, previous)
        return 1 if failed else 0

    return run
