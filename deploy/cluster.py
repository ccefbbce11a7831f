"""``make cluster``: Redis, two server processes and nginx in front of them, on one machine.

    python deploy/cluster.py [--port 3001] [--processes 2] [--sentinel]

nginx listens on ``--port`` (3001, what the demo page and the seed's client expect) and
spreads requests over the server processes (long-polling sticky by client address); the
processes share one ``redis-server``. With ``--sentinel`` (``make cluster SENTINEL=1``)
Redis is the shape production needs instead: a primary, two replicas and three Sentinels
that promote a replica when the primary fails; the processes find the primary through
the Sentinels (``REDIS_SENTINELS``, ``REDIS_SENTINEL_MASTER``) and follow it. Every port
is a free one on 127.0.0.1, printed at start. Ctrl-C stops them all. Uses Debian's
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import redis

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = Path(__file__).resolve().parent / "nginx.conf.template"

#: The name the Sentinels monitor the primary under (``REDIS_SENTINEL_MASTER``).
MASTER = "mymaster"
#: The Sentinels take the primary for dead after this long without an answer (Redis's
#: default is 30 s; a demo wants to see a failover happen).
DOWN_AFTER_MS = 5000
#: What a primary may lose in a failover is bounded: it refuses writes (``NOREPLICAS``)
#: while fewer than this many replicas acknowledged within ``MIN_REPLICAS_MAX_LAG`` s
#: (docs/scaling.md). Set on every node: any of them may become the primary.
MIN_REPLICAS_TO_WRITE = 1
MIN_REPLICAS_MAX_LAG = 2
STARTUP_TIMEOUT = 30.0


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
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def wait_for(condition: Callable[[], bool], what: str, timeout: float = STARTUP_TIMEOUT) -> None:
    """Poll ``condition`` (a process coming up has no event to wait on) until it holds."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (OSError, redis.RedisError, KeyError) as exc:
            last = exc
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting until {what} (last error: {last!r})")


def client(port: int) -> redis.Redis:
    return redis.Redis(port=port, decode_responses=True, socket_timeout=2, socket_connect_timeout=2)


@dataclass
class RedisShape:
    """The Redis side of the cluster: its processes (in start order) and what the server
    processes are told to find it."""

    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    #: Data nodes' ports (the primary first) and the Sentinels' ports.
    nodes: list[int] = field(default_factory=list)
    sentinels: list[int] = field(default_factory=list)

    def describe(self) -> str:
        if not self.sentinels:
            return f"redis on {self.nodes[0]}"
        return (
            f"redis primary on {self.nodes[0]}, replicas on {', '.join(map(str, self.nodes[1:]))}, "
            f"Sentinels on {', '.join(map(str, self.sentinels))} (master {MASTER!r})"
        )

    def stop(self) -> None:
        stop_all(self.processes)


def start_redis(scratch: Path) -> RedisShape:
    """One ``redis-server`` (``REDIS_URL``)."""
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", *_flags(_node_config(port, scratch / f"redis-{port}"))],
        stdout=subprocess.DEVNULL,
    )
    shape = RedisShape([process], {"REDIS_URL": f"redis://127.0.0.1:{port}/0"}, [port])
    try:
        wait_listening(port, process)
    except BaseException:
        shape.stop()
        raise
    return shape


