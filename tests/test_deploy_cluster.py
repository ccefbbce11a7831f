"""``make cluster SENTINEL=1`` (``deploy/cluster.py --sentinel``): the Redis shape it starts
(a primary, two replicas, three Sentinels that agree on the primary, replication bounded
by ``min-replicas-to-write``), and the whole arrangement run as ``make cluster`` runs it:
nginx in front of two server processes that write to the primary the Sentinels name."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
import redis

from deploy.cluster import (
    MASTER,
    MIN_REPLICAS_MAX_LAG,
    MIN_REPLICAS_TO_WRITE,
    RedisShape,
    start_sentinel_group,
)
from server.cluster.redis_store import meta_key
from tests.helpers import WAIT
from tests.server_process import free_port

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r"^cluster: nginx on (?P<url>\S+) -> .* redis primary on (?P<primary>\d+), ")


def client(port: int) -> redis.Redis:
    return redis.Redis(port=port, decode_responses=True, socket_timeout=5)


@pytest.fixture
def group(tmp_path: Path) -> Iterator[RedisShape]:
    shape = start_sentinel_group(tmp_path)
    try:
        yield shape
    finally:
        shape.stop()


def test_a_primary_two_replicas_and_three_sentinels(group: RedisShape) -> None:
    primary, *replicas = group.nodes
    assert len(replicas) == 2 and len(group.sentinels) == 3
    role = client(primary).execute_command("ROLE")
    assert role[0] == "master"
    assert sorted(int(port) for _, port, _ in role[2]) == sorted(replicas)
    for port in replicas:
        role = client(port).execute_command("ROLE")
        assert role[0] == "slave" and int(role[2]) == primary and role[3] == "connected"
    for port in group.nodes:
        config = client(port).config_get("min-replicas-*")
        assert config == {
            "min-replicas-to-write": str(MIN_REPLICAS_TO_WRITE),
            "min-replicas-max-lag": str(MIN_REPLICAS_MAX_LAG),
        }
    # Every Sentinel names the same primary, sees both replicas and the two other Sentinels.
    for port in group.sentinels:
        sentinel = client(port)
        assert sentinel.sentinel_get_master_addr_by_name(MASTER) == ("127.0.0.1", primary)
        state = cast(dict[str, Any], sentinel.sentinel_master(MASTER))
        assert (state["num-slaves"], state["num-other-sentinels"], state["quorum"]) == (2, 2, 2)
    # A write reaches both replicas.
    writer = client(primary)
    writer.set("probe", "1")
    assert writer.wait(2, int(WAIT * 1000)) == 2
    assert [client(port).get("probe") for port in replicas] == ["1", "1"]
    assert group.env == {
        "REDIS_SENTINELS": ",".join(f"127.0.0.1:{port}" for port in group.sentinels),
        "REDIS_SENTINEL_MASTER": MASTER,
    }


def test_stopping_the_group_ends_every_process(tmp_path: Path) -> None:
    shape = start_sentinel_group(tmp_path)
    shape.stop()
    assert [process.poll() for process in shape.processes] == [0] * 6


class Script:
    """``deploy/cluster.py`` as ``make cluster`` runs it, its output drained by a thread."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "deploy/cluster.py", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.match: re.Match[str] | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            match = READY.match(line)
            if match:
                self.match = match
                self.ready.set()
        self.ready.set()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


async def test_make_cluster_sentinel_serves_through_nginx_on_the_primary() -> None:
    script = Script("--sentinel", "--port", str(free_port()))
    try:
        assert script.ready.wait(90), "".join(script.lines)
        assert script.match is not None, "".join(script.lines)
        url, primary = script.match["url"], int(script.match["primary"])
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/readyz") as resp:
                assert resp.status == 200, await resp.text()
            async with http.post(f"{url}/api/streaming/session", json={"userId": "u"}) as resp:
                assert resp.status == 200, await resp.text()
                session_id = (await resp.json())["sessionId"]
        # The processes write to the primary the Sentinels name (Redis mode, not memory).
        assert client(primary).hget(meta_key(session_id), "userId") == "u"
    finally:
        code = script.stop()
    assert code == 0, "".join(script.lines)
