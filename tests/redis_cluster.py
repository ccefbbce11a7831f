"""A Redis Cluster for the tests: three primaries, each with ``replicas`` replicas, real
``redis-server`` processes (``--cluster-enabled yes``) on ephemeral ports of 127.0.0.1,
joined by ``redis-cli --cluster create``, and what the tests do to it: flush it, find the
primary that serves a key, kill a primary and wait until its replica takes its slots over.

A node takes a primary for dead after ``NODE_TIMEOUT_MS`` (1 s: production keeps redis.conf's
15 s), and its replica then wins the election within about a second. Each node is told its
bus port (``cluster-port``): the default, port + 10000, may not exist for an ephemeral port.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import TracebackType

import pytest
import redis
from redis.crc import key_slot

from deploy.cluster import wait_for
from tests.cluster_nodes import LEASE, Node, StartNodes
from tests.redis_sentinel import RedisNode, node_client
from tests.server_process import ServerProcess

PRIMARIES = 3
NODE_TIMEOUT_MS = 1000
STARTUP_TIMEOUT = 30.0
#: A killed primary is taken for dead after NODE_TIMEOUT_MS; its replica is then elected.
FAILOVER_TIMEOUT = 30.0


class RedisCluster:
    """Three primaries and their replicas on 127.0.0.1 (each with ``password`` as its
    ``requirepass`` and ``masterauth``, when given)."""

    def __init__(self, replicas: int = 1, password: str | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="redis-cluster-test-"))
        self.replicas = replicas
        self.password = password
        self.nodes = [RedisNode(self.root, f"node{i}") for i in range(PRIMARIES * (1 + replicas))]
        ports = _other_free_ports(len(self.nodes), {node.port for node in self.nodes})
        self.bus_ports = {node.port: port for node, port in zip(self.nodes, ports, strict=True)}

    # -- what a server process is given ----------------------------------------

    @property
    def urls(self) -> tuple[str, ...]:
        """Two nodes, in case one is down when a process starts."""
        return tuple(f"redis://127.0.0.1:{node.port}" for node in self.nodes[:2])

    @property
    def url(self) -> str:
        """``REDIS_CLUSTER_URL``."""
        return ",".join(self.urls)

    def env(self) -> dict[str, str]:
        return {"REDIS_CLUSTER_URL": self.url}

    # -- lifetime ---------------------------------------------------------------

    def start(self) -> None:
        for node in self.nodes:
            node.start(self._config(node))
        for node in self.nodes:
            wait_for(lambda node=node: self._answers(node), f"redis-server :{node.port} answers")
        create = subprocess.run(
            [
                shutil.which("redis-cli") or "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{node.port}" for node in self.nodes),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=STARTUP_TIMEOUT,
            check=False,
            env={**os.environ, **({"REDISCLI_AUTH": self.password} if self.password else {})},
        )
        if create.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{create.stdout}\n{create.stderr}")
        wait_for(self._ready, "every node sees the cluster up, every replica in sync", STARTUP_TIMEOUT)

    def __enter__(self) -> RedisCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def _answers(self, node: RedisNode) -> bool:
        if not node.alive:
            log = node.dir / "redis.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"redis-server :{node.port} exited: {tail}")
        return bool(self.client(node.port).ping())

    def _config(self, node: RedisNode) -> list[str]:
        return [
            f"port {node.port}",
            f"cluster-port {self.bus_ports[node.port]}",
            "bind 127.0.0.1",
            "protected-mode no",
            f"dir {node.dir}",
            "logfile redis.log",
            'save ""',
            "appendonly no",
            "cluster-enabled yes",
            "cluster-config-file nodes.conf",
            f"cluster-node-timeout {NODE_TIMEOUT_MS}",
            # A replica cut off from its primary for long may still take over (the tests
            # pause replicas on purpose), and replicas stay with their primaries.
            "cluster-replica-validity-factor 0",
            "cluster-allow-replica-migration no",
            "repl-diskless-sync yes",
            "repl-diskless-sync-delay 0",
            # A replica is listed (CLUSTER SLOTS) once its offset moved: a PING every second
            # moves it, instead of every 10 s.
            "repl-ping-replica-period 1",
            *([f"requirepass {self.password}", f"masterauth {self.password}"] if self.password else []),
        ]

    def _ready(self) -> bool:
        for node in self.nodes:
            client = self.client(node.port)
            if client.cluster("INFO")["cluster_state"] != "ok":
                return False
            # Every node lists each primary with its replicas (not while a replica still loads).
            ranges = client.execute_command("CLUSTER SLOTS")
            if len(ranges) != PRIMARIES or any(len(r) < 3 + self.replicas for r in ranges):
                return False
        return all(self._replicas_online(port) >= self.replicas for port in self.primaries())

    # -- looking at it ----------------------------------------------------------

    def client(self, port: int) -> redis.Redis:
        return node_client(port, self.password)

    def node(self, port: int) -> RedisNode:
        return next(n for n in self.nodes if n.port == port)

    def slots(self) -> list[tuple[int, int, int, list[int]]]:
        """``(first slot, last slot, primary port, replica ports)``, as a live node says."""
        for node in self.nodes:
            if not node.alive:
                continue
            try:
                ranges = self.client(node.port).execute_command("CLUSTER SLOTS")
            except redis.RedisError:
                continue
            return [(r[0], r[1], int(r[2][1]), [int(n[1]) for n in r[3:]]) for r in ranges]
        raise RuntimeError("no node of the cluster answers")

    def primaries(self) -> list[int]:
        return sorted({port for _, _, port, _ in self.slots()})

    def primary_of(self, key: str) -> int:
        """The port of the primary that serves ``key``'s slot now."""
        slot = key_slot(key.encode())
        return next(port for first, last, port, _ in self.slots() if first <= slot <= last)

    def replicas_of(self, primary: int) -> list[int]:
        return next(replicas for _, _, port, replicas in self.slots() if port == primary)

    def _replicas_online(self, port: int) -> int:
        info = self.client(port).info("replication")
        return sum(
            1 for key, value in info.items() if key.startswith("slave") and value.get("state") == "online"
        )

    def role(self, port: int) -> str:
        return str(self.client(port).execute_command("ROLE")[0])

    # -- what the tests do to it ------------------------------------------------

    def flush(self) -> None:
        for port in self.primaries():
            self.client(port).flushall()

    def kill(self, port: int) -> None:
        """SIGKILL a node, as a crash would."""
        self.node(port).kill()

    def wait_failover(self, old: int, timeout: float = FAILOVER_TIMEOUT) -> int:
        """Wait until another node serves the slots ``old`` served and acts as a primary;
        its port."""
        ranges = [(first, last) for first, last, port, _ in self.slots() if port == old]
        found: list[int] = []

        def taken_over() -> bool:
            now = {(first, last): port for first, last, port, _ in self.slots()}
            ports = {now.get(r) for r in ranges}
            if len(ports) != 1 or old in ports or None in ports:
                return False
            (port,) = ports
            assert port is not None
            if self.role(port) != "master":
                return False
            found.append(port)
            return True

        wait_for(taken_over, f"a replica of :{old} takes its slots over", timeout)
        return found[-1]


