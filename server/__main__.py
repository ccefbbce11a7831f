"""``python -m server``: run the streaming server (see ``--help``)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from providers.registry import PROVIDERS
from server.app import create_app
from server.core.actions import PromptsFileError
from server.guards.logs import configure_logging
from server.runner import run_app
from server.settings import Settings


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m server",
        description="Stream AI text to rich-text editors over Socket.IO and WebSocket. "
        "Every setting can also be given as an environment variable or in .env "
        "(HOST, PORT, DEFAULT_PROVIDER, LOG_LEVEL, ...).",
    )
    parser.add_argument("--host", help="address to bind (HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (PORT, default 3001)")
    parser.add_argument(
        "--provider",
        choices=sorted(PROVIDERS),
        help="default provider (DEFAULT_PROVIDER; default: openai if OPENAI_API_KEY is set, "
        "else anthropic if ANTHROPIC_API_KEY is set, else demo)",
    )
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="LOG_LEVEL (info)")
    parser.add_argument(
        "--log-format", choices=["text", "json"], help="LOG_FORMAT (text; json: one JSON object per line)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    overrides = {
        key: value
        for key, value in {
            "host": args.host,
            "port": args.port,
            "default_provider": args.provider,
            "log_level": args.log_level,
            "log_format": args.log_format,
        }.items()
        if value is not None
    }
    settings = Settings(**overrides)
    configure_logging(settings)
    try:
        app = create_app(settings)
    except PromptsFileError as exc:
        sys.exit(f"PROMPTS_FILE: {exc}")
    provider = settings.resolved_default_provider()
    ready = f"Streaming server on http://{settings.host}:{settings.port} (default provider: {provider})"
    run_app(
        app,
        host=settings.host,
        port=settings.port,
        shutdown_timeout=settings.shutdown_timeout,
        # Called once the socket listens: the line means "ready".
        on_ready=lambda: print(ready, flush=True),
        loop=new_event_loop(),
    )


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (Linux, macOS): its callbacks, timers and socket
    writes cost a fraction of asyncio's; the standard loop elsewhere."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


if __name__ == "__main__":
    main()
