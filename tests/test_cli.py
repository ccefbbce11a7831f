"""The CLI and graceful shutdown, with the server as a real process."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import socketio

from tests.conftest import WAIT, record_events

ROOT = Path(__file__).resolve().parent.parent


def test_help_lists_the_flags():
    out = subprocess.run(
        [sys.executable, "-m", "server", "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    for flag in ("--host", "--port", "--provider", "--log-level"):
        assert flag in out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def server_process() -> AsyncIterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["DEMO_TOKENS_PER_SECOND"] = "50"
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port), "--provider", "demo"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http, asyncio.timeout(WAIT):
        while True:
            try:
                async with http.get(f"{url}/healthz") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
    yield proc, url
    if proc.poll() is None:
        proc.kill()
    proc.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_ends_running_sessions_with_shutdown_error(server_process, sig):
    proc, url = server_process
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
    output = proc.stdout.read() if proc.stdout else ""
    assert "a long answer" not in output, "prompts are not logged"
