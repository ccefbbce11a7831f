"""What one client may cost: token buckets, counts per address, and the client's address.

Every limit is a setting (``server.settings``); a refusal is counted in
``streaming_rate_limited{scope=...}`` and answered with 429 and ``Retry-After`` over HTTP,
or an ack ``{ok: false, error}`` over Socket.IO.

One :class:`Limits` per app holds them all, shared by every path (HTTP, python-socketio,
the direct WebSocket path, the plain WebSocket and SSE), so that a client cannot get
around a limit by changing transport.

In Redis mode the per-user and per-address limits hold for the cluster as a whole
(:meth:`Limits.share`): every check still answers at once from this process's copy of
the limit, and what this process spends or holds goes to a :class:`Share` (Redis:
``server.cluster.redis_limits``), which answers later with what the whole cluster has
spent or holds; that answer becomes the local copy. A copy is late by what the other
processes did since this one last heard (the share makes that short), so across processes
a client gets about one token or connection more per other process at most; a request
never waits for Redis.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from aiohttp import web

from server.guards.metrics import RATE_LIMITED

if TYPE_CHECKING:
    from server.settings import Settings

__all__ = [
    "AddressCounter",
    "Buckets",
    "Limits",
    "Share",
    "TokenBucket",
    "TrustedProxies",
    "limits_key",
]

Clock = Callable[[], float]


class Share(Protocol):
    """Where the limits of several processes meet. Told what this process spends and
    holds (soon after, not on the request's path), it answers with what the whole
    cluster has left or holds, through :meth:`Buckets.adopt` and :meth:`AddressCounter.adopt`."""

    def spent(self, buckets: Buckets, key: str) -> None:
        """This process spent one token of ``key``'s bucket."""

    def held(self, counter: AddressCounter, address: str) -> None:
        """This process's count of ``address`` changed, or a refusal needs a fresher total."""


@dataclass(slots=True)
class TokenBucket:
    """``rate`` tokens a second up to ``burst``; :meth:`take` spends one when there is one."""

    rate: float
    burst: float
    tokens: float
    stamp: float

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> TokenBucket:
        return cls(rate, burst, burst, now)

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        self._refill(now)
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False

    def retry_after(self, now: float, cost: float = 1.0) -> float:
        """Seconds until :meth:`take` would succeed (``inf`` when the rate is 0)."""
        self._refill(now)
        missing = cost - self.tokens
        if missing <= 0:
            return 0.0
        return math.inf if self.rate <= 0 else missing / self.rate

    def is_full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.burst


@dataclass(slots=True)
class Buckets:
    """One :class:`TokenBucket` per key (a user, an address), forgotten once full again,
    so that the map holds only the keys that spent something lately."""

    rate: float
    burst: float
    scope: str
    clock: Clock = time.monotonic
    #: The cluster's side (Redis mode), told of every token spent here.
    share: Share | None = None
    _buckets: dict[str, TokenBucket] = field(default_factory=dict)
    _last_prune: float = 0.0

    def take(self, key: str) -> float:
        """0 when allowed (a token is spent), else the seconds to wait (counted as refused)."""
        now = self.clock()
        self._prune(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket.full(self.rate, self.burst, now)
        if bucket.take(now):
            if self.share is not None:
                self.share.spent(self, key)
            return 0.0
        RATE_LIMITED.labels(scope=self.scope).inc()
        return max(bucket.retry_after(now), 0.001)

    def tokens(self, key: str) -> float:
        """What is left of ``key``'s bucket now, as this process knows it."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return self.burst
        bucket._refill(self.clock())
        return bucket.tokens

    def adopt(self, key: str, tokens: float) -> None:
        """``key``'s bucket holds ``tokens`` now: what the whole cluster has left (below 0
        when the processes together spent more than it had), less what this process spent
        since it asked. Later takes and refills start from there."""
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if tokens >= self.burst:
                return
            bucket = self._buckets[key] = TokenBucket.full(self.rate, self.burst, now)
        bucket.tokens = min(self.burst, tokens)
        bucket.stamp = now

    def _prune(self, now: float) -> None:
        # A full bucket is the same as none: drop them now and then (at most once per the
        # time a bucket takes to fill up), so memory follows the active keys only.
        period = self.burst / self.rate if self.rate > 0 else math.inf
        if now - self._last_prune < max(period, 1.0):
            return
        self._last_prune = now
        for key in [key for key, bucket in self._buckets.items() if bucket.is_full(now)]:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass(slots=True)
class AddressCounter:
    """Open things (connections, Engine.IO sessions) per client address, up to ``limit``."""

    limit: int
    scope: str
    #: The cluster's side (Redis mode), told whenever an address's count here changes.
    share: Share | None = None
    _counts: dict[str, int] = field(default_factory=dict)
    #: What the other processes hold per address, as last heard (Redis mode; no zeros).
    _others: dict[str, int] = field(default_factory=dict)

    def acquire(self, address: str) -> bool:
        """Count one more for ``address``; ``False`` (nothing counted) at the limit."""
        count = self._counts.get(address, 0)
        others = self._others.get(address, 0)
        if count + others >= self.limit:
            RATE_LIMITED.labels(scope=self.scope).inc()
            if others and self.share is not None:
                # The others may have closed some since: ask again for the next attempt.
                self.share.held(self, address)
            return False
        self._counts[address] = count + 1
        if self.share is not None:
            self.share.held(self, address)
        return True

    def release(self, address: str) -> None:
        count = self._counts.get(address, 0) - 1
        if count > 0:
            self._counts[address] = count
        else:
            self._counts.pop(address, None)
        if self.share is not None:
            self.share.held(self, address)

    def count(self, address: str) -> int:
        """What this process holds for ``address``."""
        return self._counts.get(address, 0)

    def others(self, address: str) -> int:
        """What the other processes hold for ``address``, as last heard."""
        return self._others.get(address, 0)

    def adopt(self, address: str, others: int) -> None:
        """The other processes hold ``others`` for ``address`` (as the cluster says now)."""
        if others > 0:
            self._others[address] = others
        else:
            self._others.pop(address, None)

    def addresses(self, *, mine: bool) -> list[str]:
        """The addresses this process keeps the others' count of, and (``mine``) those it
        holds something for."""
        return list(self._counts.keys() | self._others.keys()) if mine else list(self._others)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address, an IPv4-mapped IPv6 one (a dual-stack listener's peers) as IPv4."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@functools.lru_cache(maxsize=1024)
def _normal(text: str) -> str:
    """``text`` as an address is written canonically (else as it is). Kept for the last
    1,024 addresses: parsing one costs about 3 us, and it runs for every new session and
    connection, from a few addresses mostly."""
    address = _ip(text)
    return text if address is None else str(address)


class TrustedProxies:
    """Which peers may say, in ``X-Forwarded-For``, who the client is (``TRUSTED_PROXIES``:
    addresses or networks, e.g. ``127.0.0.1,10.0.0.0/8``). Others are the client."""

    def __init__(self, networks: Iterable[str]) -> None:
        self._networks = [ipaddress.ip_network(n.strip(), strict=False) for n in networks if n.strip()]

    def trusts(self, peer: str) -> bool:
        if not self._networks:
            return False
        address = _ip(peer)
        return address is not None and any(address in network for network in self._networks)

    def client_address(self, peer: str | None, forwarded_for: str | None) -> str:
        """The client's address: the peer, or when the peer is a trusted proxy, the last
        address in ``X-Forwarded-For`` that is not itself a trusted proxy (the rightmost
        untrusted hop; the ones left of it are the client's own say)."""
        address = _normal(peer) if peer else "unknown"
        if forwarded_for is None or not self.trusts(address):
            return address
        hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
        for hop in reversed(hops):
            address = _normal(hop)
            if not self.trusts(address):
                break
        return address


@dataclass(slots=True)
class Limits:
    """Every rate limit and count of one app, built from its settings."""

    proxies: TrustedProxies
    #: Session creation per user (``sub``, or the body's ``userId`` with auth off).
    sessions_per_user: Buckets
    #: Session creation per client address.
    sessions_per_address: Buckets
    #: Socket.IO / WebSocket messages per connection (one bucket per connection, made by
    #: :meth:`message_bucket` and kept by the connection).
    message_rate: float
    message_burst: float
    #: Open connections per client address (every WebSocket, SSE stream and Engine.IO
    #: session counts one).
    connections: AddressCounter
    #: New Engine.IO sessions (handshakes) per client address.
    handshakes_per_address: Buckets
    clock: Clock = time.monotonic

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            proxies=TrustedProxies(settings.trusted_proxies),
            sessions_per_user=Buckets(
                settings.session_rate_per_user, settings.session_burst_per_user, "session_creation_per_user"
            ),
            sessions_per_address=Buckets(
                settings.session_rate_per_address,
                settings.session_burst_per_address,
                "session_creation_per_address",
            ),
            message_rate=settings.socket_message_rate,
            message_burst=settings.socket_message_burst,
            connections=AddressCounter(settings.max_connections_per_address, "connections_per_address"),
            handshakes_per_address=Buckets(
                settings.handshake_rate_per_address,
                settings.handshake_burst_per_address,
                "handshakes_per_address",
            ),
        )

    def share(self, share: Share) -> None:
        """Make the per-user and per-address limits hold for the whole cluster (Redis
        mode), through ``share``. Messages per connection stay this process's own."""
        for buckets in (self.sessions_per_user, self.sessions_per_address, self.handshakes_per_address):
            buckets.share = share
        self.connections.share = share

    def message_bucket(self) -> TokenBucket:
        return TokenBucket.full(self.message_rate, self.message_burst, self.clock())

    def message_allowed(self, bucket: TokenBucket) -> bool:
        """One message of a connection: ``False`` (counted) when over its rate."""
        if bucket.take(self.clock()):
            return True
        RATE_LIMITED.labels(scope="messages_per_connection").inc()
        return False


for _scope in (
    "session_creation_per_user",
    "session_creation_per_address",
    "messages_per_connection",
    "connections_per_address",
    "handshakes_per_address",
):
    RATE_LIMITED.labels(scope=_scope)


#: The app's :class:`Limits` (``request.app[limits_key]``).
limits_key = web.AppKey("limits", Limits)
