"""python-engineio's internals that ``server.transports.engineio_adapter`` relies on.

If a new python-engineio or python-socketio release changes any of them, this fails
first and says which, instead of viewers silently losing events.
"""

from __future__ import annotations

import asyncio
from importlib.metadata import version as dist_version
from typing import Any

import socketio

from server.app import sio_key
from server.transports.engineio_adapter import (
    EngineIOSocket,
    aiohttp_request,
    close_engineio_session,
    has_namespace,
    on_engineio_sessions,
    websocket_transport,
)
from tests.helpers import LiveServer, ServerFactory, create_session, record_events, wait_until


def _only_sid(server: LiveServer, session_id: str) -> str:
    session = server.manager.get_session(session_id)
    assert session is not None
    (key,) = session.viewers
    return key.rsplit(":", 1)[1]


async def test_engineio_socket_internals(start_server: ServerFactory, http: Any, sio_clients: Any) -> None:
    server = await start_server(socketio_direct_websocket=False)
    session_id = await create_session(http, server)
    namespace = f"/stream/{session_id}"
    client: socketio.AsyncClient = sio_clients()
    recorder = record_events(client, namespace)
    await client.connect(server.url, namespaces=[namespace], transports=["websocket"])
    sio = server.app[sio_key]
    sid = _only_sid(server, session_id)

    eio_sid = sio.manager.eio_sid_from_sid(sid, namespace)
    assert eio_sid in sio.eio.sockets, (
        f"python-socketio {dist_version('python-socketio')}: eio_sid_from_sid / eio.sockets"
    )
    socket = sio.eio.sockets[eio_sid]
    version = f"python-engineio {dist_version('python-engineio')}"
    assert isinstance(socket.queue, asyncio.Queue), f"{version}: AsyncSocket.queue is no asyncio.Queue"
    assert hasattr(socket.queue, "_getters"), f"{version}: asyncio.Queue has no _getters"
    assert socket.closed is False, f"{version}: AsyncSocket.closed"

    adapter = EngineIOSocket(sio, sid, namespace)
    assert not adapter.closed
    await wait_until(adapter.writer_idle)
    assert adapter.queued() == 0
    adapter.enqueue(f'2{namespace},["chunk",{{"seq":0,"content":"via the queue"}}]')
    await recorder.wait_for(lambda: bool(recorder.chunks))
    assert recorder.chunks == [{"seq": 0, "content": "via the queue"}], (
        f"{version}: the writer drains queued Packets"
    )

    assert websocket_transport(sio.get_environ(sid, namespace)) is not None, "environ['aiohttp.request']"
    await client.disconnect()
    await wait_until(lambda: adapter.closed)


async def test_long_polling_has_no_websocket_transport(
    start_server: ServerFactory, http: Any, sio_clients: Any
) -> None:
    server = await start_server(socketio_direct_websocket=False)
    session_id = await create_session(http, server)
    namespace = f"/stream/{session_id}"
    client: socketio.AsyncClient = sio_clients()
    await client.connect(server.url, namespaces=[namespace], transports=["polling"])
    sio = server.app[sio_key]
    sid = _only_sid(server, session_id)
    assert websocket_transport(sio.get_environ(sid, namespace)) is None
    assert not EngineIOSocket(sio, sid, namespace).closed
    # python-socketio's polling client takes ~20 s to leave gracefully: drop it instead.
    await client.eio.disconnect(abort=True)


async def test_engineio_session_hooks(start_server: ServerFactory, http: Any, sio_clients: Any) -> None:
    server = await start_server(socketio_direct_websocket=False)
    sio = server.app[sio_key]
    version = f"python-engineio {dist_version('python-engineio')}"
    assert {"connect", "disconnect"} <= set(sio.eio.handlers), f"{version}: eio.handlers"
    opened: list[str] = []
    closed: list[str] = []

    def on_open(eio_sid: str, environ: dict[str, Any]) -> None:
        assert aiohttp_request(environ) is not None, "environ['aiohttp.request']"
        opened.append(eio_sid)

    on_engineio_sessions(sio, on_open, closed.append)
    client: socketio.AsyncClient = sio_clients()
    await client.connect(server.url, transports=["websocket"])
    (eio_sid,) = opened
    assert has_namespace(sio, eio_sid), f"python-socketio {dist_version('python-socketio')}: sid_from_eio_sid"
    await client.disconnect()
    await wait_until(lambda: closed == [eio_sid])

    async with http.get(f"{server.url}/socket.io/?EIO=4&transport=polling") as resp:
        assert resp.status == 200
    idle = opened[-1]
    assert not has_namespace(sio, idle)
    await close_engineio_session(sio, idle)
    assert closed[-1] == idle and idle not in sio.eio.sockets, f"{version}: AsyncSocket.close(wait=False)"
    async with http.get(f"{server.url}/socket.io/?EIO=4&transport=polling&sid={idle}") as resp:
        assert resp.status == 400
