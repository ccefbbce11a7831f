"""Several real server processes on one real Redis, seen from a test: the ``nodes`` and
``viewers`` fixtures (imported by conftest) and the HTTP calls the cluster tests share."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import socketio

from deploy.cluster import free_port, start_nginx
from tests.helpers import WAIT, Recorder, record_events
from tests.redis_server import RedisServer
from tests.server_process import ServerProcess

LEASE = "1"
OPENAI_KEY = "sk-test-cluster-0123456789"


class Node:
    """One server process, seen from the test: its URL and its process."""

    def __init__(self, process: ServerProcess) -> None:
        self.process = process
        self.url = process.url

    def signal(self, signum: signal.Signals) -> None:
        assert self.process.process is not None
        self.process.process.send_signal(signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait_exit()

    def wait_exit(self) -> int:
        assert self.process.process is not None
        return self.process.process.wait(timeout=30)


StartNodes = Callable[..., Awaitable[list[Node]]]


@pytest.fixture
async def nodes(redis_server: RedisServer) -> AsyncIterator[StartNodes]:
    redis_server.flush()
    started: list[ServerProcess] = []

    async def start(count: int, **env: str) -> list[Node]:
        values = {
            "REDIS_URL": redis_server.url,
            "OWNER_LEASE_SECONDS": LEASE,
            "DEMO_TOKENS_PER_SECOND": "100",
            "LOG_LEVEL": "warning",
            **env,
        }
        processes = [ServerProcess(values) for _ in range(count)]
        await asyncio.gather(*(asyncio.to_thread(p.__enter__) for p in processes))
        started.extend(processes)
        return [Node(p) for p in processes]

    yield start
    await asyncio.gather(*(asyncio.to_thread(p.__exit__, None, None, None) for p in started))
    for process in started:
        print(f"--- {process.url}\n{process.output}")


@pytest.fixture
async def viewers() -> AsyncIterator[Callable[..., Awaitable[tuple[socketio.AsyncClient, Recorder]]]]:
    clients: list[socketio.AsyncClient] = []

    async def view(
        node: Node, session_id: str, auth: dict[str, Any] | None = None, transport: str = "websocket"
    ):
        client = socketio.AsyncClient(reconnection=False)
        clients.append(client)
        namespace = f"/stream/{session_id}"
        recorder = record_events(client, namespace)
        await client.connect(
            node.url, namespaces=[namespace], transports=[transport], auth=auth, wait_timeout=WAIT
        )
        return client, recorder

    yield view
    for client in clients:
        if client.connected:
            if client.transport() == "polling":
                await client.eio.disconnect(abort=True)
            else:
                await client.disconnect()


async def post(http, url: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    async with http.post(url, json=body) as resp:
        return resp.status, await resp.json()


async def create(http, node: Node, user: str = "u", **config: Any) -> str:
    status, body = await post(http, f"{node.url}/api/streaming/session", {"userId": user, "config": config})
    assert status == 200, body
    return str(body["sessionId"])


async def start(http, node: Node, session_id: str, prompt: str = "Explain streaming") -> tuple[int, dict]:
    return await post(http, f"{node.url}/api/streaming/{session_id}/start", {"prompt": prompt})


async def status_of(http, node: Node, session_id: str) -> dict[str, Any]:
    async with http.get(f"{node.url}/api/streaming/{session_id}") as resp:
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


def assert_contiguous(recorder: Recorder, total: int) -> None:
    assert recorder.seqs == list(range(total)), "every chunk exactly once, in order"


@pytest.fixture
def behind_nginx(redis_server: RedisServer, tmp_path: Path) -> Iterator[str]:
    """Two server processes on one Redis behind real nginx (the config ``make cluster``
    uses); the URL of nginx."""
    redis_server.flush()
    env = {"REDIS_URL": redis_server.url, "LOG_LEVEL": "warning"}
    with ServerProcess(env) as a, ServerProcess(env) as b:
        port = free_port()
        nginx = start_nginx(tmp_path / "nginx", port, [a.port, b.port])
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            nginx.terminate()
            try:
                nginx.wait(timeout=10)
            except subprocess.TimeoutExpired:
                nginx.kill()
