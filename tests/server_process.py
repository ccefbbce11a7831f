"""``python -m server`` as a real process, for the CLI, signal and browser tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parent.parent
READY = "Streaming server on "


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """Starts the server with the demo provider and no API keys; ready once it prints that it
    listens. Its output is drained by a thread (a full pipe would block the server)."""

    def __init__(
        self,
        env: dict[str, str] | None = None,
        startup_timeout: float = 30.0,
        command: list[str] | None = None,
        cwd: Path = ROOT,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")} | (env or {})
        self._startup_timeout = startup_timeout
        self._lines: list[str] = []
        self._ready = threading.Event()
        self.process: subprocess.Popen[str] | None = None
        #: What starts the server (``python -m server`` from the checkout unless given).
        self._command = command or [sys.executable, "-m", "server"]
        self._cwd = cwd

    def __enter__(self) -> ServerProcess:
        command = [*self._command, "--host", "127.0.0.1", "--port", str(self.port)]
        self.process = subprocess.Popen(
            [*command, "--provider", "demo"],
            cwd=self._cwd,
            env=self._env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        reader = threading.Thread(target=self._read, daemon=True)
        reader.start()
        if not self._ready.wait(self._startup_timeout):
            self.__exit__(None, None, None)
            raise RuntimeError(f"the server did not start within {self._startup_timeout}s:\n{self.output}")
        if self.process.poll() is not None:
            raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.output}")
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.append(line)
            if line.startswith(READY):
                self._ready.set()
        self._ready.set()  # exited: let the starter see it

    @property
    def output(self) -> str:
        return "".join(self._lines)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
