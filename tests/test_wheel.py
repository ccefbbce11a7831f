"""The package as a user installs it: the wheel built from this checkout (with the demo
page inside), installed into a fresh venv outside the checkout, started as
``tiptap-streaming-server`` from another folder, serves the page and a demo stream."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import aiohttp
import pytest

from deploy.build_wheel import build_wheel
from tests.helpers import WAIT
from tests.server_process import ROOT, ServerProcess

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The venv's ``bin`` folder, with only the wheel (and its dependencies) installed."""
    base = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(base / "dist")
    names = {
        name
        for name in subprocess.run(
            [sys.executable, "-m", "zipfile", "-l", str(wheel)], check=True, capture_output=True, text=True
        ).stdout.split()
        if "/" in name
    }
    for part in ("server/transports/wire/socketio.py", "server/core/manager.py", "server/static/index.html"):
        assert part in names, f"{part} is missing from {wheel.name}"
    env_dir = base / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    subprocess.run([bin_dir / "pip", "install", "--quiet", str(wheel)], check=True)
    # The package is the wheel's, not this checkout's.
    where = subprocess.run(
        [bin_dir / "python", "-c", "import server; print(server.__file__)"],
        cwd=base,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert str(ROOT) not in where and "site-packages" in where
    return bin_dir


async def test_the_installed_package_serves_the_page_and_a_stream(installed, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    page = (ROOT / "frontend" / "dist" / "index.html").read_text()
    with ServerProcess(command=[str(installed / "tiptap-streaming-server")], cwd=elsewhere) as server:
        timeout = aiohttp.ClientTimeout(total=WAIT)
        async with aiohttp.ClientSession(base_url=server.url, timeout=timeout) as http:
            async with http.get("/") as response:
                assert response.status == 200
                assert await response.text() == page
            async with http.post("/api/streaming/session", json={"userId": "u"}) as response:
                assert response.status == 200
                session_id = (await response.json())["sessionId"]
            body = {"prompt": "Hello from the wheel", "config": {"provider": "demo", "maxTokens": 20}}
            async with http.post(f"/api/streaming/{session_id}/start", json=body) as response:
                assert response.status == 200, await response.text()
            events = []
            async with http.get(f"/api/streaming/{session_id}/events") as response:
                async for line in response.content:
                    if line.startswith(b"event: "):
                        events.append(line[7:].strip().decode())
                    if events and events[-1] in ("complete", "stream-error"):
                        break
            assert events[-1] == "complete" and "chunk" in events
            async with http.get(f"/api/streaming/{session_id}") as response:
                status = await response.json()
            assert status["state"] == "completed" and status["text"]
