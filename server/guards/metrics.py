"""Prometheus metrics, served at ``GET /metrics`` (``docs/operations.md`` lists them).

Three kinds, each as cheap as its call site needs:

- Counters and a histogram that the rare paths touch (a join, a failed stream, a
  refusal, a takeover, a first token) are ordinary ``prometheus_client`` objects:
  :data:`RATE_LIMITED`, :data:`STREAM_ERRORS`, :data:`JOINS`, :data:`TAKEOVERS`,
  :data:`TIME_TO_FIRST_TOKEN`.
- What happens once per chunk is tallied in plain integers (:data:`TALLY`, about 40 ns
  an increment where a ``prometheus_client`` counter takes 350 ns and a histogram 750 ns)
  and turned into counters and a histogram only when scraped. Nothing is counted per token.
- What is true right now (sessions by state, viewers by transport, event loop lag) is
  read from the app's session manager at scrape time: nothing to keep up to date.

The first two are process-wide: they are not in ``prometheus_client``'s global registry,
but in every app's own :class:`~prometheus_client.CollectorRegistry`
(:func:`build_registry`), along with that app's gauges. A process serves one app, so this
is exact; tests that run several apps in one process compare counters before and after.
Everything here is touched only from the event loop's thread.

Labels are low-cardinality only: never a session id, user id, prompt or token.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from enum import Enum
from typing import Protocol, cast

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector


class _SessionView(Protocol):
    @property
    def viewers(self) -> Mapping[str, object]: ...


class _StateView(_SessionView, Protocol):
    @property
    def state(self) -> Enum: ...


class _ClusterView(Protocol):
    def mirrors(self) -> Iterable[_SessionView]: ...


class ManagerView(Protocol):
    """What the gauges read of a session manager (``server.core.manager``); metrics sit
    below the core and import none of it."""

    @property
    def registry(self) -> Iterable[_StateView]: ...

    @property
    def cluster(self) -> _ClusterView | None: ...

    @property
    def loop_lag(self) -> float: ...


__all__ = [
    "JOINS",
    "RATE_LIMITED",
    "STREAM_ERRORS",
    "TAKEOVERS",
    "TALLY",
    "TIME_TO_FIRST_TOKEN",
    "FastHistogram",
    "Tally",
    "build_registry",
]

# No ``*_created`` series next to every counter and histogram (a process-wide switch of
# prometheus_client; nothing else in this process exports metrics).
cast(Callable[[], None], disable_created_metrics)()  # untyped in prometheus_client

# -- process-wide: the rare paths ----------------------------------------------

#: Requests refused by a rate limit or quota, by ``scope`` (a fixed name per limit, e.g.
#: ``sessions_per_user``). Increment with ``RATE_LIMITED.labels(scope="...").inc()``.
RATE_LIMITED = Counter(
    "streaming_rate_limited",
    "Requests refused by a rate limit or quota, by limit",
    ["scope"],
    registry=None,
)
RATE_LIMITED.labels(scope="sessions_per_user")

#: Sessions this process ran that ended with ``stream-error``, by provider and code
#: (``auth``, ``rate_limited``, ``upstream``, ``timeout``, ``bad_request`` come from the
#: provider; ``idle``, ``shutdown``, ``internal``, ``owner_lost`` from the server).
STREAM_ERRORS = Counter(
    "streaming_stream_errors",
    "Sessions that ended with stream-error, by provider and error code",
    ["provider", "code"],
    registry=None,
)

#: Viewers that joined a session, by how they were caught up.
JOINS = Counter(
    "streaming_viewer_joins",
    "Viewers that joined a session: new (whole log replayed), resume (lastSeq: only what "
    "it missed), reset (another epoch or a lastSeq past the log: stream-reset, then the "
    "whole log), snapshot (one snapshot event)",
    ["kind"],
    registry=None,
)
JOIN_KINDS = ("new", "resume", "reset", "snapshot")
for _kind in JOIN_KINDS:
    JOINS.labels(kind=_kind)

#: Redis mode: sessions of a stopped process that this process claimed, by what became of them.
TAKEOVERS = Counter(
    "streaming_takeovers",
    "Redis mode: sessions of a stopped process claimed here: resumed (the stream goes on "
    "here), adopted (not started yet), owner_lost (could not be continued)",
    ["outcome"],
    registry=None,
)
TAKEOVER_OUTCOMES = ("resumed", "adopted", "owner_lost")
for _outcome in TAKEOVER_OUTCOMES:
    TAKEOVERS.labels(outcome=_outcome)

#: Sessions started here, by editor action (``custom`` for a bare prompt; PROTOCOL.md
#: "Document context, actions and follow-ups").
SESSIONS_BY_ACTION = Counter(
    "streaming_sessions_started",
    "Sessions started on this process, by action (custom for a bare prompt)",
    ["action"],
    registry=None,
)
SESSIONS_BY_ACTION.labels(action="custom")

#: Seconds from a session's start to its first chunk delivered to viewers, by provider.
TIME_TO_FIRST_TOKEN = Histogram(
    "streaming_time_to_first_token_seconds",
    "Seconds from a session's start to its first chunk delivered to viewers (any pause "
    "before it included), by provider",
    ["provider"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=None,
)

# -- process-wide: once per chunk ------------------------------------------------

CHUNK_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class FastHistogram:
    """A histogram without a lock or labels (event loop thread only), exported at scrape."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        #: Per bucket, not cumulative; the last one is ``+Inf``.
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        buckets: list[tuple[str, float]] = []
        cumulative = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=self.total)


