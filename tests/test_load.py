"""200 concurrent sessions, each with its own Socket.IO viewer, all complete with nothing lost."""

from __future__ import annotations

import asyncio

from tests.helpers import assert_exactly_once, create_session, start_stream, stream_viewer

SESSIONS = 200


async def test_200_concurrent_sessions_complete_losslessly(start_server, http, sio_clients):
    server = await start_server(max_sessions_per_user=SESSIONS)
    ids = await asyncio.gather(
        *(
            create_session(http, server, f"user-{i % 7}", maxTokens=60, tokensPerSecond=300)
            for i in range(SESSIONS)
        )
    )
    viewers = [await stream_viewer(sio_clients, server, sid) for sid in ids]
    await asyncio.gather(
        *(start_stream(http, server, sid, f"Prompt number {i}") for i, sid in enumerate(ids))
    )
    await asyncio.gather(*(viewer.wait_finished(timeout=120) for _, viewer in viewers))

    for sid, (_, viewer) in zip(ids, viewers, strict=True):
        session = server.manager.get_session(sid)
        assert session is not None
        assert viewer.completes, viewer.errors
        assert_exactly_once(viewer, len(session.chunks))
        assert viewer.text == session.text
        assert session.usage is not None and session.usage.completion_tokens == 60
