"""``GET /api/openapi.json``: a valid OpenAPI 3.1 document, and true of the live server.

schemathesis sends the real server (in memory and in Redis mode) what it generates from the
document the server serves: valid and invalid bodies, path and query parameters and
headers, unexpected methods (one test per operation), then sequences that follow the
document's links from a created session. Each response must be no 5xx, a documented
status with the documented content type and schema, invalid input must be refused, and
every error must be ``{"error": str}``.

schemathesis's requests are blocking, so the server runs on its own event loop in a
thread (the ``start_server`` fixture's server would wait on the test's loop, which a
blocking test holds).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
import uvloop
from openapi_spec_validator import validate

from server.app import create_app
from server.transports.openapi import OPENAPI_PATH, add_openapi_route, build_openapi, has_route
from tests.helpers import StreamingTestServer, make_settings

#: Small enough that every run stays well under a minute.
MAX_EXAMPLES = 30

#: What the fuzzed server runs with: the demo provider's answers short, a small chunk page.
#: The default MAX_SESSIONS_PER_USER (20) is reached (generated userIds repeat): 429, as
#: documented.
SERVER_SETTINGS: dict[str, Any] = {"max_tokens_limit": 64, "chunks_page_limit": 50}

CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {"max-examples": MAX_EXAMPLES, "database": "none"},
        # A request that waits longer than this is a hang.
        "request-timeout": 5,
        # Only these checks (schemathesis has more, e.g. ones that expect every valid body
        # to be accepted, which a 409 or 429 by design is not).
        "checks": {
            "enabled": False,
            "not_a_server_error": {"enabled": True},
            "status_code_conformance": {"enabled": True},
            "content_type_conformance": {"enabled": True},
            "response_schema_conformance": {"enabled": True},
            # A body that breaks the schema is refused with a 4xx: schemathesis's usual
            # list, plus 413 (a prompt over MAX_PROMPT_CHARS, a body over MAX_BODY_BYTES).
            "negative_data_rejection": {
                "enabled": True,
                "expected-statuses": [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429, "5xx"],
            },
            "errors_are_json": {"enabled": True},
        },
    }
)


@schemathesis.check
def errors_are_json(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case[Any]
) -> bool:
    """Every 4xx and 5xx, documented or not (405 for an unexpected method too), is
    ``application/json`` ``{"error": "<message>"}``."""
    if response.status_code < 400:
        return True
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith("application/json"), f"error with Content-Type {content_type!r}"
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], str), body
    return True


class ThreadedServer:
    """The app ``create_app`` builds (with the OpenAPI route), served on 127.0.0.1 by the
    runner ``python -m server`` uses, on an event loop of its own in a thread."""

    def __init__(self, **overrides: Any) -> None:
        self._overrides = overrides
        self._loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="openapi-server", daemon=True)
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.url = ""
        self.routes: set[str] = set()

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()
        self._loop.close()

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        app = create_app(make_settings(**self._overrides))
        assert has_route(app, OPENAPI_PATH), "create_app serves the document"
        # As the document spells them: {sessionId} for aiohttp's {session_id}.
        self.routes = {
            r.canonical.replace("{session_id}", "{sessionId}").replace("{document_id}", "{documentId}")
            for r in app.router.resources()
        }
        server = StreamingTestServer(app, host="127.0.0.1", port=0)
        await server.start_server()
        self.url = str(server.make_url("")).rstrip("/")
        self._stop = asyncio.Event()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await server.close()


@pytest.fixture
def live_server(request: pytest.FixtureRequest, store: str) -> Iterator[ThreadedServer]:
    redis_url = request.getfixturevalue("redis_server").url if store == "redis" else None
    with ThreadedServer(redis_url=redis_url, **SERVER_SETTINGS) as server:
        yield server


#: The document the fuzzed server serves (``test_served_document_follows_the_settings``
#: checks that it is exactly this), built at collection: schemathesis generates one test
#: per operation from it. (Its lazy ``schemathesis.pytest.from_fixture`` loader, which would
#: read the live URL, fails on pytest 9.2: it sets ``Function._nodeid``, which pytest 9.2
#: removed. The stateful test below reads the live URL.)
schema = schemathesis.openapi.from_dict(build_openapi(make_settings(**SERVER_SETTINGS)), config=CONFIG)


def test_document_is_valid_openapi_3_1() -> None:
    document = build_openapi(make_settings())
    validate(document)  # raises on any error
    assert document["openapi"].startswith("3.1")
    paths = document["paths"]
    for path in (
        "/api/streaming/session",
        "/api/streaming/{sessionId}",
        "/api/streaming/{sessionId}/start",
        "/api/streaming/{sessionId}/cancel",
        "/api/streaming/{sessionId}/events",
        "/api/streaming/{sessionId}/chunks",
        "/healthz",
        "/readyz",
        "/metrics",
        OPENAPI_PATH,
    ):
        assert path in paths, path


def test_served_document_follows_the_settings(live_server: ThreadedServer) -> None:
    response = requests.get(f"{live_server.url}{OPENAPI_PATH}", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    document = response.json()
    assert document == build_openapi(make_settings(**SERVER_SETTINGS))
    schemas = document["components"]["schemas"]
    assert {"maximum": 64, "minimum": 1, "type": "integer"} in schemas["StreamConfigIn"]["properties"][
        "maxTokens"
    ]["anyOf"]
    assert "ErrorOut" in schemas


#: Served, and not part of the HTTP API the document describes.
NOT_HTTP_API = {"/", "/assets", "/socket.io/", "/ws/stream/{sessionId}", "/collab/{documentId}"}


def test_every_route_is_documented(live_server: ThreadedServer) -> None:
    documented = set(requests.get(f"{live_server.url}{OPENAPI_PATH}", timeout=5).json()["paths"])
    assert live_server.routes - NOT_HTTP_API <= documented, live_server.routes - NOT_HTTP_API - documented


def test_add_openapi_route_twice_adds_it_once() -> None:
    app = create_app(make_settings())
    add_openapi_route(app)
    add_openapi_route(app)
    assert [r.canonical for r in app.router.resources()].count(OPENAPI_PATH) == 1


@schema.parametrize()
# One server per operation: the fixture is shared by that operation's examples on purpose.
@hypothesis.settings(suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture], deadline=None)
def test_api_conforms_to_its_document(case: schemathesis.Case[Any], live_server: ThreadedServer) -> None:
    assert case.operation.path in live_server.routes, "every documented path is served"
    case.call_and_validate(base_url=live_server.url)


def test_session_lifecycles_conform_to_the_document(live_server: ThreadedServer) -> None:
    """Stateful: sequences that follow the document's links from a created session (start,
    read, cancel, page through its chunks), with the document loaded from the server.
    ``/events`` is left out: on a live session it streams until the request times out."""
    schema = schemathesis.openapi.from_url(f"{live_server.url}{OPENAPI_PATH}", config=CONFIG)
    machine = schema.exclude(operation_id="getEvents").as_state_machine()
    machine.run(
        settings=hypothesis.settings(
            max_examples=MAX_EXAMPLES,
            stateful_step_count=6,
            deadline=None,
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
    )
