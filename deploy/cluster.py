"""``make cluster``: Redis, two server processes and nginx in front of them, on one machine.

    python deploy/cluster.py [--port 3001] [--processes 2]

nginx listens on ``--port`` (3001, what the demo page and the seed's client expect) and
spreads requests over the server processes (long-polling sticky by client address); the
processes share one ``redis-server``. Ctrl-C stops them all. Uses Debian's
``redis-server`` and ``nginx`` (``make test`` installs both as root).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = Path(__file__).resolve().parent / "nginx.conf.template"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nginx_config(prefix: Path, listen_port: int, server_ports: list[int]) -> str:
    """The nginx config for these ports, from ``nginx.conf.template``."""
    servers = "\n".join(f"        server 127.0.0.1:{port};" for port in server_ports)
    return (
        TEMPLATE.read_text()
        .replace("@PREFIX@", str(prefix))
        .replace("@LISTEN@", f"127.0.0.1:{listen_port}")
        .replace("@SERVERS@", servers)
    )


def start_nginx(prefix: Path, listen_port: int, server_ports: list[int]) -> subprocess.Popen[bytes]:
    """nginx in the foreground, its files under ``prefix``; returns once it listens."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    prefix.mkdir(parents=True, exist_ok=True)
    config = prefix / "nginx.conf"
    config.write_text(nginx_config(prefix, listen_port, server_ports))
    process = subprocess.Popen([nginx, "-p", str(prefix), "-c", str(config), "-g", "daemon off;"])
    wait_listening(listen_port, process)
    return process


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=3001)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="streaming-cluster-"))
    redis_port = free_port()
    ports = [free_port() for _ in range(args.processes)]
    children: list[subprocess.Popen[bytes]] = []
    try:
        redis = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(redis_port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(scratch),
                "--appendonly",
                "yes",
                "--save",
                "",
            ],
        )
        children.append(redis)
        wait_listening(redis_port, redis)
        env = dict(os.environ, REDIS_URL=f"redis://127.0.0.1:{redis_port}/0")
        for port in ports:
            server = subprocess.Popen(
                [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port)],
                cwd=ROOT,
                env=env,
            )
            children.append(server)
        for port, server in zip(ports, children[1:], strict=True):
            wait_listening(port, server, timeout=30)
        children.append(start_nginx(scratch / "nginx", args.port, ports))
        print(
            f"cluster: nginx on http://127.0.0.1:{args.port} -> processes on {', '.join(map(str, ports))}; "
            f"redis on {redis_port}. Ctrl-C stops everything.",
            flush=True,
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        for child in reversed(children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in reversed(children):
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    # Started in the background, a shell may have set SIGINT to "ignore": Ctrl-C must stop it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
