"""A replicated Redis watched by Sentinels, for the high-availability tests: a primary, two
replicas and three Sentinels, real ``redis-server`` processes on ephemeral ports (a
Sentinel is the same binary with ``--sentinel``), with what the tests do to them: kill the
primary, fail over by hand while it stays up, pause the replicas so that they miss writes,
and wait for the Sentinels to promote a replica.

The Sentinels take a primary for dead after ``DOWN_AFTER_MS`` (1 s, as
``../shared/research/redis.md`` section 3 measured), so a crash is followed by a new
primary within about three seconds.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
import socketio

from deploy.cluster import wait_for
from tests.cluster_nodes import LEASE, Node, StartNodes
from tests.helpers import EVENTS, WAIT
from tests.server_process import ServerProcess, free_port

MASTER = "mymaster"
DOWN_AFTER_MS = 1000
STARTUP_TIMEOUT = 30.0
#: A crash is noticed after DOWN_AFTER_MS, then the Sentinels elect a leader and promote.
PROMOTION_TIMEOUT = 30.0


def node_client(port: int, password: str | None = None) -> redis.Redis:
    """A synchronous client of one redis-server on 127.0.0.1, for a test to look or act."""
    return redis.Redis(
        port=port, password=password, decode_responses=True, socket_timeout=5, socket_connect_timeout=5
    )


class RedisNode:
    """One ``redis-server`` process (a data node or a Sentinel) and its directory."""

    def __init__(self, root: Path, name: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is missing: `make test` installs Debian's redis-server as root")
        self.binary = binary
        self.port = free_port()
        self.dir = root / name
        self.dir.mkdir()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, config: list[str], *, sentinel: bool = False) -> None:
        # A Sentinel rewrites its config file (what it learnt of the group): a file it owns.
        path = self.dir / "redis.conf"
        path.write_text("\n".join(config) + "\n")
        command = [self.binary, str(path)] + (["--sentinel"] if sentinel else [])
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: signal.Signals) -> None:
        if self.alive:
            assert self.process is not None
            self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.alive:
            assert self.process is not None
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.alive:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class SentinelGroup:
    """A primary, ``replicas`` replicas and ``sentinels`` Sentinels on 127.0.0.1."""

    def __init__(self, replicas: int = 2, sentinels: int = 3, password: str | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="redis-sentinel-test-"))
        self.password = password
        self.nodes = [RedisNode(self.root, f"node{i}") for i in range(1 + replicas)]
        self.sentinels = [RedisNode(self.root, f"sentinel{i}") for i in range(sentinels)]
        self.quorum = sentinels // 2 + 1

    # -- what a server process is given ----------------------------------------

    @property
    def addresses(self) -> str:
        """``REDIS_SENTINELS``."""
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def env(self) -> dict[str, str]:
        values = {"REDIS_SENTINELS": self.addresses, "REDIS_SENTINEL_MASTER": MASTER}
        if self.password is not None:
            values |= {"REDIS_PASSWORD": self.password, "REDIS_SENTINEL_PASSWORD": self.password}
        return values

    # -- lifetime ---------------------------------------------------------------

    def start(self) -> None:
        primary = self.nodes[0]
        for node in self.nodes:
            extra = [] if node is primary else [f"replicaof 127.0.0.1 {primary.port}"]
            node.start(self._node_config(node) + extra)
        for node in self.nodes:
            self._wait(lambda node=node: self.client(node.port).ping(), f"redis-server :{node.port} answers")
        self._wait(
            lambda: self._replicas_online(primary.port) == len(self.nodes) - 1, "the replicas are in sync"
        )
        for sentinel in self.sentinels:
            sentinel.start(self._sentinel_config(sentinel, primary.port), sentinel=True)
        self._wait(self._sentinels_ready, "every Sentinel sees the replicas and the other Sentinels")

    def __enter__(self) -> SentinelGroup:
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
        for node in [*self.sentinels, *self.nodes]:
            node.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def _node_config(self, node: RedisNode) -> list[str]:
        config = [
            f"port {node.port}",
            "bind 127.0.0.1",
            "protected-mode no",
            f"dir {node.dir}",
            "logfile redis.log",
            'save ""',
            "appendonly no",
            # A replica's first sync starts at once instead of after 5 s.
            "repl-diskless-sync yes",
            "repl-diskless-sync-delay 0",
        ]
        if self.password is not None:
            config += [f"requirepass {self.password}", f"masterauth {self.password}"]
        return config

    def _sentinel_config(self, sentinel: RedisNode, primary_port: int) -> list[str]:
        config = [
            f"port {sentinel.port}",
            "bind 127.0.0.1",
            "protected-mode no",
            f"dir {sentinel.dir}",
            "logfile sentinel.log",
            f"sentinel monitor {MASTER} 127.0.0.1 {primary_port} {self.quorum}",
            f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {MASTER} 5000",
            f"sentinel parallel-syncs {MASTER} 2",
        ]
        if self.password is not None:
            config += [
                f"sentinel auth-pass {MASTER} {self.password}",
                f"requirepass {self.password}",
                f"sentinel sentinel-pass {self.password}",
            ]
        return config

    # -- looking at it ----------------------------------------------------------

    def client(self, port: int) -> redis.Redis:
        return node_client(port, self.password)

    def node(self, port: int) -> RedisNode:
        return next(n for n in self.nodes if n.port == port)

    def primary_port(self) -> int:
        """The primary as the Sentinels name it now (the one with the newest config)."""
        best: tuple[int, int] | None = None
        for sentinel in self.sentinels:
            if not sentinel.alive:
                continue
            try:
                state = self.client(sentinel.port).sentinel_master(MASTER)
            except redis.RedisError:
                continue
            if best is None or state["config-epoch"] > best[0]:
                best = (state["config-epoch"], int(state["port"]))
        assert best is not None, "no Sentinel answers"
        return best[1]

    def replicas(self) -> list[RedisNode]:
        primary = self.primary_port()
        return [n for n in self.nodes if n.port != primary and n.alive]

    def role(self, port: int) -> str:
        return str(self.client(port).execute_command("ROLE")[0])

    def _replicas_online(self, port: int) -> int:
        info = self.client(port).info("replication")
        return sum(
            1 for key, value in info.items() if key.startswith("slave") and value.get("state") == "online"
        )

    def _sentinels_ready(self) -> bool:
        for sentinel in self.sentinels:
            state = self.client(sentinel.port).sentinel_master(MASTER)
            if (
                state["num-slaves"] < len(self.nodes) - 1
                or state["num-other-sentinels"] < len(self.sentinels) - 1
            ):
                return False
        return True

    @staticmethod
    def _wait(condition: Callable[[], object], what: str, timeout: float = STARTUP_TIMEOUT) -> None:
        """Poll ``condition`` (a process coming up has no event to wait on) until it holds."""
        wait_for(lambda: bool(condition()), what, timeout)

    # -- what the tests do to it ------------------------------------------------

    def kill_primary(self) -> int:
        """SIGKILL the primary, as a crash would; its port."""
        port = self.primary_port()
        self.node(port).kill()
        return port

    def failover(self) -> int:
        """``SENTINEL FAILOVER``: the Sentinels promote a replica while the primary stays up
        (it is told to follow the new one only later); the old primary's port."""
        port = self.primary_port()
        alive = next(s for s in self.sentinels if s.alive)
        self.client(alive.port).execute_command("SENTINEL", "FAILOVER", MASTER)
        return port

    @contextmanager
    def replicas_paused(self) -> Iterator[None]:
        """The replicas stop (SIGSTOP) and the primary drops its links to them, so that what
        it is written from now on reaches no replica: a crash of the primary meanwhile
        loses it, as an asynchronous replica that lags does. They go on when it ends."""
        primary = self.primary_port()
        paused = self.replicas()
        for node in paused:
            node.signal(signal.SIGSTOP)
        try:
            self.client(primary).client_kill_filter(_type="replica")
            yield
        finally:
            for node in paused:
                node.signal(signal.SIGCONT)

    def wait_promotion(self, old_port: int, timeout: float = PROMOTION_TIMEOUT) -> int:
        """Wait until the Sentinels name another primary and it acts as one; its port."""
        found: list[int] = []

        def promoted() -> bool:
            port = self.primary_port()
            if port != old_port and self.role(port) == "master":
                found.append(port)
                return True
            return False

        self._wait(promoted, f"a replica of :{old_port} is promoted", timeout)
        return found[-1]

    async def switch_announced(self, ready: asyncio.Event) -> tuple[int, float]:
        """Listen on a Sentinel for ``+switch-master`` (``ready`` is set once subscribed):
        the new primary's port and when the Sentinel announced it (``time.time()``)."""
        sentinel = next(s for s in self.sentinels if s.alive)
        client = aioredis.Redis(port=sentinel.port, password=self.password, decode_responses=True)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe("+switch-master")
            ready.set()
            async for message in pubsub.listen():
                name, _, _, _, port = str(message["data"]).split()
                if name == MASTER:
                    return int(port), time.time()
            raise RuntimeError("the Sentinel closed the subscription")
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
            await client.aclose()