def _other_free_ports(count: int, taken: set[int]) -> list[int]:
    """``count`` free ports of 127.0.0.1, none of ``taken`` and no two the same (held open
    together while they are picked)."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            sock = socket.socket()
            held.append(sock)
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
            if port not in taken:
                ports.append(port)
    finally:
        for sock in held:
            sock.close()
    return ports


# -- fixtures: a cluster per module, and server processes in Redis mode on it ---------
# (A test module imports the fixture functions and asks for ``redis_cluster`` and
# ``cluster_processes``; ``fresh_cluster`` is one of its own, for a test that breaks it.)


@pytest.fixture(name="redis_cluster", scope="module")
def redis_cluster_fixture() -> Iterator[RedisCluster]:
    with RedisCluster() as cluster:
        yield cluster


@pytest.fixture(name="fresh_cluster")
def fresh_cluster_fixture() -> Iterator[RedisCluster]:
    with RedisCluster() as cluster:
        yield cluster


def process_starter(cluster: RedisCluster, started: list[ServerProcess]) -> StartNodes:
    """Start server processes in Redis mode on ``cluster`` (``REDIS_CLUSTER_URL``)."""

    async def start(count: int, **env: str) -> list[Node]:
        values = {
            **cluster.env(),
            "OWNER_LEASE_SECONDS": LEASE,
            "DEMO_TOKENS_PER_SECOND": "100",
            "LOG_LEVEL": "warning",
            **env,
        }
        values = {k: v for k, v in values.items() if k not in ("REDIS_URL", "REDIS_SENTINELS")}
        processes = [ServerProcess(values) for _ in range(count)]
        await asyncio.gather(*(asyncio.to_thread(p.__enter__) for p in processes))
        started.extend(processes)
        return [Node(p) for p in processes]

    return start


async def stop_processes(started: list[ServerProcess]) -> None:
    await asyncio.gather(*(asyncio.to_thread(p.__exit__, None, None, None) for p in started))
    for process in started:
        print(f"--- {process.url}\n{process.output}")


@pytest.fixture(name="cluster_processes")
async def cluster_processes_fixture(redis_cluster: RedisCluster) -> AsyncIterator[StartNodes]:
    """Server processes on the module's cluster, flushed first."""
    await asyncio.to_thread(redis_cluster.flush)
    started: list[ServerProcess] = []
    yield process_starter(redis_cluster, started)
    await stop_processes(started)


def keys_on(cluster: RedisCluster, port: int, make: Callable[[int], str], count: int) -> list[str]:
    """``count`` values of ``make(i)`` whose keys the primary on ``port`` serves."""
    out = []
    index = 0
    while len(out) < count:
        if cluster.primary_of(make(index)) == port:
            out.append(make(index))
        index += 1
    return out