class Tally:
    """Plain counters for the per-chunk path."""

    __slots__ = ("chunk_bytes", "chunk_latency", "chunk_sends", "chunks")

    def __init__(self) -> None:
        #: Chunks made by the sessions this process runs, counted once each when delivered.
        self.chunks = 0
        #: UTF-8 bytes of those chunks' ``content``, once per chunk (not per viewer).
        self.chunk_bytes = 0
        #: Live chunk events handed to viewers: one per viewer per chunk (replays not counted).
        self.chunk_sends = 0
        #: Seconds from the first provider item of a chunk received to that chunk delivered.
        self.chunk_latency = FastHistogram(CHUNK_LATENCY_BUCKETS)


TALLY = Tally()


class _TallyCollector(Collector):
    def collect(self) -> Iterable[Metric]:
        tally = TALLY
        yield CounterMetricFamily(
            "streaming_chunks",
            "Chunks made by the sessions this process runs, counted once each when delivered",
            value=tally.chunks,
        )
        yield CounterMetricFamily(
            "streaming_chunk_bytes",
            "UTF-8 bytes of content of those chunks (once per chunk, not per viewer)",
            value=tally.chunk_bytes,
        )
        yield CounterMetricFamily(
            "streaming_chunk_sends",
            "Live chunk events handed to viewers of this process (one per viewer per chunk; "
            "relayed sessions included, replays not)",
            value=tally.chunk_sends,
        )
        yield tally.chunk_latency.family(
            "streaming_chunk_latency_seconds",
            "Seconds from a chunk's first provider item received to the chunk delivered to viewers",
        )


_PROCESS_COLLECTORS: tuple[Collector, ...] = (
    RATE_LIMITED,
    STREAM_ERRORS,
    SESSIONS_BY_ACTION,
    JOINS,
    TAKEOVERS,
    TIME_TO_FIRST_TOKEN,
    _TallyCollector(),
)

# -- per app: read at scrape time ------------------------------------------------

#: The ``transport`` label of a viewer: each viewer class names its own
#: (``transport_label``); anything else counts as ``other``.
TRANSPORTS = ("direct", "socketio_websocket", "socketio_polling", "websocket", "sse", "other")
SESSION_STATES = ("created", "streaming", "paused", "completed", "failed", "cancelled")


def _label(viewer: object) -> str:
    label = getattr(viewer, "transport_label", "other")
    return label if label in TRANSPORTS else "other"


class _AppCollector(Collector):
    """The gauges of one app, computed from its session manager when scraped."""

    def __init__(self, manager: ManagerView) -> None:
        self._manager = manager

    def collect(self) -> Iterator[Metric]:
        manager = self._manager
        states = dict.fromkeys(SESSION_STATES, 0)
        viewers = {(t, via): 0 for t in TRANSPORTS for via in ("local", "relay")}
        for session in manager.registry:
            states[session.state.value] = states.get(session.state.value, 0) + 1
            for viewer in session.viewers.values():
                viewers[_label(viewer), "local"] += 1
        cluster = manager.cluster
        if cluster is not None:
            for mirror in cluster.mirrors():
                for viewer in mirror.viewers.values():
                    viewers[_label(viewer), "relay"] += 1

        sessions = GaugeMetricFamily(
            "streaming_sessions",
            "Sessions this process runs (owns, in Redis mode), by state; finished ones stay for SESSION_TTL",
            labels=["state"],
        )
        for state, count in states.items():
            sessions.add_metric([state], count)
        yield sessions

        by_transport = GaugeMetricFamily(
            "streaming_viewers",
            "Connected viewers, by transport, and by whether their session runs here (local) "
            "or in another process (relay, Redis mode)",
            labels=["transport", "via"],
        )
        for (transport, via), count in viewers.items():
            by_transport.add_metric([transport, via], count)
        yield by_transport

        yield GaugeMetricFamily(
            "streaming_event_loop_lag_seconds",
            "How late the event loop wakes up (smoothed, the pacer's probe)",
            value=manager.loop_lag,
        )


def build_registry(manager: ManagerView) -> CollectorRegistry:
    """The registry ``GET /metrics`` of one app reads: the process-wide metrics, that app's
    gauges and the process's CPU, memory and file descriptors."""
    registry = CollectorRegistry()
    for collector in _PROCESS_COLLECTORS:
        registry.register(collector)
    registry.register(_AppCollector(manager))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry
