"""Benchmark our streaming server against the seed's own stack (Express + Socket.IO).

Each scenario runs against both servers, one after the other, each time in a fresh
server process pinned to core 0 while the Node load generator (bench/loadgen) runs on
core 1. Results go to RESULTS.md (tables, targets), results.json (raw) and results.png.

    bash bench/run.sh                     # the full suite (what `make bench` runs)
    bash bench/run.sh --quick             # small sizes, a smoke run (output in bench/quick/)
    bash bench/run.sh --scenarios a,f     # only some scenarios
    bash bench/run.sh --servers peer      # only one server

Scenarios: a) 1 session x 50,000 tokens unthrottled; b) 50 x 2,000 unthrottled;
c) 1,000 x 200 at 40 tokens/s; d) the most sessions at 40 tokens/s with p99 < 100 ms
(doubling then bisecting, time-bounded); e) 10,000 idle viewers: RSS per viewer;
f) start -> first chunk of single sessions, one at a time, unthrottled; g) (d) for one process
in Redis mode vs in memory; h) (d) for two processes behind nginx vs one process (both in
Redis mode, unpinned); i) takeover time: three processes in Redis mode, the owner of a live
stream is killed, time until a viewer on another process gets the next chunk (at the default
5 s lease and at 1 s; bench/takeover.py); j) a late joiner of a
finished 20,000-token session: snapshot join vs chunk-by-chunk replay (ours only: the
peer has neither; (i) neither).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import math
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))  # deploy.cluster: the nginx config `make cluster` uses
# bench/history.py, beside this file, also when this module is imported as bench.run
sys.path.insert(0, str(BENCH))
import history  # noqa: E402

VENV_PY = ROOT / ".venv" / "bin" / "python"
LOADGEN = BENCH / "loadgen" / "loadgen.js"
PEER = BENCH / "peer-node" / "server.js"
SERVERS = ("ours", "peer")
ALL_SCENARIOS = "abcdefghij"

#: RESULTS.md: what follows this line comes from other benches and runs, kept by a full run.
KEPT_MARKER = "<!-- Sections below: other benches and partial runs (kept when run.py rewrites the above) -->"

# Pass/fail thresholds (see the issue).
THROUGHPUT_RATIO = 1.5  # (a), (b): our content throughput vs the peer's
C_P99_MS = 50.0  # (c)
D_P99_MS = 100.0  # (d): a trial passes below this p99
D_RATIO = 2.0  # (d): our session count vs the peer's
# (d) is "sessions served at 40 tokens/s": a trial whose stream phase takes longer than
# this times its nominal length (tokens / 40 + ramp) did not keep the pace, whatever its
# latency (a server that emits late stamps late, so lateness hides from the latency).
D_PACE = 1.25
TTFC_P50_MS = 5.0  # (f)
G_RATIO = 0.6  # (g): Redis mode vs in memory, one process
#: (h): name, processes, behind nginx
H_DEPLOYMENTS = (
    ("1 process", 1, False),
    ("1 process behind nginx", 1, True),
    ("2 processes behind nginx", 2, True),
)
#: (i): OWNER_LEASE_SECONDS values measured (5 is the default); a row each.
I_LEASES = (5.0, 1.0)
I_TARGET_LEASES = 2.0  # (i): the longest takeover < this many leases
#: ``--baseline``: rounds of (b) and (c) on each tree, alternating.
BASELINE_ROUNDS = 3
#: Issue 20: (b) at least this many times the peer's content throughput.
B_PEER_RATIO = 3.0


def log(*parts: object) -> None:
    print("[bench]", *parts, file=sys.stderr, flush=True)


# ---- sizes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    a_tokens: int
    b_sessions: int
    b_tokens: int
    c_sessions: int
    c_tokens: int
    d_tokens: int
    d_start: int
    d_cap: int
    d_budget: float  # seconds per server
    d_max_trials: int
    e_viewers: int
    f_sessions: int
    f_tokens: int
    ramp: float
    j_tokens: int
    j_rounds: int  # (c), (d): seconds over which the starts are spread
    i_kills: int  # (i): owner kills per lease


FULL = Sizes(50_000, 50, 2_000, 1_000, 200, 200, 250, 8_000, 180.0, 10, 10_000, 200, 20, 1.0, 20_000, 5, 20)
QUICK = Sizes(5_000, 10, 500, 100, 40, 40, 50, 800, 45.0, 6, 500, 30, 20, 0.25, 2_000, 2, 4)
TPS = 40.0
#: (j): the session streams this fast on a server that does not coalesce.
J_TOKENS_PER_SECOND = 2000


# ---- processes --------------------------------------------------------------------------


def raise_nofile(target: int = 65536) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        if hard != resource.RLIM_INFINITY and hard < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, target))
            hard = target
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pin(core: int, pinning: bool) -> list[str]:
    return ["taskset", "-c", str(core)] if pinning else []


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    """One fresh server process (ours or the peer), stopped on exit."""

    def __init__(
        self,
        kind: str,
        pinning: bool,
        workdir: Path,
        settings: dict[str, str] | None = None,
        root: Path | None = None,
    ) -> None:
        """``root``: our server from another tree (``--baseline``: a worktree of an older
        commit, run on this venv), instead of this one."""
        self.kind = kind
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        host_port = ["--host", "127.0.0.1", "--port", str(self.port)]
        env = dict(os.environ)
        if kind == "ours":
            cmd = [str(VENV_PY), "-m", "server", *host_port, "--provider", "demo"]
            env.update(
                MAX_TOKENS_LIMIT="50000",
                MAX_SESSIONS_PER_USER="100",
                LOG_LEVEL="warning",
                SHUTDOWN_TIMEOUT="1",
                PYTHONPATH=str(root or ROOT),
                # Every client of a run is on 127.0.0.1: the per-address limits (issue 12)
                # would refuse most of it.
                MAX_CONNECTIONS_PER_ADDRESS="100000",
                HANDSHAKE_RATE_PER_ADDRESS="100000",
                HANDSHAKE_BURST_PER_ADDRESS="100000",
                SESSION_RATE_PER_ADDRESS="100000",
                SESSION_BURST_PER_ADDRESS="100000",
                SESSION_RATE_PER_USER="100000",
                SESSION_BURST_PER_USER="100000",
                SOCKET_MESSAGE_RATE="100000",
                SOCKET_MESSAGE_BURST="100000",
            )
            env.update(settings or {})
        else:
            cmd = ["node", str(PEER), *host_port]
            env["NODE_ENV"] = "production"
        self.log_path = workdir / f"{kind if root is None else 'baseline'}-{self.port}.log"
        self._log = self.log_path.open("wb")
        # cwd is a scratch directory so that a developer's .env does not change the run.
        self.proc = subprocess.Popen(
            [*pin(0, pinning), *cmd], cwd=workdir, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.pid = self.proc.pid  # taskset execs the command: same pid

    def wait_healthy(self, timeout: float = 30.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as r:
                if r.status == 200:
                    return
            time.sleep(0.1)
        tail = self.log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{self.kind} server did not become healthy on {self.url}:\n{tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=8)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()

    def __enter__(self) -> Server:
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_loadgen(server: Server, pinning: bool, label: str, timeout: float, **params: Any) -> dict[str, Any]:
    args = ["--url", server.url, "--pid", str(server.pid), "--label", label, "--timeout", f"{timeout:g}"]
    for key, value in params.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    cmd = [*pin(1, pinning), "node", str(LOADGEN), *args]
    cpu0 = cpu_seconds(server.pid)
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 60, check=False)
    except subprocess.TimeoutExpired:
        return {"fatal": "load generator timed out", "errors": {}}
    cpu1 = cpu_seconds(server.pid)
    for line in out.stderr.splitlines()[-6:]:
        log("  ", line)
    try:
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        result = {"fatal": f"no result from the load generator (exit {out.returncode})", "errors": {}}
    if cpu0 is not None and cpu1 is not None:
        result["serverCpuSeconds"] = round(cpu1 - cpu0, 3)
    if server.proc.poll() is not None:
        result.setdefault("fatal", f"server exited with status {server.proc.returncode}")
    return result


# ---- (g), (h): Redis and several processes ---------------------------------------------


class RedisServer:
    """A scratch redis-server for the (g) and (h) runs (on ``core`` when pinning)."""

    def __init__(self, workdir: Path, pinning: bool, core: int = 0) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            [
                *pin(core, pinning),
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ],
            cwd=workdir,
            stdout=subprocess.DEVNULL,
        )

    def __enter__(self) -> RedisServer:
        from deploy.cluster import wait_listening

        wait_listening(self.port, self.proc)
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)

    def flush(self) -> None:
        """Each trial starts from an empty store, like the in-memory trials."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"FLUSHALL\r\n")
            sock.recv(64)


