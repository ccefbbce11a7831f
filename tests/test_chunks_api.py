"""``GET /api/streaming/{id}/chunks?after=N&limit=M``: pages of the chunk log."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import create_session, get_session, start_stream, stream_viewer


async def finished_session(http, server, sio_clients, **config: Any) -> tuple[str, dict[str, Any]]:
    session_id = await create_session(http, server, **config)
    _, viewer = await stream_viewer(sio_clients, server, session_id)
    await start_stream(http, server, session_id)
    await viewer.wait_finished()
    return session_id, await get_session(http, server, session_id)


async def page(http, server, session_id: str, query: str = "") -> tuple[int, dict[str, Any]]:
    async with http.get(f"{server.url}/api/streaming/{session_id}/chunks{query}") as resp:
        return resp.status, await resp.json()


async def test_pages_cover_the_log_exactly_once(start_server, http, sio_clients):
    server = await start_server(chunks_page_limit=7)
    session_id, snapshot = await finished_session(
        http, server, sio_clients, maxTokens=60, tokensPerSecond=150
    )
    total = snapshot["chunks"]
    assert total > 7
    collected: list[dict[str, Any]] = []
    after = -1
    while True:
        status, body = await page(http, server, session_id, f"?after={after}")
        assert status == 200
        assert body["sessionId"] == session_id
        assert body["epoch"] == snapshot["epoch"]
        assert body["state"] == "completed"
        assert body["lastSeq"] == total - 1
        assert len(body["chunks"]) <= 7, "the default limit is the page limit"
        if not body["chunks"]:
            break
        collected += body["chunks"]
        after = body["chunks"][-1]["seq"]
    assert [c["seq"] for c in collected] == list(range(total))
    assert "".join(c["content"] for c in collected) == snapshot["text"]


async def test_page_edges(server, http, sio_clients):
    # 0.3 s of tokens: several chunks even when a busy machine stretches the coalescing
    # window to COALESCE_MAX_MS (at 1,000 tokens/s the whole answer could be one chunk).
    session_id, snapshot = await finished_session(
        http, server, sio_clients, maxTokens=30, tokensPerSecond=100
    )
    total = snapshot["chunks"]
    assert total >= 5
    _, body = await page(http, server, session_id)
    assert [c["seq"] for c in body["chunks"]] == list(range(total)), "no parameters: the whole log"
    _, body = await page(http, server, session_id, f"?after={total - 1}")
    assert body["chunks"] == [], "after the end: nothing"
    _, body = await page(http, server, session_id, f"?after={total + 100}")
    assert body["chunks"] == []
    _, body = await page(http, server, session_id, "?after=2&limit=1")
    assert [c["seq"] for c in body["chunks"]] == [3]
    _, body = await page(http, server, session_id, "?limit=1000")
    assert len(body["chunks"]) == total


async def test_a_session_with_no_chunks_yet(server, http):
    session_id = await create_session(http, server)
    status, body = await page(http, server, session_id)
    assert status == 200
    assert body["chunks"] == []
    assert body["lastSeq"] == -1
    assert body["state"] == "created"


@pytest.mark.parametrize(
    "query",
    ["?after=x", "?after=-2", "?after=1.5", "?limit=0", "?limit=-1", "?limit=1001", "?limit=abc", "?after="],
)
async def test_bad_values_are_400(server, http, query):
    session_id = await create_session(http, server)
    status, body = await page(http, server, session_id, query)
    assert status == 400
    assert set(body) == {"error"}


async def test_unknown_session_is_404(server, http):
    status, body = await page(http, server, "00000000-0000-4000-8000-000000000000")
    assert status == 404
    assert body == {"error": "Session not found"}