def start_sentinel_group(scratch: Path, replicas: int = 2, sentinels: int = 3) -> RedisShape:
    """A primary, ``replicas`` replicas and ``sentinels`` Sentinels (quorum: a majority);
    returns once the replicas are in sync and every Sentinel sees the whole group."""
    shape = RedisShape(nodes=[free_port() for _ in range(1 + replicas)])
    shape.sentinels = [free_port() for _ in range(sentinels)]
    primary = shape.nodes[0]
    try:
        for port in shape.nodes:
            config = _node_config(port, scratch / f"redis-{port}", replicated=True)
            if port != primary:
                config.append(f"replicaof 127.0.0.1 {primary}")
            shape.processes.append(
                subprocess.Popen(["redis-server", *_flags(config)], stdout=subprocess.DEVNULL)
            )
        for port, process in zip(shape.nodes, shape.processes, strict=True):
            wait_listening(port, process)
        wait_for(lambda: replicas_online(primary) == replicas, "the replicas are in sync")
        quorum = sentinels // 2 + 1
        for port in shape.sentinels:
            directory = scratch / f"sentinel-{port}"
            directory.mkdir(parents=True, exist_ok=True)
            # A Sentinel rewrites its config file (what it learns of the group): a file it owns.
            path = directory / "sentinel.conf"
            path.write_text(
                "\n".join(
                    [
                        f"port {port}",
                        "bind 127.0.0.1",
                        f"dir {directory}",
                        f"sentinel monitor {MASTER} 127.0.0.1 {primary} {quorum}",
                        f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}",
                        f"sentinel failover-timeout {MASTER} {DOWN_AFTER_MS * 3}",
                        f"sentinel parallel-syncs {MASTER} 1",
                    ]
                )
                + "\n"
            )
            shape.processes.append(
                subprocess.Popen(["redis-server", str(path), "--sentinel"], stdout=subprocess.DEVNULL)
            )
        for port, process in zip(shape.sentinels, shape.processes[len(shape.nodes) :], strict=True):
            wait_listening(port, process)
        wait_for(
            lambda: all(
                sentinel_view(port) == (primary, replicas, sentinels - 1) for port in shape.sentinels
            ),
            "every Sentinel sees the primary, its replicas and the other Sentinels",
        )
    except BaseException:
        shape.stop()
        raise
    shape.env = {
        "REDIS_SENTINELS": ",".join(f"127.0.0.1:{port}" for port in shape.sentinels),
        "REDIS_SENTINEL_MASTER": MASTER,
    }
    return shape


def _node_config(port: int, directory: Path, *, replicated: bool = False) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    config = [f"port {port}", "bind 127.0.0.1", f"dir {directory}", "appendonly yes", 'save ""']
    if replicated:
        config += [
            f"min-replicas-to-write {MIN_REPLICAS_TO_WRITE}",
            f"min-replicas-max-lag {MIN_REPLICAS_MAX_LAG}",
            # A replica's first sync starts at once instead of after 5 s.
            "repl-diskless-sync yes",
            "repl-diskless-sync-delay 0",
        ]
    return config


def _flags(config: list[str]) -> list[str]:
    """Config lines as ``redis-server`` command-line options (``--port 6379 ...``)."""
    flags: list[str] = []
    for line in config:
        name, _, value = line.partition(" ")
        flags += [f"--{name}", *(value.split(" ") if value != '""' else [""])]
    return flags


def replicas_online(port: int) -> int:
    """Replicas of the server on ``port`` that are in sync (``INFO replication``)."""
    info = client(port).info("replication")
    return sum(1 for key, value in info.items() if key.startswith("slave") and value.get("state") == "online")


def sentinel_view(port: int) -> tuple[int, int, int]:
    """What the Sentinel on ``port`` knows of the group: the primary's port, how many
    replicas and how many other Sentinels."""
    state = cast(dict[str, Any], client(port).sentinel_master(MASTER))
    return int(state["port"]), int(state["num-slaves"]), int(state["num-other-sentinels"])


def stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each, then wait (SIGKILL after 10 s)."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=3001)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument(
        "--sentinel",
        action="store_true",
        help="a primary, two replicas and three Sentinels instead of one redis-server",
    )
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="streaming-cluster-"))
    ports = [free_port() for _ in range(args.processes)]
    # Stopped in reverse order, each group before the next: nginx, then the processes
    # (they hand their streams over through Redis), then Redis.
    groups: list[list[subprocess.Popen[bytes]]] = []
    try:
        redis = start_sentinel_group(scratch) if args.sentinel else start_redis(scratch)
        groups.append(redis.processes)
        env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")} | redis.env
        servers = [
            subprocess.Popen(
                [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port)],
                cwd=ROOT,
                env=env,
            )
            for port in ports
        ]
        groups.append(servers)
        for port, server in zip(ports, servers, strict=True):
            wait_listening(port, server, timeout=30)
        groups.append([start_nginx(scratch / "nginx", args.port, ports)])
        print(
            f"cluster: nginx on http://127.0.0.1:{args.port} -> processes on {', '.join(map(str, ports))}; "
            f"{redis.describe()}. Ctrl-C stops everything.",
            flush=True,
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        for group in reversed(groups):
            stop_all(group)
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    # Started in the background, a shell may have set SIGINT to "ignore": Ctrl-C must stop it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
