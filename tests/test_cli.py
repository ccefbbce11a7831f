"""The CLI and graceful shutdown, with the server as a real process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import aiohttp
import pytest
import socketio

from tests.helpers import WAIT, record_events
from tests.server_process import ROOT, ServerProcess


def test_help_lists_the_flags():
    out = subprocess.run(
        [sys.executable, "-m", "server", "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    for flag in ("--host", "--port", "--provider", "--log-level"):
        assert flag in out


def test_a_bad_prompts_file_stops_the_server_at_startup(tmp_path):
    path = tmp_path / "prompts.toml"
    path.write_text("[actions.shorten]\nuser = 'Shorter: {selected}'\n")
    done = subprocess.run(
        [sys.executable, "-m", "server", "--port", "0"],
        cwd=ROOT,
        env={**os.environ, "PROMPTS_FILE": str(path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    message = done.stderr.strip().splitlines()[-1]
    assert str(path) in message and "'shorten'" in message and "{selected}" in message
    assert "Traceback" not in done.stderr


@pytest.fixture
def server_process() -> Iterator[ServerProcess]:
    with ServerProcess({"DEMO_TOKENS_PER_SECOND": "50"}) as server:
        yield server


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_ends_running_sessions_with_shutdown_error(server_process, sig):
    proc, url = server_process.process, server_process.url
    assert proc is not None
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/api/streaming/session", json={"userId": "u"}) as resp:
            session_id = (await resp.json())["sessionId"]
        client = socketio.AsyncClient(reconnection=False)
        namespace = f"/stream/{session_id}"
        viewer = record_events(client, namespace)
        await client.connect(url, namespaces=[namespace], transports=["websocket"], wait_timeout=WAIT)
        async with http.post(
            f"{url}/api/streaming/{session_id}/start", json={"prompt": "a long answer"}
        ) as resp:
            assert resp.status == 200
        await viewer.wait_for(lambda: len(viewer.chunks) >= 2)
        proc.send_signal(sig)
        await viewer.wait_finished()
        assert viewer.errors[0]["code"] == "shutdown"
        assert viewer.seqs == list(range(len(viewer.chunks)))
        await client.disconnect()
    code = await asyncio.to_thread(proc.wait, WAIT)
    assert code == 0
    assert "a long answer" not in server_process.output, "prompts are not logged"
