"""Logging: the text or JSON format (``LOG_FORMAT``), the request id and session a line is
about, and what must never be logged.

Two context variables say what a line is about: :data:`REQUEST_ID` (set for each HTTP
request by :func:`server.transports.ops_api.request_ids`, and carried with a command to the process
that owns the session in Redis mode) and :data:`SESSION` (the short 8-character prefix of
a session id, never the whole id: set for requests whose route names a session, and in a
session's own task). A session's task starts with a copy of the context it was started
in, so its lines carry the request id of the request that started it. A line may also
name its session itself with ``extra={"session": short_id(...)}``.

Secrets are kept out in two ways: the loggers of the provider SDKs and their HTTP clients
(:data:`SDK_LOGGERS`) never go below ``info``, whatever ``LOG_LEVEL`` says; and every line
is scrubbed of the configured secrets' values (API keys, the JWT secret, the Redis
password) before it is written. Prompts are never logged by the server.
"""

from __future__ import annotations

import logging
import random
import re
import sys
import time
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any, TypeGuard
from urllib.parse import urlsplit

import orjson
from pydantic import SecretStr

from server.settings import Settings

__all__ = [
    "REQUEST_ID",
    "SESSION",
    "TEXT_FORMAT",
    "JsonFormatter",
    "TextFormatter",
    "configure_logging",
    "new_request_id",
    "secret_values",
    "well_formed_request_id",
]

#: The request id of the work at hand, when known.
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
#: The short id (8 characters) of the session the work at hand is about, when known.
SESSION: ContextVar[str | None] = ContextVar("log_session", default=None)

#: The human-readable format (``LOG_FORMAT=text``, the default).
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Loggers of the provider SDKs and their HTTP clients (the SDKs' own ``httpx2``/``httpcore2``
#: forks included): at debug level SDKs have printed request options (the prompt) and
#: headers, and the transports print every request's details, so they never go below ``info``.
SDK_LOGGERS = ("openai", "anthropic", "httpx", "httpcore", "httpx2", "httpcore2")

#: An incoming ``X-Request-ID`` is kept when it matches this (UUIDs, hex, ULIDs, base64);
#: anything else (spaces, quotes, control characters, too long) is replaced.
_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+/=-]{0,127}")
REDACTED = "[redacted]"
#: Shorter values are not scrubbed (they would match ordinary words).
MIN_SECRET_LENGTH = 8


def well_formed_request_id(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and _REQUEST_ID.fullmatch(value) is not None


def new_request_id() -> str:
    """32 random hex digits. Not a secret (it is echoed and logged): Python's generator
    (reseeded in a forked child) costs half of ``secrets.token_hex``'s system call."""
    return f"{random.getrandbits(128):032x}"


def secret_values(settings: Settings) -> list[str]:
    """Every secret the settings hold (``SecretStr`` fields, the Redis URL's password)."""
    values = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            values.append(value.get_secret_value())
    if settings.redis_url:
        password = urlsplit(settings.redis_url).password
        if password:
            values.append(password)
    # Longest first, so that a secret containing another is scrubbed whole.
    return sorted({v for v in values if len(v) >= MIN_SECRET_LENGTH}, key=len, reverse=True)


class _Scrubber:
    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = tuple(secrets)

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text


class TextFormatter(logging.Formatter):
    """The default format, with the configured secrets scrubbed from every line."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__(TEXT_FORMAT)
        self._scrubber = _Scrubber(secrets)

    def format(self, record: logging.LogRecord) -> str:
        return self._scrubber.scrub(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, and when known ``requestId`` and ``session``; ``exception`` holds a
    traceback."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._scrubber = _Scrubber(secrets)

    def format(self, record: logging.LogRecord) -> str:
        scrub = self._scrubber.scrub
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": scrub(record.getMessage()),
        }
        request_id = getattr(record, "requestId", None) or REQUEST_ID.get()
        if request_id is not None:
            entry["requestId"] = request_id
        session = getattr(record, "session", None) or SESSION.get()
        if session is not None:
            entry["session"] = str(session)[:8]
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = scrub(record.exc_text)
        if record.stack_info:
            entry["stack"] = scrub(self.formatStack(record.stack_info))
        return orjson.dumps(entry, default=str).decode()


def configure_logging(settings: Settings) -> None:
    """Send every log line to stderr in ``settings.log_format`` at ``settings.log_level``."""
    level = logging.getLevelNamesMapping()[settings.log_level.upper()]
    handler = logging.StreamHandler(sys.stderr)
    hidden = secret_values(settings)
    formatter = JsonFormatter(hidden) if settings.log_format == "json" else TextFormatter(hidden)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in tuple(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    for name in SDK_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.INFO))