class Deployment:
    """``count`` of our processes on one Redis, behind nginx (the config of ``make cluster``)
    when more than one; not pinned, so that they may use both cores."""

    def __init__(self, workdir: Path, count: int, redis_url: str, *, proxy: bool | None = None) -> None:
        self.workdir = workdir
        self.proxy = count > 1 if proxy is None else proxy
        self.servers = [Server("ours", False, workdir, {"REDIS_URL": redis_url}) for _ in range(count)]
        self.nginx: subprocess.Popen[bytes] | None = None
        first = self.servers[0]
        self.url, self.pid, self.proc = first.url, first.pid, first.proc

    def __enter__(self) -> Deployment:
        from deploy.cluster import start_nginx

        for server in self.servers:
            server.__enter__()
        if self.proxy:
            port = free_port()
            self.nginx = start_nginx(self.workdir / f"nginx-{port}", port, [srv.port for srv in self.servers])
            self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.nginx is not None:
            self.nginx.terminate()
            self.nginx.wait(timeout=10)
        for server in self.servers:
            server.stop()


Deploy = Callable[[], "Server | Deployment"]


# ---- (j): late join, in Python (one client, bytes counted at the WebSocket) -------------


def late_join(url: str, tokens: int, rounds: int) -> dict[str, Any]:
    """Create and finish one unthrottled session, then join it late over the direct
    Socket.IO WebSocket, ``rounds`` times each way: replay and snapshot."""
    import asyncio

    import aiohttp

    async def request(http: aiohttp.ClientSession, method: str, path: str, body: Any = None) -> Any:
        async with http.request(method, url + path, json=body) as resp:
            resp.raise_for_status()
            return await resp.json()

    async def join(http: aiohttp.ClientSession, session_id: str, auth: dict[str, Any]) -> dict[str, Any]:
        namespace = f"/stream/{session_id}"
        ws_url = url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"
        received = 0
        text: list[str] = []
        async with http.ws_connect(ws_url, compress=0, max_msg_size=0) as ws:
            started = time.perf_counter()
            await ws.send_str(f"40{namespace}," + json.dumps(auth))
            async for msg in ws:
                data = msg.data
                received += len(data.encode())
                if data.startswith(f"42{namespace},"):
                    event, payload = json.loads(data[len(namespace) + 3 :])
                    if event == "chunk":
                        text.append(payload["content"])
                    elif event == "snapshot":
                        text.append(payload["text"])
                    elif event in ("complete", "stream-error"):
                        break
                elif data == "2":
                    await ws.send_str("3")
            elapsed = time.perf_counter() - started
        return {"ms": round(elapsed * 1000, 2), "bytes": received, "text": "".join(text)}

    async def run() -> dict[str, Any]:
        async with aiohttp.ClientSession() as http:
            # One chunk per token, as a model at its own pace gives (no coalescing, see j()).
            config = {"provider": "demo", "maxTokens": tokens, "tokensPerSecond": J_TOKENS_PER_SECOND}
            created = await request(http, "POST", "/api/streaming/session", {"userId": "j", "config": config})
            session_id = created["sessionId"]
            await request(http, "POST", f"/api/streaming/{session_id}/start", {"prompt": "Explain streaming"})
            async with http.get(f"{url}/api/streaming/{session_id}/events") as events:
                await events.read()  # the SSE response ends after `complete`
            status = await request(http, "GET", f"/api/streaming/{session_id}")
            out: dict[str, Any] = {"chunks": status["chunks"], "chars": len(status["text"])}
            for mode, auth in (("replay", {}), ("snapshot", {"snapshot": True})):
                runs = [await join(http, session_id, auth) for _ in range(rounds)]
                out[mode] = {
                    "ms": sorted(r["ms"] for r in runs)[len(runs) // 2],
                    "bytes": runs[0]["bytes"],
                    "complete": all(r["text"] == status["text"] for r in runs),
                }
            return out

    return asyncio.run(run())


# ---- scenarios --------------------------------------------------------------------------


@dataclass
class Bench:
    sizes: Sizes
    servers: tuple[str, ...]
    pinning: bool
    workdir: Path
    extra: dict[str, Any] = field(default_factory=dict)  # passed to every load generator run
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: ``--baseline``: the commit and a worktree of it, whose server (b) and (c) run beside ours.
    baseline: tuple[str, Path] | None = None
    baseline_rounds: int = BASELINE_ROUNDS

    def one(
        self, kind: str, label: str, timeout: float, deploy: Deploy | None = None, **params: Any
    ) -> dict[str, Any]:
        try:
            with deploy() if deploy is not None else Server(kind, self.pinning, self.workdir) as server:
                return run_loadgen(server, self.pinning, f"{label}-{kind}", timeout, **params, **self.extra)
        except RuntimeError as exc:
            return {"fatal": str(exc), "errors": {}}

    def each(self, key: str, title: str, timeout: float, **params: Any) -> None:
        self.results[key] = {"title": title, "params": params}
        for kind in self.servers:
            log(f"scenario {key} ({title}) on {kind}")
            r = self.one(kind, key, timeout, **params)
            self.results[key][kind] = r
            log(f"  -> {brief(r)}")

    def a(self) -> None:
        s = self.sizes
        self.each(
            "a",
            f"1 session x {s.a_tokens:,} tokens, unthrottled",
            60 + s.a_tokens / 1000,
            mode="stream",
            sessions=1,
            tokens=s.a_tokens,
            tps=0,
        )

    def b(self) -> None:
        s = self.sizes
        self.each(
            "b",
            f"{s.b_sessions} sessions x {s.b_tokens:,} tokens, unthrottled",
            60 + s.b_sessions * s.b_tokens / 1000,
            mode="stream",
            sessions=s.b_sessions,
            tokens=s.b_tokens,
            tps=0,
        )

    def c(self) -> None:
        s = self.sizes
        self.each(
            "c",
            f"{s.c_sessions:,} sessions x {s.c_tokens} tokens at {TPS:g} tokens/s "
            f"(starts spread over {s.ramp:g} s)",
            60 + 2 * s.c_tokens / TPS + s.c_sessions / 50,
            mode="stream",
            sessions=s.c_sessions,
            tokens=s.c_tokens,
            tps=TPS,
            ramp=s.ramp,
            stream_timeout=paced_limit(s.c_tokens, s.ramp),
        )
        for kind in self.servers:
            result = self.results["c"].get(kind)
            if result is not None:
                result["paceRatio"] = pace_ratio(result, s.c_tokens, s.ramp)

    def e(self) -> None:
        s = self.sizes
        self.each(
            "e",
            f"{s.e_viewers:,} idle viewers (sessions created, not started)",
            60 + s.e_viewers / 50,
            mode="idle",
            sessions=s.e_viewers,
        )

    def f(self) -> None:
        s = self.sizes
        self.each(
            "f",
            f"start -> first chunk: {s.f_sessions} single sessions in turn, {s.f_tokens} tokens, unthrottled",
            60 + s.f_sessions,
            mode="ttfc",
            sessions=s.f_sessions,
            tokens=s.f_tokens,
            tps=0,
        )

    def j(self) -> None:
        s = self.sizes
        self.results["j"] = {
            "title": f"a late joiner of a finished {s.j_tokens:,}-token session: snapshot join vs replay",
            "params": {"tokens": s.j_tokens, "rounds": s.j_rounds},
        }
        if "ours" not in self.servers:
            return
        log("scenario j (late join: snapshot vs replay) on ours")
        try:
            no_coalescing = {"COALESCE_MS": "0", "COALESCE_MAX_MS": "0"}
            with Server("ours", self.pinning, self.workdir, no_coalescing) as server:
                result = late_join(server.url, s.j_tokens, s.j_rounds)
        except (RuntimeError, OSError) as exc:
            result = {"fatal": str(exc)}
        self.results["j"]["ours"] = result
        log(f"  -> {json.dumps(result)[:300]}")

    def i(self) -> None:
        """Takeover time: the owner of a live stream is killed among three processes in Redis
        mode; kill -> the next chunk at a viewer on another process, per lease."""
        s = self.sizes
        self.results["i"] = {
            "title": "takeover time: the owner of a live stream is SIGKILLed, three processes in Redis "
            "mode (not pinned); kill -> the next chunk at a viewer on another process",
            "params": {"leases": list(I_LEASES), "kills": s.i_kills, "processes": 3},
        }
        if "ours" not in self.servers:
            return
        import takeover  # bench/takeover.py, next to this script

        self.results["i"]["params"] |= {
            "tokensPerSecond": takeover.TOKENS_PER_SECOND,
            "maxTokens": takeover.MAX_TOKENS,
            "warmChunks": takeover.WARM_CHUNKS,
        }
        rows: list[dict[str, Any]] = []
        self.results["i"]["leases"] = rows
        try:
            with RedisServer(self.workdir, False) as redis:
                for lease in I_LEASES:
                    log(f"scenario i (takeover) with a {lease:g} s lease, {s.i_kills} kills")
                    redis.flush()

                    def spawn(lease: float = lease) -> Server:
                        settings = {"REDIS_URL": redis.url, "OWNER_LEASE_SECONDS": f"{lease:g}"}
                        return Server("ours", False, self.workdir, settings).__enter__()

                    r = takeover.measure(spawn, lease, s.i_kills, redis.url, log)
                    rows.append(r)
                    log(
                        f"  -> lease {lease:g} s: p50 {r['p50']} s, max {r['max']} s, "
                        f"contiguous {r['contiguous']}/{r['kills']}"
                    )
        except (RuntimeError, OSError) as exc:
            self.results["i"]["fatal"] = str(exc)
            log(f"  -> FATAL {str(exc)[:300]}")

    def d(self) -> None:
        s = self.sizes
        self.results["d"] = {
            "title": f"most sessions at {TPS:g} tokens/s ({s.d_tokens} tokens each, starts spread over "
            f"{s.ramp:g} s) with p99 < {D_P99_MS:g} ms and the stream phase within {D_PACE:g}x its "
            "nominal length",
            "params": {"tokens": s.d_tokens, "tps": TPS, "start": s.d_start, "cap": s.d_cap, "ramp": s.ramp},
        }
        for kind in self.servers:
            log(f"scenario d (capacity search) on {kind}")
            self.results["d"][kind] = self.search(kind)
            log(f"  -> {kind}: {self.results['d'][kind]['sessions']} sessions")

    def g(self) -> None:
        """(d) for one process in Redis mode against the same process in memory."""
        self.results["g"] = {"title": "one process, Redis mode vs in memory: (d)'s capacity search"}
        if "ours" not in self.servers:
            return
        with RedisServer(self.workdir, self.pinning) as redis:
            for mode, settings in (("memory", {}), ("redis", {"REDIS_URL": redis.url})):
                log(f"scenario g ({mode}) capacity search")

                def deploy(settings: dict[str, str] = settings) -> Server:
                    redis.flush()
                    return Server("ours", self.pinning, self.workdir, settings)

                self.results["g"][mode] = self.search("ours", deploy)
                log(f"  -> {mode}: {self.results['g'][mode]['sessions']} sessions")

    def h(self) -> None:
        """(d) for two processes behind nginx against one process, both in Redis mode."""
        self.results["h"] = {
            "title": "two processes behind nginx vs one process (Redis mode, not pinned): "
            "(d)'s capacity search"
        }
        if "ours" not in self.servers or not shutil.which("nginx"):
            return
        with RedisServer(self.workdir, False) as redis:
            for name, count, proxy in H_DEPLOYMENTS:
                log(f"scenario h ({name}) capacity search")

                def deploy(count: int = count, proxy: bool = proxy) -> Deployment:
                    redis.flush()
                    return Deployment(self.workdir, count, redis.url, proxy=proxy)

                self.results["h"][name] = self.search("ours", deploy)
                log(f"  -> {name}: {self.results['h'][name]['sessions']} sessions")

    def vs(self) -> None:
        """(b) and (c) on our server at ``--baseline``'s commit and at this tree, alternating
        round by round, so that a regression shows as a ratio measured in one run."""
        if self.baseline is None:
            return
        rev, tree = self.baseline
        s = self.sizes
        plans = {
            "b": (
                60 + s.b_sessions * s.b_tokens / 1000,
                {"mode": "stream", "sessions": s.b_sessions, "tokens": s.b_tokens, "tps": 0},
            ),
            "c": (
                60 + 2 * s.c_tokens / TPS + s.c_sessions / 50,
                {
                    "mode": "stream",
                    "sessions": s.c_sessions,
                    "tokens": s.c_tokens,
                    "tps": TPS,
                    "ramp": s.ramp,
                    "stream_timeout": paced_limit(s.c_tokens, s.ramp),
                },
            ),
        }
        entry: dict[str, Any] = {"rev": rev, "rounds": self.baseline_rounds}
        for key, (timeout, params) in plans.items():
            runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "ours": []}
            for n in range(self.baseline_rounds):
                for kind, root in (("baseline", tree), ("ours", None)):
                    log(f"scenario {key} against {rev}, round {n + 1}: {kind}")

                    def deploy(root: Path | None = root) -> Server:
                        return Server("ours", self.pinning, self.workdir, root=root)

                    r = self.one(kind, f"vs{key}{n}", timeout, deploy, **params)
                    runs[kind].append(r)
                    log(f"  -> {brief(r)}")
            entry[key] = runs
        self.results["vs"] = entry

    def search(self, kind: str, deploy: Deploy | None = None) -> dict[str, Any]:
        """Double from d_start until a trial fails, then bisect; bounded in trials and time."""
        s = self.sizes
        end = time.monotonic() + s.d_budget
        lo, hi = 0, None  # the largest passing and the smallest failing session counts
        best: dict[str, Any] | None = None
        trials: list[dict[str, Any]] = []
        n = s.d_start
        while len(trials) < s.d_max_trials and time.monotonic() < end:
            r = self.one(
                kind,
                f"d{n}",
                60 + 2 * s.d_tokens / TPS + n / 50,
                deploy,
                mode="stream",
                sessions=n,
                tokens=s.d_tokens,
                tps=TPS,
                ramp=s.ramp,
                stream_timeout=paced_limit(s.d_tokens, s.ramp),
            )
            p99 = (r.get("latencyMs") or {}).get("p99")
            pace = pace_ratio(r, s.d_tokens, s.ramp)
            ok = passes(r, n) and p99 is not None and p99 < D_P99_MS and pace is not None and pace <= D_PACE
            r["paceRatio"] = pace
            trials.append(
                {
                    "sessions": n,
                    "pass": ok,
                    "p99": p99,
                    "pace": pace,
                    "completed": r.get("completed"),
                    "gaps": r.get("gaps"),
                    "duplicates": r.get("duplicates"),
                    "loadgenCpu": r.get("loadgenCpu"),
                    "fatal": r.get("fatal"),
                    "errors": r.get("errors"),
                }
            )
            log(f"  {kind} d trial {n}: {'pass' if ok else 'fail'} (p99 {p99} ms, pace {pace})")
            if ok:
                lo, best = n, r
                if n >= s.d_cap:
                    break
                n = min(n * 2, s.d_cap) if hi is None else (lo + hi) // 2
            else:
                hi = n
                n = (lo + hi) // 2
            step = max(math.ceil(lo * 0.1), 5)
            if hi is not None and hi - lo <= step:
                break
            if n <= 0:
                break
        return {
            "sessions": lo,
            "boundedBy": "cap" if lo >= s.d_cap else ("search" if hi is not None else "time/trials"),
            "firstFail": hi,
            "trials": trials,
            "best": best,
        }


def paced_limit(tokens: int, ramp: float) -> float:
    """How long a paced stream phase may take: 3x its nominal length plus 5 s."""
    return 3 * (tokens / TPS + ramp) + 5


def pace_ratio(r: dict[str, Any], tokens: int, ramp: float) -> float | None:
    """The stream phase's length over its nominal length at 40 tokens/s (1.0 = on pace)."""
    seconds = r.get("seconds")
    return None if seconds is None else round(seconds / (tokens / TPS + ramp), 2)


def passes(r: dict[str, Any], n: int) -> bool:
    return (
        not r.get("fatal")
        and r.get("completed") == n
        and r.get("gaps") == 0
        and r.get("duplicates") == 0
        and not r.get("chunksWithoutSeq")
        and not r.get("errors")
    )


def brief(r: dict[str, Any]) -> str:
    if r.get("fatal"):
        return f"FATAL {r['fatal'][:300]}"
    if r.get("mode") == "idle":
        return f"{r.get('connected')} viewers, {fmt_bytes(r.get('bytesPerViewer'))}/viewer"
    if r.get("mode") == "ttfc":
        first = r.get("firstChunkMs") or {}
        return (
            f"completed {r.get('completed')}/{r.get('sessions')}, "
            f"first chunk p50/p99 {first.get('p50')}/{first.get('p99')} ms"
        )
    lat = r.get("latencyMs") or {}
    first = r.get("firstChunkMs") or {}
    return (
        f"completed {r.get('completed')}/{r.get('sessions')}, {r.get('charsPerSec')} chars/s, "
        f"p50/p99 {lat.get('p50')}/{lat.get('p99')} ms, first chunk p50 {first.get('p50')} ms, "
        f"gaps {r.get('gaps')} dups {r.get('duplicates')}, errors {r.get('errors')}"
    )


