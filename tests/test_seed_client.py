"""A client written only against the seed (socket.io-client in Node) works unchanged."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import WAIT, get_session

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("mode", ["live", "late"])
async def test_seed_javascript_client_streams_a_whole_answer(server, http, mode):
    node = shutil.which("node")
    assert node, "node is required (make test installs the frontend packages)"
    proc = await asyncio.create_subprocess_exec(
        node, str(ROOT / "tests" / "seed_client.mjs"), server.url, mode, stdout=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(WAIT * 2):
        out, _ = await proc.communicate()
    assert proc.returncode == 0
    result = json.loads(out)
    snapshot = await get_session(http, server, result["sessionId"])
    assert result["wsEndpoint"] == f"/ws/stream/{result['sessionId']}"
    assert [c["seq"] for c in result["chunks"]] == list(range(snapshot["chunks"]))
    assert "".join(c["content"] for c in result["chunks"]) == snapshot["text"]
    assert result["complete"]["totalChunks"] == snapshot["chunks"]
