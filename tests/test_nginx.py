"""Two server processes on one Redis behind real nginx (the config ``make cluster`` uses),
driven by socket.io-client in Node over both transports."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import WAIT

ROOT = Path(__file__).resolve().parent.parent


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