# ---- report -----------------------------------------------------------------------------


def fmt_bytes(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 1024 * 1024:
        return f"{v / 1024 / 1024:.1f} MiB"
    if abs(v) >= 1024:
        return f"{v / 1024:.1f} KiB"
    return f"{v:.0f} B"


def fmt_num(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def ratio(ours: float | None, peer: float | None) -> str:
    if ours is None or peer is None or peer == 0:
        return "-"
    return f"{ours / peer:.2f}x"


def get(r: dict[str, Any] | None, *path: str) -> Any:
    cur: Any = r
    for p in path:
        if not isinstance(cur, dict):
            return None
        cur = cur.get(p)
    return cur


def machine_info() -> dict[str, str]:
    def run(cmd: list[str], cwd: Path = ROOT) -> str | None:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    commit = run(["git", "rev-parse", "--short", "HEAD"]) or "uncommitted"
    if commit != "uncommitted" and run(["git", "status", "--porcelain", "--", "server", "providers"]):
        commit += " (with uncommitted changes)"
    pyver = run(
        [
            str(VENV_PY),
            "-c",
            "import importlib.metadata as m, platform; print(platform.python_version(), "
            "'python-socketio', m.version('python-socketio'), 'aiohttp', m.version('aiohttp'))",
        ]
    )

    def npm_version(pkg: str, where: str) -> str:
        p = BENCH / where / "node_modules" / pkg / "package.json"
        try:
            return str(json.loads(p.read_text())["version"])
        except (OSError, ValueError, KeyError):
            return "?"

    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "memory": mem,
        "kernel": platform.release(),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "node": run(["node", "--version"]) or "?",
        "ours": f"Python {pyver}" if pyver else "?",
        "peer": f"express {npm_version('express', 'peer-node')}, "
        f"socket.io {npm_version('socket.io', 'peer-node')}",
        "loadgen": f"socket.io-client {npm_version('socket.io-client', 'loadgen')}",
    }


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**PASS**" if ok else "**FAIL**")


def targets(res: dict[str, dict[str, Any]]) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []

    def both(key: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        r = res.get(key) or {}
        return r.get("ours"), r.get("peer")

    for key in "ab":
        o, p = both(key)
        oc, pc = get(o, "charsPerSec"), get(p, "charsPerSec")
        ok = (
            None
            if oc is None or pc is None or get(o, "fatal") or get(p, "fatal")
            else oc >= THROUGHPUT_RATIO * pc
        )
        rows.append(
            (f"({key}) our content throughput >= {THROUGHPUT_RATIO}x the peer's", ratio(oc, pc), verdict(ok))
        )
    o, _ = both("c")
    if o is not None:
        n = get(res, "c", "params", "sessions")
        p99 = get(o, "latencyMs", "p99")
        ok = passes(o, n) and p99 is not None and p99 <= C_P99_MS
        seen = (
            f"{o.get('completed')}/{n} completed, gaps {o.get('gaps')}, "
            f"dups {o.get('duplicates')}, p99 {p99} ms"
        )
    else:
        ok, seen = None, "-"
    rows.append((f"(c) all sessions complete, 0 gaps, p99 <= {C_P99_MS:g} ms", seen, verdict(ok)))
    o, p = both("d")
    on, pn = get(o, "sessions"), get(p, "sessions")
    ok = None if on is None or pn is None else on >= D_RATIO * pn
    rows.append(
        (
            f"(d) sessions at {TPS:g} tokens/s (on pace, p99 < {D_P99_MS:g} ms) >= {D_RATIO:g}x the peer's",
            f"{on} vs {pn} ({ratio(on, pn)})" if on is not None and pn is not None else "-",
            verdict(ok),
        )
    )
    o, p = both("e")
    ob, pb = get(o, "bytesPerViewer"), get(p, "bytesPerViewer")
    ok = None if ob is None or pb is None else ob <= pb
    rows.append(
        (
            "(e) memory per idle viewer <= the peer's",
            f"{fmt_bytes(ob)} vs {fmt_bytes(pb)} ({ratio(ob, pb)})",
            verdict(ok),
        )
    )
    gm, gr = get(res, "g", "memory", "sessions"), get(res, "g", "redis", "sessions")
    ok = None if gm is None or gr is None else gr >= G_RATIO * gm
    rows.append(
        (
            f"(g) one process in Redis mode keeps >= {G_RATIO:g}x the sessions of memory mode",
            f"{gr} vs {gm} ({ratio(gr, gm)})" if gm is not None and gr is not None else "-",
            verdict(ok),
        )
    )
    o, _ = both("f")
    t = get(o, "firstChunkMs", "p50")
    ok = None if t is None else t < TTFC_P50_MS
    rows.append(
        (
            f"(f) single session start -> first chunk p50 < {TTFC_P50_MS:g} ms",
            f"{t} ms" if t is not None else "-",
            verdict(ok),
        )
    )
    o, p = both("b")
    oc, pc = get(o, "charsPerSec"), get(p, "charsPerSec")
    if oc is not None and pc is not None:
        rows.append(
            (
                f"(b) our content throughput >= {B_PEER_RATIO:g}x the peer's (issue 20)",
                ratio(oc, pc),
                verdict(oc >= B_PEER_RATIO * pc),
            )
        )
    vs = res.get("vs")
    if vs:
        rev = vs["rev"]
        ours, base = vs_mean(vs, "b", "charsPerSec")
        rows.append(
            (
                f"(b) content throughput >= {rev}'s (mean of {vs['rounds']} alternating runs)",
                f"{fmt_num(ours)} vs {fmt_num(base)} chars/s ({ratio(ours, base)})",
                verdict(None if ours is None or base is None else ours >= base),
            )
        )
        ours, base = vs_mean(vs, "c", "serverCpuSeconds")
        rows.append(
            (
                f"(c) server CPU <= {rev}'s (mean of {vs['rounds']} alternating runs)",
                f"{fmt_num(ours, 2)} vs {fmt_num(base, 2)} s ({ratio(ours, base)})",
                verdict(None if ours is None or base is None else ours <= base),
            )
        )
    i_rows = get(res, "i", "leases") or []
    ok = None if not i_rows else all(r.get("targetMet") for r in i_rows)
    rows.append(
        (
            f"(i) a killed owner's stream resumes contiguously within {I_TARGET_LEASES:g} x "
            "OWNER_LEASE_SECONDS (max over the kills)",
            ", ".join(
                f"lease {r['lease']:g} s: max {fmt_num(r.get('max'), 2)} s, "
                f"{r.get('contiguous')}/{r.get('kills')} contiguous"
                for r in i_rows
            )
            or "-",
            verdict(ok),
        )
    )
    return rows


def vs_mean(vs: dict[str, Any], key: str, name: str) -> tuple[float | None, float | None]:
    """The mean of ``name`` over the ``--baseline`` runs of scenario ``key``: ours, baseline's
    (None when a run failed)."""

    def mean(kind: str) -> float | None:
        values = [get(r, name) for r in vs.get(key, {}).get(kind, [])]
        if not values or any(v is None or isinstance(v, bool) for v in values):
            return None
        return sum(values) / len(values)

    return mean("ours"), mean("baseline")


def vs_section(vs: dict[str, Any]) -> list[str]:
    """The ``--baseline`` runs, one row per run."""
    rev = vs["rev"]
    lines = [
        f"## Against {rev} in the same run: (b) and (c), alternating",
        "",
        f"Our server at commit {rev} (a git worktree, this venv) and at this tree, each on a fresh "
        "process pinned like the rest, the two alternating round by round.",
        "",
        "| scenario | round | tree | chars/s | chunks | server CPU, s | chunk p99, ms | completed |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for key in "bc":
        runs = vs.get(key) or {}
        for n in range(vs["rounds"]):
            for kind, label in (("baseline", rev), ("ours", "this tree")):
                r = (runs.get(kind) or [{}] * (n + 1))[n]
                lines.append(
                    f"| ({key}) | {n + 1} | {label} | {fmt_num(get(r, 'charsPerSec'))} | "
                    f"{fmt_num(get(r, 'chunks'))} | {fmt_num(get(r, 'serverCpuSeconds'), 2)} | "
                    f"{fmt_num(get(r, 'latencyMs', 'p99'))} | {fmt_num(get(r, 'completed'))} |"
                )
    means: list[str] = []
    for key, name, digits, label in (
        ("b", "charsPerSec", 0, "(b) chars/s"),
        ("c", "serverCpuSeconds", 2, "(c) server CPU, s"),
    ):
        ours, base = vs_mean(vs, key, name)
        means.append(
            f"- {label}, mean: this tree {fmt_num(ours, digits)}, {rev} {fmt_num(base, digits)} "
            f"({ratio(ours, base)})"
        )
    return [*lines, "", *means]


STREAM_ROWS: list[tuple[str, tuple[str, ...], str, Any]] = [
    # label, path into the result, better (higher/lower), formatter
    ("content, chars/s", ("charsPerSec",), "higher", fmt_num),
    ("chunks/s", ("chunksPerSec",), "higher", fmt_num),
    ("tokens per chunk", ("tokensPerChunk",), "", lambda v: fmt_num(v, 2)),
    ("chars per server CPU-second", ("charsPerCpuSecond",), "higher", fmt_num),
    ("chunk latency p50, ms", ("latencyMs", "p50"), "lower", lambda v: fmt_num(v, 1)),
    ("chunk latency p90, ms", ("latencyMs", "p90"), "lower", lambda v: fmt_num(v, 1)),
    ("chunk latency p99, ms", ("latencyMs", "p99"), "lower", lambda v: fmt_num(v, 1)),
    ("chunk latency max, ms", ("latencyMs", "max"), "lower", lambda v: fmt_num(v, 1)),
    ("start -> first chunk p50, ms", ("firstChunkMs", "p50"), "lower", lambda v: fmt_num(v, 2)),
    ("start -> first chunk p90, ms", ("firstChunkMs", "p90"), "lower", lambda v: fmt_num(v, 2)),
    ("start -> first chunk p99, ms", ("firstChunkMs", "p99"), "lower", lambda v: fmt_num(v, 2)),
    ("sessions completed", ("completed",), "", fmt_num),
    ("seq gaps", ("gaps",), "", fmt_num),
    ("seq duplicates", ("duplicates",), "", fmt_num),
    ("server peak RSS (VmHWM)", ("vmHWM",), "lower", fmt_bytes),
    ("server CPU, s", ("serverCpuSeconds",), "lower", lambda v: fmt_num(v, 2)),
    ("load generator CPU (cores)", ("loadgenCpu",), "", lambda v: fmt_num(v, 2)),
    ("stream duration, s", ("seconds",), "lower", lambda v: fmt_num(v, 2)),
    ("stream duration / nominal at 40 tokens/s", ("paceRatio",), "lower", lambda v: fmt_num(v, 2)),
]
IDLE_ROWS: list[tuple[str, tuple[str, ...], str, Any]] = [
    ("viewers connected", ("connected",), "", fmt_num),
    ("still connected after settling", ("stillConnected",), "", fmt_num),
    ("RSS per idle viewer", ("bytesPerViewer",), "lower", fmt_bytes),
    ("RSS per created session", ("bytesPerSession",), "lower", fmt_bytes),
    ("RSS at start", ("rssBaseline",), "lower", fmt_bytes),
    ("RSS with all viewers", ("rssViewers",), "lower", fmt_bytes),
    ("connects/s", ("connectsPerSec",), "higher", fmt_num),
]


def scenario_table(entry: dict[str, Any], rows: list[tuple[str, tuple[str, ...], str, Any]]) -> list[str]:
    o, p = entry.get("ours"), entry.get("peer")
    out = ["| metric | ours | peer | ours/peer | better |", "|---|---:|---:|---:|:---:|"]
    for label, path, better, f in rows:
        ov, pv = get(o, *path), get(p, *path)
        if ov is None and pv is None:
            continue
        rat = ratio(ov, pv) if better else ""
        out.append(f"| {label} | {f(ov)} | {f(pv)} | {rat} | {better} |")
    for kind, r in (("ours", o), ("peer", p)):
        if r is None:
            continue
        if r.get("fatal"):
            out.append(f"\n**{kind}: run failed:** `{r['fatal'][:400]}`")
        if r.get("errors"):
            out.append(f"\n{kind}: errors `{json.dumps(r['errors'])}`")
        if (r.get("loadgenCpu") or 0) >= 0.9:
            out.append(
                f"\n{kind}: the load generator used {r['loadgenCpu']} of its core: it may be the "
                "bottleneck, so this run's throughput and latency are bounds, not the server's own."
            )
    return out


def render(
    res: dict[str, dict[str, Any]], info: dict[str, str], quick: bool, chart: str | None, notes: list[str]
) -> str:
    lines = [
        "# Benchmark: our server vs the seed's stack (Express + Socket.IO)"
        + (" (QUICK smoke run)" if quick else ""),
        "",
        "Generated by `bench/run.py`" + (" --quick: small sizes, not a measurement." if quick else "."),
        "Each scenario runs on a fresh server process pinned to core 0 (`taskset -c 0`); the load generator "
        "(socket.io-client, one websocket connection per viewer on `/stream/<id>`) runs on core 1. "
        "Ratios are what to compare; absolute numbers depend on the machine.",
        "",
        "| machine | |",
        "|---|---|",
        f"| date | {info['date']} |",
        f"| commit | {info['commit']} |",
        f"| CPU | {info['cpu']} x {info['nproc']} (nproc) |",
        f"| memory | {info['memory']} |",
        f"| kernel | {info['kernel']} |",
        f"| load average at start | {info['load']} |",
        f"| ours | {info['ours']} |",
        f"| peer | Node {info['node']}, {info['peer']} |",
        f"| load generator | Node {info['node']}, {info['loadgen']} |",
        "",
        "## Targets",
        "",
        "| target | measured | result |",
        "|---|---|---|",
        *(f"| {a} | {b} | {c} |" for a, b, c in targets(res)),
        "",
    ]
    digests = []
    for key in "abcf":
        e = res.get(key) or {}
        od, pd = get(e, "ours", "contentDigest"), get(e, "peer", "contentDigest")
        if od and pd:
            digests.append(f"({key}) {'identical' if od == pd else f'DIFFERENT ({od} vs {pd})'}")
    if digests:
        lines += [
            "Text delivered, ours vs peer (sha1 over every session's concatenated chunks): "
            + ", ".join(digests)
            + ".",
            "",
        ]
    if chart:
        lines += [f"![latency and throughput, ours vs peer]({chart})", ""]
    for key in ALL_SCENARIOS:
        entry = res.get(key)
        if not entry:
            continue
        lines += [f"## ({key}) {entry['title']}", ""]
        if key == "d":
            lines += d_section(entry)
        elif key == "j":
            lines += j_section(entry)
        elif key == "i":
            lines += i_section(entry)
        elif key in "gh":
            lines += capacity_section(entry)
        elif key == "e":
            lines += scenario_table(entry, IDLE_ROWS)
        else:
            lines += scenario_table(entry, STREAM_ROWS)
        lines.append("")
    if res.get("vs"):
        lines += [*vs_section(res["vs"]), ""]
    extensions = {
        k: get(res, s, k, "wsExtensions")
        for s in res
        for k in SERVERS
        if get(res, s, k, "wsExtensions") is not None
    }
    if extensions:
        lines += [
            "## Notes",
            "",
            "WebSocket extensions negotiated with socket.io-client's defaults: "
            + ", ".join(f"{k}: `{v or 'none'}`" for k, v in extensions.items())
            + ".",
            "",
        ]
    if notes:
        if not extensions:
            lines += ["## Notes", ""]
        lines += [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def capacity_section(e: dict[str, Any]) -> list[str]:
    runs = [(k, v) for k, v in e.items() if isinstance(v, dict) and "sessions" in v]
    if not runs:
        return ["Not run (our server only; (h) needs nginx)."]
    out = [
        f"| deployment | sessions on pace with p99 < {D_P99_MS:g} ms | first failing "
        "| p99 at that count, ms |",
        "|---|---:|---:|---:|",
    ]
    for name, r in runs:
        out.append(
            f"| {name} | {r['sessions']} | {r.get('firstFail') or '-'} | "
            f"{fmt_num(get(r, 'best', 'latencyMs', 'p99'), 1)} |"
        )
    first, last = runs[0][1]["sessions"], runs[-1][1]["sessions"]
    out += ["", f"{runs[-1][0]} vs {runs[0][0]}: {ratio(last, first)}."]
    return out


def j_section(e: dict[str, Any]) -> list[str]:
    o = e.get("ours") or {}
    if o.get("fatal"):
        return [f"**ours: run failed:** `{o['fatal'][:400]}`"]
    out = [
        f"One session of {o.get('chunks')} chunks ({o.get('chars')} characters), joined late over the "
        f"direct WebSocket {get(e, 'params', 'rounds')} times each way; median time from CONNECT to "
        "`complete`, bytes received on the WebSocket.",
        "",
        "| join | time to the full text, ms | bytes received | text complete |",
        "|---|---:|---:|:---:|",
    ]
    for mode in ("replay", "snapshot"):
        r = o.get(mode) or {}
        out.append(
            f"| {mode} | {fmt_num(r.get('ms'), 2)} | {fmt_bytes(r.get('bytes'))} | {r.get('complete')} |"
        )
    rm, sm = get(o, "replay", "ms"), get(o, "snapshot", "ms")
    rb, sb = get(o, "replay", "bytes"), get(o, "snapshot", "bytes")
    out += ["", f"Snapshot vs replay: {ratio(sm, rm)} of the time, {ratio(sb, rb)} of the bytes."]
    return out


def i_section(e: dict[str, Any]) -> list[str]:
    rows = e.get("leases")
    if not rows:
        return [f"**run failed:** `{e['fatal'][:400]}`"] if e.get("fatal") else ["Not run (ours only)."]
    p = e.get("params") or {}
    out = [
        f"{p.get('processes')} processes on one Redis, not pinned. Each kill: a demo session at "
        f"{p.get('tokensPerSecond')} tokens/s is created and started on one process, a viewer joins it on "
        f"another over the direct WebSocket; after {p.get('warmChunks')} chunks and a random delay of up "
        "to a lease renewal period (lease/3) the owner gets SIGKILL. "
        "Measured: the kill -> the first chunk past the end of the dead owner's log at the viewer; "
        "contiguous: that chunk's `seq` is the last one + 1, every `seq` once in order, no `stream-error`. "
        "A fresh process then replaces the dead one; the victim rotates.",
        "",
        "| lease (`OWNER_LEASE_SECONDS`) | kills | p50, s | max, s | max / lease | contiguous "
        f"| max < {I_TARGET_LEASES:g} x lease |",
        "|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['lease']:g} s | {r.get('done')} | {fmt_num(r.get('p50'), 2)} | {fmt_num(r.get('max'), 2)} "
            f"| {fmt_num(r.get('maxOverLease'), 2)} | {r.get('contiguous')}/{r.get('done')} "
            f"| {verdict(r.get('targetMet'))} |"
        )
    for r in rows:
        if r.get("fatal"):
            out.append(f"\nlease {r['lease']:g} s: **run failed:** `{r['fatal'][:400]}`")
        for t in r.get("trials") or []:
            if not t.get("contiguous"):
                out.append(f"\nlease {r['lease']:g} s, session {t.get('sessionId')}: {t.get('note')}")
    if e.get("fatal"):
        out.append(f"\n**run failed:** `{e['fatal'][:400]}`")
    return out


def d_section(e: dict[str, Any]) -> list[str]:
    out = ["| | ours | peer | ours/peer |", "|---|---:|---:|---:|"]
    o, p = e.get("ours"), e.get("peer")
    out.append(
        f"| sessions served on pace with p99 < {D_P99_MS:g} ms | {get(o, 'sessions')} | "
        f"{get(p, 'sessions')} | {ratio(get(o, 'sessions'), get(p, 'sessions'))} |"
    )
    out.append(f"| first failing count | {get(o, 'firstFail') or '-'} | {get(p, 'firstFail') or '-'} | |")
    for label, path, f in (
        ("p99 at that count, ms", ("best", "latencyMs", "p99"), lambda v: fmt_num(v, 1)),
        ("p50 at that count, ms", ("best", "latencyMs", "p50"), lambda v: fmt_num(v, 1)),
        ("stream phase / nominal length at that count", ("best", "paceRatio"), lambda v: fmt_num(v, 2)),
        ("chunks/s at that count", ("best", "chunksPerSec"), fmt_num),
        ("peak RSS at that count", ("best", "vmHWM"), fmt_bytes),
        ("load generator CPU (cores)", ("best", "loadgenCpu"), lambda v: fmt_num(v, 2)),
    ):
        out.append(f"| {label} | {f(get(o, *path))} | {f(get(p, *path))} | |")
    for kind, r in (("ours", o), ("peer", p)):
        if not r:
            continue
        trials = ", ".join(
            f"{t['sessions']} {'pass' if t['pass'] else 'fail'} (p99 {t['p99']}, pace {t.get('pace')})"
            for t in r.get("trials", [])
        )
        out.append(f"\n{kind} trials: {trials}; search ended by {r.get('boundedBy')}.")
    return out


def chart(res: dict[str, dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    colors = {"ours": "#2f6fdf", "peer": "#e07b39"}
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    fig.suptitle("Streaming server benchmark: ours vs the seed's Express + Socket.IO")

    def bars(
        ax: Any,
        groups: list[str],
        values: dict[str, list[float | None]],
        title: str,
        ylabel: str,
        log: bool = False,
    ) -> None:
        width = 0.38
        for i, kind in enumerate(SERVERS):
            xs = [g + (i - 0.5) * width for g in range(len(groups))]
            ys = [v if v is not None else 0 for v in values.get(kind, [None] * len(groups))]
            ax.bar(xs, ys, width, label=kind, color=colors[kind])
        ax.set_xticks(range(len(groups)), groups)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.legend(fontsize=8)

    stream = [k for k in "abc" if k in res]
    if stream:
        bars(
            axes[0][0],
            [f"({k})" for k in stream],
            {kind: [get(res, k, kind, "charsPerSec") for k in stream] for kind in SERVERS},
            "content throughput",
            "chars/s",
        )
        groups = [f"({k}) {q}" for k in stream for q in ("p50", "p90", "p99")]
        bars(
            axes[0][1],
            groups,
            {
                kind: [
                    max(get(res, k, kind, "latencyMs", q) or 0, 0.1)
                    for k in stream
                    for q in ("p50", "p90", "p99")
                ]
                for kind in SERVERS
            },
            "per-chunk latency (receive - chunk.timestamp)",
            "ms (log)",
            log=True,
        )
        axes[0][1].tick_params(axis="x", labelrotation=60, labelsize=7)
        bars(
            axes[0][2],
            [f"({k})" for k in stream],
            {kind: [get(res, k, kind, "charsPerCpuSecond") for k in stream] for kind in SERVERS},
            "content per server CPU-second",
            "chars/CPU-s",
        )
    if "d" in res:
        bars(
            axes[1][0],
            ["(d)"],
            {kind: [get(res, "d", kind, "sessions")] for kind in SERVERS},
            f"sessions at {TPS:g} tok/s with p99 < {D_P99_MS:g} ms",
            "sessions",
        )
    if "e" in res:
        bars(
            axes[1][1],
            ["(e)"],
            {kind: [(get(res, "e", kind, "bytesPerViewer") or 0) / 1024] for kind in SERVERS},
            "RSS per idle viewer",
            "KiB",
        )
    if "f" in res:
        bars(
            axes[1][2],
            ["p50", "p90", "p99"],
            {
                kind: [get(res, "f", kind, "firstChunkMs", q) for q in ("p50", "p90", "p99")]
                for kind in SERVERS
            },
            "(f) start -> first chunk, single session",
            "ms",
        )
    for row in axes:
        for ax in row:
            if not ax.has_data():
                ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def ensure_matplotlib() -> bool:
    try:
        import matplotlib
    except ImportError:
        log("installing matplotlib into the venv for the chart")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "matplotlib"], check=False, timeout=600)
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return False
    return True


# ---- main -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument(
        "--scenarios",
        default=ALL_SCENARIOS,
        help="which scenarios to run, e.g. 'a,c' or 'ace' (default: all of abcdef)",
    )
    ap.add_argument("--servers", default="ours,peer", help="ours, peer or both (default)")
    ap.add_argument(
        "--out", type=Path, help="output directory (default bench/, or bench/quick/ with --quick)"
    )
    ap.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    ap.add_argument("--no-chart", action="store_true", help="skip the PNG chart")
    ap.add_argument(
        "--no-deflate",
        action="store_true",
        help="viewers do not offer permessage-deflate (socket.io-client and browsers do by default)",
    )
    ap.add_argument(
        "--baseline",
        metavar="REV",
        help="also run (b) and (c) on our server at commit REV (a git worktree), alternating with "
        f"this tree, {BASELINE_ROUNDS} rounds each (make bench: BENCH_BASELINE, default 2ed2b33)",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SIZE=VALUE",
        help="override one size, e.g. --set e_viewers=3000 (names: "
        + ", ".join(Sizes.__dataclass_fields__)
        + ")",
    )
    args = ap.parse_args(argv)

    scenarios = [c for c in args.scenarios.lower() if c in ALL_SCENARIOS]
    servers = tuple(s for s in SERVERS if s in args.servers.split(","))
    if not scenarios or not servers:
        ap.error("nothing to run: check --scenarios and --servers")
    out_dir = args.out or (BENCH / "quick" if args.quick else BENCH)
    out_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []

    if not shutil.which("node"):
        log("node is not installed: the peer and the load generator need Node 20")
        return 2
    for d in ("peer-node", "loadgen"):
        if not (BENCH / d / "node_modules").is_dir():
            log(f"bench/{d}/node_modules is missing: run `npm ci` there (bench/run.sh does)")
            return 2
    if "ours" in servers and not (ROOT / "server" / "__main__.py").exists():
        log("our server (server/__main__.py) does not exist yet: running the peer only")
        notes.append("Our server did not exist at run time: only the peer was measured.")
        servers = tuple(s for s in servers if s != "ours")
    if "ours" in servers and not VENV_PY.exists():
        log(f"{VENV_PY} is missing: create the venv first")
        return 2

    nofile = raise_nofile()
    pinning = not args.no_pin and shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    if not pinning:
        notes.append("Processes were not pinned to cores (no taskset, fewer than 2 CPUs, or --no-pin).")
    sizes = QUICK if args.quick else FULL
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in Sizes.__dataclass_fields__:
            ap.error(f"unknown size {name!r}")
        current = getattr(sizes, name)
        sizes = dataclasses.replace(sizes, **{name: type(current)(value)})
        notes.append(f"Size override: {name} = {value}.")
    if "e" in scenarios and nofile < sizes.e_viewers + 1000:
        notes.append(f"The open-file limit is {nofile}: scenario (e) may fail to connect every viewer.")
    info = machine_info()
    log(
        f"machine: {info['cpu']} x {info['nproc']}, {info['memory']}, load {info['load']}, nofile {nofile}, "
        f"pinning {'on' if pinning else 'off'}"
    )

    if "ours" in servers and VENV_PY.exists():
        parity = subprocess.run(
            [str(VENV_PY), str(BENCH / "check_demo_parity.py")],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        log(parity.stdout.strip().splitlines()[-1] if parity.stdout.strip() else parity.stderr[-500:])
        if parity.returncode != 0:
            notes.append(
                "The peer's demo provider does NOT produce the same tokens as providers/demo.py "
                "(bench/check_demo_parity.py failed): throughput is not comparable."
            )

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        bench = Bench(sizes, servers, pinning, Path(tmp), {"deflate": 0} if args.no_deflate else {})
        if args.baseline and "ours" in servers:
            tree = Path(tmp) / "baseline"
            made = subprocess.run(
                ["git", "worktree", "add", "--detach", str(tree), args.baseline],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=False,
            )
            if made.returncode == 0:
                bench.baseline = (args.baseline, tree)
            else:
                notes.append(f"--baseline {args.baseline}: no worktree ({made.stderr.strip()[-300:]}).")
        if args.no_deflate:
            notes.append("Run with --no-deflate: viewers did not offer permessage-deflate.")
        try:
            for key in ALL_SCENARIOS:
                if key in scenarios:
                    getattr(bench, key)()
            bench.vs()
        except KeyboardInterrupt:
            notes.append("Interrupted: the results are partial.")
        finally:
            if bench.baseline is not None:
                subprocess.run(
                    ["git", "worktree", "remove", "--force", str(bench.baseline[1])],
                    cwd=ROOT,
                    capture_output=True,
                    check=False,
                )
        logs = {
            p.name: p.read_text(errors="replace")[-3000:]
            for p in Path(tmp).glob("*.log")
            if "Traceback" in p.read_text(errors="replace") or "Error" in p.read_text(errors="replace")
        }
    res = bench.results
    for entry in res.values():  # derived metric: content per server CPU-second
        for kind in SERVERS:
            r = entry.get(kind)
            if isinstance(r, dict) and r.get("chars") and r.get("serverCpuSeconds"):
                r["charsPerCpuSecond"] = round(r["chars"] / r["serverCpuSeconds"])
    if logs:
        notes.append("Server logs with errors: " + ", ".join(sorted(logs)) + " (tails in results.json).")
    notes.append(f"Total benchmark time: {time.monotonic() - started:.0f} s.")

    chart_name = None
    if not args.no_chart and ensure_matplotlib():
        png = out_dir / "results.png"
        if chart(res, png):
            chart_name = png.name
    if chart_name is None and not args.no_chart:
        notes.append("No chart: matplotlib could not be installed.")
    (out_dir / "results.json").write_text(
        json.dumps({"machine": info, "quick": args.quick, "results": res, "serverLogs": logs}, indent=1)
    )
    report = render(res, info, args.quick, chart_name, notes)
    results = out_dir / "RESULTS.md"
    # Sections from other benches (soak, memory, flood, partial re-runs) follow the marker:
    # a full run rewrites what is above it and keeps them.
    if results.exists() and KEPT_MARKER in (previous := results.read_text()):
        report = report.rstrip("\n") + "\n\n" + previous[previous.index(KEPT_MARKER) :]
    results.write_text(report)
    log(f"wrote {out_dir / 'RESULTS.md'}")
    if out_dir == BENCH:
        # The headline figures beside the last run's (bench/history.csv, in the repo).
        for line in history.record(history.figures(res), info["commit"], info["date"]):
            print(line)
    print("\n".join(f"{a}: {b} -> {c}" for a, b, c in targets(res)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
