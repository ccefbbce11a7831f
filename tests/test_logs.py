"""Structured logs (``LOG_FORMAT=json``), the request id, and what never reaches a log line."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
import socketio

from server.guards.logs import REQUEST_ID, SESSION, JsonFormatter, TextFormatter, secret_values
from tests.fake_providers import ScriptedProvider
from tests.fake_upstream import FakeUpstream, Script
from tests.helpers import (
    LiveServer,
    ServerFactory,
    create_session,
    make_settings,
    start_stream,
    stream_viewer,
    wait_until,
)
from tests.server_process import READY, ServerProcess

OPENAI_KEY = "sk-live-4f9c2a7e1b3d5f8a0c6e9b2d4f7a1c3e"
ANTHROPIC_KEY = "sk-ant-api03-live-7d2e9f4a1c6b8e3d0f5a2c7e9b4d1f6a"
MARKER = "PROMPT-MARKER-6d1f0c2b"


class Captured(logging.Handler):
    """Every record of the ``server`` loggers, formatted as ``LOG_FORMAT=json`` writes it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    @property
    def entries(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]


@pytest.fixture
def captured() -> Iterator[Captured]:
    handler = Captured()
    logger = logging.getLogger("server")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def record(message: str, *args: object, exc: BaseException | None = None, **extra: Any) -> logging.LogRecord:
    rec = logging.LogRecord("server.test", logging.WARNING, __file__, 1, message, args, None)
    if exc is not None:
        rec.exc_info = (type(exc), exc, exc.__traceback__)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_json_lines_carry_the_request_id_and_the_session_in_context() -> None:
    formatter = JsonFormatter()
    plain = json.loads(formatter.format(record("session %s: %s", "abcd1234", "started")))
    assert set(plain) == {"time", "level", "logger", "message"}
    assert plain["level"] == "warning" and plain["logger"] == "server.test"
    assert plain["message"] == "session abcd1234: started"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", plain["time"])
    request_token, session_token = REQUEST_ID.set("req-1"), SESSION.set("abcd1234")
    try:
        line = formatter.format(record('a "quoted"\nmultiline message'))
    finally:
        SESSION.reset(session_token)
        REQUEST_ID.reset(request_token)
    assert "\n" not in line, "one object per line"
    entry = json.loads(line)
    assert entry["requestId"] == "req-1" and entry["session"] == "abcd1234"
    assert entry["message"] == 'a "quoted"\nmultiline message'
    # A line may name its session itself; never more than the short id.
    named = json.loads(formatter.format(record("x", session="0123456789abcdef")))
    assert named["session"] == "01234567"


def test_configured_secrets_are_scrubbed_from_every_line() -> None:
    settings = make_settings(
        openai_api_key=OPENAI_KEY,
        anthropic_api_key=ANTHROPIC_KEY,
        redis_url="redis://:hunter2-secret@127.0.0.1/0",
    )
    hidden = secret_values(settings)
    assert set(hidden) >= {OPENAI_KEY, ANTHROPIC_KEY, "hunter2-secret"}
    try:
        raise RuntimeError(f"upstream said: bad key {OPENAI_KEY}")
    except RuntimeError as exc:
        rec = record("key %s and %s", OPENAI_KEY, ANTHROPIC_KEY, exc=exc)
    for formatter in (JsonFormatter(hidden), TextFormatter(hidden)):
        line = formatter.format(rec)
        assert OPENAI_KEY not in line and ANTHROPIC_KEY not in line
        assert "[redacted]" in line
        rec.exc_text = None