# -- fixtures: the group, and server processes in Redis mode on it ---------------------
# (A test module imports ``sentinel_group_fixture`` and ``sentinel_nodes_fixture`` and asks
# for ``sentinel_group`` and ``sentinel_nodes``.)


@pytest.fixture(name="sentinel_group")
def sentinel_group_fixture() -> Iterator[SentinelGroup]:
    with SentinelGroup() as group:
        yield group


@pytest.fixture(name="sentinel_nodes")
async def sentinel_nodes_fixture(sentinel_group: SentinelGroup) -> AsyncIterator[StartNodes]:
    """Start server processes in Redis mode through the Sentinels (no ``REDIS_URL``)."""
    started: list[ServerProcess] = []

    async def start(count: int, **env: str) -> list[Node]:
        values = {
            **sentinel_group.env(),
            "OWNER_LEASE_SECONDS": LEASE,
            "DEMO_TOKENS_PER_SECOND": "100",
            "LOG_LEVEL": "warning",
            **env,
        }
        values = {k: v for k, v in values.items() if k != "REDIS_URL"}
        processes = [ServerProcess(values) for _ in range(count)]
        await asyncio.gather(*(asyncio.to_thread(p.__enter__) for p in processes))
        started.extend(processes)
        return [Node(p) for p in processes]

    yield start
    await asyncio.gather(*(asyncio.to_thread(p.__exit__, None, None, None) for p in started))
    for process in started:
        print(f"--- {process.url}\n{process.output}")


