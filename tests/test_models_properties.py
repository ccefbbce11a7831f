"""Property-based tests of the wire models (``server/core/models.py``), alone and behind the live
server.

- Valid HTTP bodies and Socket.IO payloads parse, and round-trip (Python and JSON).
- Any JSON value makes a model either parse or raise pydantic's ``ValidationError``; the
  ``parse_*`` helpers return or raise ``ValueError``, as documented. Nothing else.
- A request model accepts exactly what its JSON Schema (the one in the OpenAPI document)
  accepts, so the document neither promises what the server refuses nor hides what it takes.
- Against the real server (memory and Redis mode): random bodies to ``POST
  /api/streaming/session`` and ``/start`` never get a 5xx, and every 4xx is
  ``{"error": str}``; the response models describe real responses exactly.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import aiohttp
import hypothesis
import pytest
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from pydantic import BaseModel, ValidationError

from server.core.models import (
    ChunksPageOut,
    CreateSessionIn,
    CreateSessionOut,
    JoinIn,
    ResumeQuery,
    SessionStatusOut,
    StartedOut,
    StartIn,
    StreamConfigIn,
    parse_last_seq,
    parse_resume,
    parse_session_id,
)
from tests.helpers import LiveServer, ServerFactory, create_session

#: Pure model checks are cheap; the live ones send one or two requests per example.
PURE = hypothesis.settings(max_examples=200, deadline=None, database=None)
LIVE = hypothesis.settings(
    max_examples=50,
    deadline=None,
    database=None,
    # The server fixture is shared by a test's examples on purpose.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- strategies -----------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    # Any code point, lone surrogates included (JSON text escapes them; orjson refuses them).
    | st.text()
)
#: Any JSON value.
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=16,
)
json_objects = st.dictionaries(st.text(max_size=12), json_values, max_size=5)


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


def _wire_names(model: type[BaseModel]) -> set[str]:
    """Every key a model reads: its fields' aliases and (``populate_by_name``) names."""
    names = set()
    for name, field in model.model_fields.items():
        names.add(name)
        if field.alias:
            names.add(field.alias)
    return names


def with_unknown_keys(
    model: type[BaseModel], valid: st.SearchStrategy[dict[str, Any]]
) -> st.SearchStrategy[Any]:
    """A valid object plus keys the model does not know (which it ignores)."""
    known = _wire_names(model)
    unknown = st.dictionaries(st.text(max_size=8).filter(lambda k: k not in known), json_values, max_size=2)
    return st.tuples(valid, unknown).map(lambda pair: {**pair[1], **pair[0]})


stream_configs = st.fixed_dictionaries(
    {},
    optional={
        "provider": optional(st.text(max_size=20)),
        "model": optional(st.text(min_size=1, max_size=200)),
        "systemPrompt": optional(st.text(max_size=200)),
        "temperature": optional(st.integers(0, 2) | st.floats(0, 2)),
        "maxTokens": optional(st.integers()),
        "tokensPerSecond": optional(st.integers(0, 100_000) | st.floats(0, 100_000)),
        "animationType": optional(st.sampled_from(["wave", "fade", "slide"])),
        "speed": optional(st.integers(min_value=0) | st.floats(min_value=0, allow_infinity=False)),
    },
)
create_bodies = st.fixed_dictionaries(
    {"userId": st.text(min_size=1, max_size=256)},
    optional={"config": optional(with_unknown_keys(StreamConfigIn, stream_configs))},
)
start_bodies = st.fixed_dictionaries({"prompt": st.text(max_size=300)})
join_payloads = st.fixed_dictionaries(
    {"sessionId": st.uuids(version=4).map(str)},
    optional={
        "lastSeq": optional(st.integers(min_value=-1)),
        "epoch": optional(st.text(min_size=1, max_size=64)),
        "snapshot": st.booleans(),
    },
)

#: Every request model, with a strategy for its valid values.
VALID: list[tuple[type[BaseModel], st.SearchStrategy[Any]]] = [
    (StreamConfigIn, with_unknown_keys(StreamConfigIn, stream_configs)),
    (CreateSessionIn, with_unknown_keys(CreateSessionIn, create_bodies)),
    (StartIn, with_unknown_keys(StartIn, start_bodies)),
    (JoinIn, with_unknown_keys(JoinIn, join_payloads)),
]
#: The ones in the OpenAPI document (JoinIn is a Socket.IO payload).
HTTP_BODIES = [StreamConfigIn, CreateSessionIn, StartIn]


