"""Two server processes on one Redis behind real nginx (the config ``make cluster`` uses),
driven by socket.io-client in Node over both transports."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.cluster import free_port, start_nginx
from tests.helpers import WAIT
from tests.redis_server import RedisServer
from tests.server_process import ServerProcess

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def behind_nginx(redis_server: RedisServer, tmp_path: Path) -> Iterator[str]:
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


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_socketio_client_through_nginx(behind_nginx, http, transport):
    node = shutil.which("node")
    assert node, "node is required"
    proc = await asyncio.create_subprocess_exec(
        node,
        str(ROOT / "tests" / "cluster_client.mjs"),
        behind_nginx,
        transport,
        stdout=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(WAIT * 2):
        out, _ = await proc.communicate()
    assert proc.returncode == 0
    result = json.loads(out)
    assert result["paused"]["ok"] is True and result["paused"]["state"] == "paused"
    async with http.get(f"{behind_nginx}/api/streaming/{result['sessionId']}") as resp:
        status = await resp.json()
    assert [c["seq"] for c in result["chunks"]] == list(range(status["chunks"]))
    assert "".join(c["content"] for c in result["chunks"]) == status["text"]
    assert result["complete"]["totalChunks"] == status["chunks"]