async def test_the_request_id_is_echoed_generated_or_replaced(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{server.url}/healthz") as resp:
        generated = resp.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    async with http.get(f"{server.url}/healthz", headers={"X-Request-ID": "edge-7f3a.42"}) as resp:
        assert resp.headers["X-Request-ID"] == "edge-7f3a.42"
    for bad in ("two words", "x" * 200, 'quote"d', "new\tline"):
        async with http.get(f"{server.url}/healthz", headers={"X-Request-ID": bad}) as resp:
            replaced = resp.headers["X-Request-ID"]
        assert replaced != bad and re.fullmatch(r"[0-9a-f]{32}", replaced)
    # Errors and streamed responses (prepared inside their handler) carry it too.
    async with http.get(f"{server.url}/api/streaming/00000000-0000-4000-8000-000000000000") as resp:
        assert resp.status == 404
        assert resp.headers["X-Request-ID"]
    session_id = await create_session(http, server)
    async with http.get(
        f"{server.url}/api/streaming/{session_id}/events", headers={"X-Request-ID": "sse-request-1"}
    ) as resp:
        assert resp.status == 200
        assert resp.headers["X-Request-ID"] == "sse-request-1"


async def test_a_session_s_lines_carry_the_request_that_started_it(
    start_server: ServerFactory, http: aiohttp.ClientSession, captured: Captured
) -> None:
    server = await start_server({"demo": ScriptedProvider(["a", "b"], error=RuntimeError("boom"))})
    session_id = await create_session(http, server)
    short = session_id[:8]
    async with http.post(
        f"{server.url}/api/streaming/{session_id}/start",
        json={"prompt": f"do it {MARKER}"},
        headers={"X-Request-ID": "start-req-1"},
    ) as resp:
        assert resp.status == 200
    await wait_until(lambda: any("internal error" in e["message"] for e in captured.entries))
    entries = captured.entries
    created = next(e for e in entries if e["message"] == f"session {short}: created (provider demo)")
    assert created["session"] == short
    started = next(e for e in entries if e["message"] == f"session {short}: started")
    assert started["requestId"] == "start-req-1" and started["session"] == short
    # Logged by the session's own task, long after the request was answered.
    failed = next(e for e in entries if "internal error" in e["message"])
    assert failed["requestId"] == "start-req-1" and failed["session"] == short
    assert "boom" in failed["exception"]
    text = "\n".join(captured.lines)
    assert MARKER not in text and session_id not in text


async def test_json_logs_at_debug_level_hold_no_key_and_no_prompt(
    http: aiohttp.ClientSession, sio_clients: Callable[[], socketio.AsyncClient]
) -> None:
    """The real process, with real-looking keys and the real SDKs (against a fake upstream):
    every line is JSON, and neither a key nor the prompt is anywhere in the output."""
    async with FakeUpstream(api_key=OPENAI_KEY) as fake:
        # The second OpenAI answer is a 401 that echoes the key whole (the real API masks it).
        fake.enqueue(Script(), Script(status=401, error_message=f"Incorrect API key provided: {OPENAI_KEY}"))
        env = {
            "LOG_LEVEL": "debug",
            "LOG_FORMAT": "json",
            "OPENAI_API_KEY": OPENAI_KEY,
            "OPENAI_BASE_URL": fake.openai_base_url,
            "ANTHROPIC_API_KEY": ANTHROPIC_KEY,  # refused by the fake: the error path
            "ANTHROPIC_BASE_URL": fake.anthropic_base_url,
            "PROVIDER_MAX_RETRIES": "0",
            "DEMO_TOKENS_PER_SECOND": "0",
        }
        process = await asyncio.to_thread(ServerProcess(env).__enter__)
        try:
            server = LiveServer(process.url, app=None)  # type: ignore[arg-type]
            finished = []
            for provider in ("openai", "openai", "anthropic", "demo"):
                session_id = await create_session(http, server, provider=provider)
                _, viewer = await stream_viewer(sio_clients, server, session_id)
                await start_stream(http, server, session_id, prompt=f"Tell me about {MARKER}")
                await viewer.wait_finished()
                finished.append((session_id, viewer))
        finally:
            await asyncio.to_thread(process.__exit__, None, None, None)
    assert [bool(v.completes) for _, v in finished] == [True, False, False, True]
    assert finished[1][1].errors[0]["code"] == "auth"
    output = process.output
    assert OPENAI_KEY not in output and ANTHROPIC_KEY not in output
    assert MARKER not in output
    entries = []
    for line in output.splitlines():
        if line.startswith(READY):
            continue  # stdout's one line; the logs are on stderr
        entry = json.loads(line)
        assert {"time", "level", "logger", "message"} <= set(entry), line
        entries.append(entry)
    for session_id, _ in finished:
        assert session_id not in output, "only the short id is logged"
        assert any(e.get("session") == session_id[:8] and e.get("requestId") for e in entries)


@pytest.mark.parametrize("store", ["redis"], indirect=True)
async def test_a_command_forwarded_to_the_owner_carries_its_request_id(
    start_server: ServerFactory, http: aiohttp.ClientSession, captured: Captured
) -> None:
    provider = ScriptedProvider(["a"], error=RuntimeError("boom"))
    owner = await start_server({"demo": provider})
    other = await start_server({"demo": provider})
    session_id = await create_session(http, owner)
    async with http.post(
        f"{other.url}/api/streaming/{session_id}/start",
        json={"prompt": "go"},
        headers={"X-Request-ID": "forwarded-req-1"},
    ) as resp:
        assert resp.status == 200, await resp.text()
    await wait_until(lambda: any("internal error" in e["message"] for e in captured.entries))
    failed = next(e for e in captured.entries if "internal error" in e["message"])
    assert failed["requestId"] == "forwarded-req-1" and failed["session"] == session_id[:8]
    assert owner.manager.get_session(session_id) is not None, "it ran on the owner"