class History:
    """Every event one viewer received, in order, to tell a rebuilt history (``stream-reset``
    then the log from ``seq`` 0) from a spliced one."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any], float]] = []
        self.changed = asyncio.Event()

    def record(self, event: str, payload: dict[str, Any]) -> None:
        self.events.append((event, payload, time.time()))
        self.changed.set()

    @property
    def finished(self) -> bool:
        return any(event in ("complete", "stream-error") for event, _, _ in self.events)

    def chunks(self) -> list[dict[str, Any]]:
        return [payload for event, payload, _ in self.events if event == "chunk"]

    def resets(self) -> list[dict[str, Any]]:
        return [payload for event, payload, _ in self.events if event == "stream-reset"]

    def segments(self) -> list[list[dict[str, Any]]]:
        """The chunks between two ``stream-reset``: each a history of its own."""
        out: list[list[dict[str, Any]]] = [[]]
        for event, payload, _ in self.events:
            if event == "stream-reset":
                out.append([])
            elif event == "chunk":
                out[-1].append(payload)
        return out

    @property
    def text(self) -> str:
        """The text the viewer shows: its last history."""
        return "".join(chunk["content"] for chunk in self.segments()[-1])

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


def assert_never_spliced(history: History, final: dict[str, Any]) -> None:
    """Each history the viewer held is contiguous from ``seq`` 0 (a ``stream-reset`` starts
    a new one), and the last is the whole log, as ``GET`` has it."""
    errors = [payload for event, payload, _ in history.events if event == "stream-error"]
    assert errors == []
    for segment in history.segments():
        assert [c["seq"] for c in segment] == list(range(len(segment))), "a history with a gap or a repeat"
    assert [c["seq"] for c in history.segments()[-1]] == list(range(final["chunks"]))
    assert history.text == final["text"]


async def watch(client: socketio.AsyncClient, node: Node, session_id: str) -> History:
    """A viewer of ``session_id`` on ``node`` that records its whole history."""
    namespace = f"/stream/{session_id}"
    history = History()
    for event in EVENTS:

        async def handler(payload: dict[str, Any], event: str = event) -> None:
            history.record(event, payload)

        client.on(event, handler, namespace=namespace)
    await client.connect(node.url, namespaces=[namespace], transports=["websocket"], wait_timeout=WAIT)
    return history