def near(
    model: type[BaseModel], valid: st.SearchStrategy[dict[str, Any]]
) -> st.SearchStrategy[dict[str, Any]]:
    """A valid object with one of the model's keys (or another) set to any JSON value."""
    keys = st.sampled_from(sorted(_wire_names(model))) | st.text(max_size=12)
    return st.tuples(valid, keys, json_values).map(lambda t: {**t[0], t[1]: t[2]})


def _known(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """``data`` without the keys ``model`` ignores (in the nested config too)."""
    aliases = {field.alias or name for name, field in model.model_fields.items()}
    known = {k: v for k, v in data.items() if k in aliases}
    if model is CreateSessionIn and isinstance(known.get("config"), dict):
        known["config"] = _known(StreamConfigIn, known["config"])
    return known


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values; an int read into a float field stays that number (as exactly
    as a float holds it: 2**53 + 1 comes back as 2**53, as in any JSON parser)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if (isinstance(a, float) and isinstance(b, int)) or (isinstance(a, int) and isinstance(b, float)):
        return float(a) == float(b)
    return bool(a == b)


# -- valid values parse and round-trip ------------------------------------------------------


@pytest.mark.parametrize(("model", "valid"), VALID, ids=[m.__name__ for m, _ in VALID])
def test_valid_values_parse_and_round_trip(model: type[BaseModel], valid: st.SearchStrategy[Any]) -> None:
    @PURE
    @given(valid)
    def check(data: dict[str, Any]) -> None:
        parsed = model.model_validate(data)
        # Back to the wire: what was sent (unknown keys dropped), under the same names.
        wire = parsed.model_dump(by_alias=True, exclude_unset=True)
        assert _same(wire, _known(model, data)), (wire, data)
        assert model.model_validate(wire) == parsed
        # And through JSON text, as the server and clients exchange it.
        text = parsed.model_dump_json(by_alias=True, exclude_unset=True)
        assert model.model_validate_json(text) == parsed
        assert model.model_validate(json.loads(text)) == parsed

    check()


# -- any JSON: a model or a ValidationError, nothing else -----------------------------------


@pytest.mark.parametrize("model", [m for m, _ in VALID], ids=[m.__name__ for m, _ in VALID])
def test_any_json_parses_or_raises_validation_error(model: type[BaseModel]) -> None:
    valid = dict(VALID)[model]

    @PURE
    @given(json_values | json_objects | near(model, valid))
    def check(data: Any) -> None:
        with contextlib.suppress(ValidationError):
            model.model_validate(data)
        with contextlib.suppress(ValidationError):
            model.model_validate_json(json.dumps(data))

    check()


@PURE
@given(json_values, json_values, json_values)
def test_parse_helpers_return_or_raise_value_error(last_seq: Any, epoch: Any, snapshot: Any) -> None:
    assert parse_session_id(last_seq) in (None, last_seq)
    for call in (lambda: parse_last_seq(last_seq), lambda: parse_resume(last_seq, epoch, snapshot)):
        with contextlib.suppress(ValueError):
            call()


@PURE
@given(st.integers(min_value=-1) | st.none(), st.text(min_size=1, max_size=64) | st.none(), st.booleans())
def test_resume_query_values_are_what_parse_resume_accepts(
    last_seq: int | None, epoch: str | None, snapshot: bool
) -> None:
    """The query parameters the document describes (from ``ResumeQuery``) are accepted by
    ``parse_resume``, which reads the real query string, with the same meaning."""
    query = ResumeQuery(last_seq=last_seq, epoch=epoch, snapshot=snapshot)
    as_sent = {
        "lastSeq": None if last_seq is None else str(last_seq),
        "epoch": epoch,
        "snapshot": "true" if snapshot else "false",
    }
    resume = parse_resume(as_sent["lastSeq"], as_sent["epoch"], as_sent["snapshot"])
    assert (resume.last_seq, resume.epoch, resume.snapshot) == (query.last_seq, query.epoch, query.snapshot)


# -- the document's schemas say what the models accept --------------------------------------


@pytest.mark.parametrize("model", HTTP_BODIES, ids=[m.__name__ for m in HTTP_BODIES])
def test_request_model_accepts_exactly_what_its_json_schema_does(model: type[BaseModel]) -> None:
    validator = Draft202012Validator(model.model_json_schema())
    valid = dict(VALID)[model]

    @PURE
    @given(valid | near(model, valid) | json_objects)
    def check(data: dict[str, Any]) -> None:
        try:
            model.model_validate(data)
            accepted = True
        except ValidationError:
            accepted = False
        hypothesis.assume(not _outside_the_document(model, data))
        errors = [e.message for e in validator.iter_errors(data)]
        assert accepted == (not errors), (data, errors)

    check()


def _outside_the_document(model: type[BaseModel], data: Any) -> bool:
    """Whether ``data`` uses what the models take and the document does not describe:

    - a float with no fractional part for an integer: JSON Schema counts 3.0 as an
      integer, the strict model (and so the server) wants 3;
    - a field under its Python name (``max_tokens``): ``populate_by_name`` lets the models
      read it, the wire contract is camelCase.
    """
    if not isinstance(data, dict):
        return False
    python_names = {name for name, field in model.model_fields.items() if field.alias and field.alias != name}
    if python_names & data.keys():
        return True
    if model is StreamConfigIn:
        value = data.get("maxTokens")
        return isinstance(value, float) and value.is_integer()
    if model is CreateSessionIn:
        return _outside_the_document(StreamConfigIn, data.get("config"))
    return False


# -- behind the live server -----------------------------------------------------------------


def bodies(model: type[BaseModel], valid: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[bytes]:
    """Bodies as bytes: any JSON, near-valid objects, valid ones, and bytes that are not JSON."""
    as_json = (json_values | json_objects | near(model, valid) | valid).map(lambda v: json.dumps(v).encode())
    return as_json | st.binary(max_size=64)


async def _assert_answer(resp: aiohttp.ClientResponse) -> None:
    assert resp.status < 500, await resp.text()
    if resp.status >= 400:
        assert resp.content_type == "application/json", await resp.text()
        body = await resp.json()
        assert isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], str), body


