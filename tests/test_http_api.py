"""HTTP: every route of PROTOCOL.md, its success shape and each of its errors."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.helpers import create_session, get_session, start_stream, stream_viewer

UNKNOWN = "00000000-0000-4000-8000-000000000000"


async def post(http, url: str, body: Any = None, *, data: bytes | None = None) -> tuple[int, Any]:
    kwargs: dict[str, Any] = {"data": data} if data is not None else {"json": body}
    async with http.post(url, **kwargs) as resp:
        return resp.status, await resp.json()


async def test_create_session_returns_id_and_ws_endpoint(server, http):
    status, body = await post(http, f"{server.url}/api/streaming/session", {"userId": "u1"})
    assert status == 200
    assert set(body) == {"sessionId", "wsEndpoint"}
    assert uuid.UUID(body["sessionId"]).version == 4
    assert body["wsEndpoint"] == f"/ws/stream/{body['sessionId']}"


async def test_seed_hook_body_is_accepted(server, http):
    # The seed's useStreaming sends {userId: 'current-user', config: {animationType}}.
    status, _ = await post(
        http,
        f"{server.url}/api/streaming/session",
        {"userId": "current-user", "config": {"animationType": "wave"}},
    )
    assert status == 200
    status, _ = await post(
        http, f"{server.url}/api/streaming/session", {"userId": "current-user", "config": None}
    )
    assert status == 200


async def test_get_session_snapshot(server, http, sio_clients):
    session_id = await create_session(
        http, server, speed=50, animationType="fade", unknownKey=1, temperature=0.5
    )
    snapshot = await get_session(http, server, session_id)
    assert snapshot["state"] == "created"
    assert snapshot["chunks"] == 0 and snapshot["text"] == ""
    assert snapshot["provider"] == "demo" and snapshot["model"] == "demo"
    assert snapshot["userId"] == "user-1"
    assert isinstance(snapshot["createdAt"], int)
    assert snapshot["usage"] is None

    _, viewer = await stream_viewer(sio_clients, server, session_id)
    await start_stream(http, server, session_id)
    await viewer.wait_finished()
    snapshot = await get_session(http, server, session_id)
    assert snapshot["state"] == "completed"
    assert snapshot["text"] == viewer.text
    assert (
        snapshot["usage"]["totalTokens"]
        == snapshot["usage"]["promptTokens"] + snapshot["usage"]["completionTokens"]
    )


async def test_start_twice_is_409_and_unknown_is_404(server, http):
    session_id = await create_session(http, server)
    await start_stream(http, server, session_id)
    status, body = await post(http, f"{server.url}/api/streaming/{session_id}/start", {"prompt": "again"})
    assert status == 409 and "already started" in body["error"]
    status, body = await post(http, f"{server.url}/api/streaming/{UNKNOWN}/start", {"prompt": "x"})
    assert (status, body) == (404, {"error": "Session not found"})
    status, body = await post(http, f"{server.url}/api/streaming/not-an-id/start", {"prompt": "x"})
    assert (status, body) == (404, {"error": "Session not found"})
    async with http.get(f"{server.url}/api/streaming/{UNKNOWN}") as resp:
        assert resp.status == 404 and await resp.json() == {"error": "Session not found"}


async def test_cancel_route(server, http, sio_clients):
    session_id = await create_session(http, server, tokensPerSecond=50, maxTokens=1000)
    _, viewer = await stream_viewer(sio_clients, server, session_id)
    await start_stream(http, server, session_id)
    await viewer.wait_for(lambda: len(viewer.chunks) >= 2)
    status, body = await post(http, f"{server.url}/api/streaming/{session_id}/cancel")
    assert (status, body) == (200, {"status": "cancelled"})
    await viewer.wait_finished()
    assert viewer.completes[0]["finishReason"] == "cancelled"
    status, body = await post(http, f"{server.url}/api/streaming/{session_id}/cancel")
    assert status == 409 and body["error"] == "Session already cancelled"
    status, _ = await post(http, f"{server.url}/api/streaming/{UNKNOWN}/cancel")
    assert status == 404


async def test_cancel_before_start(server, http):
    session_id = await create_session(http, server)
    status, _ = await post(http, f"{server.url}/api/streaming/{session_id}/cancel")
    assert status == 200
    status, _body = await post(http, f"{server.url}/api/streaming/{session_id}/start", {"prompt": "x"})
    assert status == 409


async def test_healthz(server, http):
    async with http.get(f"{server.url}/healthz") as resp:
        assert resp.status == 200 and await resp.json() == {"status": "ok"}


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"{not json", "Invalid JSON"),
        (b"[1, 2]", "JSON object"),
        (b"", "JSON object"),
        (b'{"userId": 5}', "userId"),
        (b'{"config": {}}', "userId"),
        (b'{"userId": ""}', "userId"),
        (b'{"userId": "u", "config": {"temperature": 3}}', "temperature"),
        (b'{"userId": "u", "config": {"maxTokens": 0}}', "maxTokens"),
        (b'{"userId": "u", "config": {"maxTokens": 32001}}', "maxTokens"),
        (b'{"userId": "u", "config": {"maxTokens": "10"}}', "maxTokens"),
        (b'{"userId": "u", "config": {"animationType": "spin"}}', "animationType"),
        (b'{"userId": "u", "config": "fast"}', "config"),
        (b'{"userId": "u", "config": {"provider": "nope"}}', "Unknown provider 'nope'"),
        (b'{"userId": "u", "config": {"provider": "openai"}}', "OPENAI_API_KEY"),
        (b'{"userId": "u", "config": {"provider": "anthropic"}}', "ANTHROPIC_API_KEY"),
    ],
)
async def test_create_session_rejects_bad_input(server, http, raw, fragment):
    status, body = await post(http, f"{server.url}/api/streaming/session", data=raw)
    assert status == 400
    assert fragment in body["error"]
    assert len(server.manager.registry) == 0


@pytest.mark.parametrize(
    ("body", "fragment"),
    [({}, "prompt"), ({"prompt": 5}, "prompt"), ({"prompt": "   "}, "empty"), ({"prompt": None}, "prompt")],
)
async def test_start_rejects_bad_input(server, http, body, fragment):
    session_id = await create_session(http, server)
    status, answer = await post(http, f"{server.url}/api/streaming/{session_id}/start", body)
    assert status == 400 and fragment in answer["error"]
    assert (await get_session(http, server, session_id))["state"] == "created"


async def test_body_too_large_is_413(start_server, http):
    server = await start_server(max_body_bytes=4096)
    status, body = await post(http, f"{server.url}/api/streaming/session", {"userId": "u" * 5000})
    assert status == 413 and "4096 bytes" in body["error"]
    session_id = await create_session(http, server)
    status, body = await post(http, f"{server.url}/api/streaming/{session_id}/start", {"prompt": "p" * 5000})
    assert status == 413


async def test_default_body_limit_is_1_mib(server, http):
    # 1 MiB since issue 19: room for a start body whose context fills MAX_CONTEXT_CHARS.
    status, _ = await post(
        http, f"{server.url}/api/streaming/session", {"userId": "u", "pad": "x" * 1_100_000}
    )
    assert status == 413


async def test_prompt_too_long_is_413(start_server, http):
    server = await start_server(max_prompt_chars=100)
    session_id = await create_session(http, server)
    status, body = await post(http, f"{server.url}/api/streaming/{session_id}/start", {"prompt": "p" * 101})
    assert status == 413 and "limit 100" in body["error"]


async def test_too_many_live_sessions_is_429(start_server, http):
    server = await start_server(max_sessions_per_user=2)
    first = await create_session(http, server, "alice")
    await create_session(http, server, "alice")
    status, body = await post(http, f"{server.url}/api/streaming/session", {"userId": "alice"})
    assert status == 429 and "limit 2" in body["error"]
    await create_session(http, server, "bob")
    # A finished session no longer counts.
    await post(http, f"{server.url}/api/streaming/{first}/cancel")
    await create_session(http, server, "alice")


async def test_unknown_route_and_method_are_json(server, http):
    async with http.get(f"{server.url}/api/nope") as resp:
        assert resp.status == 404 and "error" in await resp.json()
    async with http.delete(f"{server.url}/api/streaming/session") as resp:
        assert resp.status == 405 and "error" in await resp.json()


async def test_cors_preflight_and_headers(start_server, http):
    server = await start_server(cors_origins=["*"])
    headers = {"Origin": "http://example.test", "Access-Control-Request-Method": "POST"}
    async with http.options(f"{server.url}/api/streaming/session", headers=headers) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
    async with http.get(f"{server.url}/healthz", headers={"Origin": "http://example.test"}) as resp:
        assert resp.headers["Access-Control-Allow-Origin"] == "*"


async def test_cors_restricted_origins(start_server, http):
    server = await start_server(cors_origins=["http://good.test"])
    async with http.get(f"{server.url}/healthz", headers={"Origin": "http://good.test"}) as resp:
        assert resp.headers["Access-Control-Allow-Origin"] == "http://good.test"
    async with http.get(f"{server.url}/healthz", headers={"Origin": "http://evil.test"}) as resp:
        assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers


async def test_index_page_is_served(server, http):
    async with http.get(f"{server.url}/") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