@pytest.fixture
async def fuzz_server(start_server: ServerFactory) -> LiveServer:
    """One server for all of a test's examples; each example creates its own sessions."""
    return await start_server(max_sessions_per_user=1000)


@LIVE
@given(body=bodies(CreateSessionIn, create_bodies))
async def test_random_create_bodies_get_no_5xx_and_json_errors(
    fuzz_server: LiveServer, http: aiohttp.ClientSession, body: bytes
) -> None:
    async with http.post(
        f"{fuzz_server.url}/api/streaming/session", data=body, headers={"Content-Type": "application/json"}
    ) as resp:
        await _assert_answer(resp)
        if resp.status == 200:
            CreateSessionOut.model_validate(await resp.json())


@LIVE
@given(body=bodies(StartIn, start_bodies))
async def test_random_start_bodies_get_no_5xx_and_json_errors(
    fuzz_server: LiveServer, http: aiohttp.ClientSession, body: bytes
) -> None:
    session_id = await create_session(http, fuzz_server, "fuzz", maxTokens=5)
    async with http.post(
        f"{fuzz_server.url}/api/streaming/{session_id}/start",
        data=body,
        headers={"Content-Type": "application/json"},
    ) as resp:
        await _assert_answer(resp)
        if resp.status == 200:
            StartedOut.model_validate(await resp.json())


async def _finished(http: aiohttp.ClientSession, server: LiveServer, session_id: str) -> None:
    """Follow the session's Server-Sent Events until the response ends (after ``complete``)."""
    async with http.get(f"{server.url}/api/streaming/{session_id}/events") as resp:
        assert resp.status == 200
        await resp.read()


async def test_response_models_describe_real_responses(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server()
    async with http.post(
        f"{server.url}/api/streaming/session",
        json={"userId": "u", "config": {"provider": "demo", "maxTokens": 12}},
    ) as resp:
        created = await resp.json()
    session_id = CreateSessionOut.model_validate(created).session_id
    async with http.post(
        f"{server.url}/api/streaming/{session_id}/start", json={"prompt": "Explain"}
    ) as resp:
        assert StartedOut.model_validate(await resp.json()).status == "started"
    await _finished(http, server, session_id)
    bodies_read = {}
    for path, model in ((session_id, SessionStatusOut), (f"{session_id}/chunks?limit=5", ChunksPageOut)):
        async with http.get(f"{server.url}/api/streaming/{path}") as resp:
            body = await resp.json()
        parsed = model.model_validate(body)
        assert parsed.model_dump(by_alias=True, mode="json", exclude_unset=True) == body, (
            "every field described"
        )
        bodies_read[model] = parsed
    status = bodies_read[SessionStatusOut]
    page = bodies_read[ChunksPageOut]
    assert isinstance(status, SessionStatusOut) and isinstance(page, ChunksPageOut)
    assert status.state == "completed" and status.usage is not None and status.chunks > 0
    assert [c.seq for c in page.chunks] == list(range(min(5, status.chunks)))
