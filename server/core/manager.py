"""The seed's ``StreamingSessionManager``: creates, finds, starts and expires sessions."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Protocol

from providers.base import AIProvider, StreamConfig
from providers.registry import PROVIDERS
from server.core.actions import load_actions
from server.core.chunklog import LogBudget
from server.core.prompting import Conversation, PromptLimits
from server.core.registry import SessionRegistry
from server.core.session_view import SessionState, SessionView, short_id
from server.core.sessions import FlowLimits, Pacer, StreamingSession
from server.guards.metrics import RATE_LIMITED
from server.settings import Settings

log = logging.getLogger(__name__)

#: How often the event loop's lateness is measured for the pacer.
LAG_PROBE_SECONDS = 0.02


class SharedSessions(Protocol):
    """Sessions shared with other processes (Redis mode): what the manager and the app
    need of ``server.cluster.coordinator.Cluster``, which the app hands in. The core
    imports nothing of the cluster."""

    async def register(self, session: StreamingSession) -> bool:
        """Record a new session in the shared store; ``False`` when its user is at
        ``MAX_SESSIONS_PER_USER`` across the cluster."""

    async def find(self, session_id: str) -> SessionView | None:
        """A session that another process owns, mirrored here."""

    def mirrors(self) -> Iterable[SessionView]:
        """The mirrors of other processes' sessions this process holds."""

    def run(self) -> AsyncIterator[None]:
        """The cluster's loops, for ``app.cleanup_ctx``."""

    async def hand_over(self) -> None:
        """Shutdown: stop the live streams another process can resume."""

    async def written(self) -> None:
        """Wait until every log entry of this process is in the store."""

    async def leave(self) -> None:
        """Let the other processes claim what this one still owns."""

    async def not_ready(self, ping_within: float) -> str | None:
        """Why this process cannot take sessions now (``/readyz``), or ``None``."""

    async def conversation(self, session_id: str) -> Conversation | None:
        """What a session another process started asked its provider, as stored now."""


class TooManySessions(Exception):
    """The user already has the maximum number of live sessions (HTTP 429)."""


class Unavailable(Exception):
    """This process takes no new session now (HTTP 503)."""


class LogsFull(Unavailable):
    """The chunk logs of this process hold ``MAX_LOG_BYTES``."""


class ShuttingDown(Unavailable):
    """The process is shutting down."""


class ProviderUnavailable(ValueError):
    """Unknown provider, or one whose credentials are not configured (HTTP 400)."""


class StreamingSessionManager:
    """Everything the HTTP and socket layers do to sessions goes through here."""

    def __init__(
        self,
        settings: Settings,
        registry: SessionRegistry,
        providers: Mapping[str, AIProvider] | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.limits = FlowLimits(
            max_lag=settings.viewer_max_lag,
            stall_timeout=settings.viewer_stall_timeout,
            max_pending_chars=settings.max_pending_chars,
            max_viewers=settings.max_viewers_per_session,
            first_token_timeout=settings.first_token_timeout,
            token_idle_timeout=settings.token_idle_timeout,
        )
        base = settings.coalesce_ms / 1000
        self.pacer = Pacer(base=base, ceiling=max(base, settings.coalesce_max_ms / 1000), interval=base)
        self._provider_settings = settings.provider_settings()
        self._providers: dict[str, AIProvider] = dict(providers or {})
        #: Set when the shutdown begins: no new sessions from then on.
        self.closing = False
        #: What every chunk log of this process holds, against ``MAX_LOG_BYTES``.
        self.log_budget = LogBudget(settings.max_log_bytes)
        #: The Redis side, when ``REDIS_URL`` is set (see :mod:`server.cluster.coordinator`).
        self.cluster: SharedSessions | None = None
        #: Attaches the AI peer to a session whose answer goes into a collaborative document
        #: (set by the app: ``server.collab.peer.DocumentPeers.attach``).
        self.on_target: Callable[[StreamingSession], None] | None = None
        #: How late the event loop wakes up, smoothed, in seconds (:meth:`run_pacer`).
        self.loop_lag = 0.0
        #: The editor actions: built-in, and the operator's ``PROMPTS_FILE`` (a problem in
        #: it raises :class:`server.core.actions.PromptsFileError` here, at startup).
        self.actions = load_actions(settings.prompts_file)
        self.prompt_limits = PromptLimits(
            max_prompt_chars=settings.max_prompt_chars,
            max_context_chars=settings.max_context_chars,
            max_follow_ups=settings.max_follow_ups,
            complete_max_tokens=settings.complete_max_tokens,
        )

    def provider(self, name: str) -> AIProvider:
        """The provider called ``name``, built once; raises :class:`ProviderUnavailable`."""
        provider = self._providers.get(name)
        if provider is not None:
            return provider
        spec = PROVIDERS.get(name)
        if spec is None:
            known = ", ".join(sorted(PROVIDERS))
            raise ProviderUnavailable(f"Unknown provider {name!r}: use one of {known}")
        missing = spec.missing(self._provider_settings)
        if missing is not None:
            raise ProviderUnavailable(missing)
        provider = self._providers[name] = spec.build(self._provider_settings)
        return provider

    def default_model(self, provider_name: str) -> str:
        spec = PROVIDERS.get(provider_name)
        if spec is None:
            return self.provider(provider_name).default_model
        return spec.default_model(self._provider_settings)

    def new_session(
        self,
        session_id: str,
        user_id: str,
        config: StreamConfig,
        *,
        epoch: str | None = None,
        created_at: float | None = None,
    ) -> StreamingSession:
        """A session object with this server's provider, limits and pacer (not registered)."""
        return StreamingSession(
            session_id,
            user_id,
            config,
            self.provider(config.provider),
            self.limits,
            self.pacer,
            epoch=epoch,
            created_at=created_at,
            log_budget=self.log_budget,
            on_target=self._attach_target,
        )

    def _attach_target(self, session: StreamingSession) -> None:
        if self.on_target is not None:
            self.on_target(session)

    async def create_session(self, user_id: str, config: StreamConfig) -> StreamingSession:
        """A new session owned by this process; :class:`TooManySessions` over the user's quota
        (counted across every process in Redis mode)."""
        if self.closing:
            raise ShuttingDown("The server is shutting down")
        if self.log_budget.full:
            RATE_LIMITED.labels(scope="log_bytes").inc()
            raise LogsFull("The server holds as much session text as it may (MAX_LOG_BYTES); try again later")
        if self.cluster is None and self.registry.live_count(user_id) >= self.settings.max_sessions_per_user:
            raise self._too_many()
        session = self.new_session(str(uuid.uuid4()), user_id, config)
        if self.cluster is not None and not await self.cluster.register(session):
            raise self._too_many()
        self.registry.add(session)
        label = short_id(session.id)
        log.info("session %s: created (provider %s)", label, config.provider, extra={"session": label})
        return session

    def _too_many(self) -> TooManySessions:
        RATE_LIMITED.labels(scope="sessions_per_user").inc()
        return TooManySessions(
            f"Too many live sessions for this user (limit {self.settings.max_sessions_per_user})"
        )

    def get_session(self, session_id: str) -> StreamingSession | None:
        """A session this process runs (every session, in one process)."""
        return self.registry.get(session_id)

    async def find(self, session_id: str) -> SessionView | None:
        """A session wherever it runs: this process's own, or (Redis mode) a view of one
        owned by another process. Raises ``StoreUnavailable`` when Redis is unreachable."""
        local = self.registry.get(session_id)
        if local is not None or self.cluster is None:
            return local
        return await self.cluster.find(session_id)

    async def conversation_of(self, session: SessionView) -> Conversation | None:
        """What ``session`` asked its provider, wherever it ran (a mirror made before the
        session started reads it from the store)."""
        if session.conversation is not None or self.cluster is None or isinstance(session, StreamingSession):
            return session.conversation
        if session.state is SessionState.CREATED:
            return None
        session.conversation = await self.cluster.conversation(session.id)
        return session.conversation

    async def sweep(self, now: float | None = None) -> None:
        """Drop finished sessions past their TTL; end sessions idle too long."""
        now = time.monotonic() if now is None else now
        for session in self.registry:
            if session.finished_at is not None:
                if now - session.finished_at >= self.settings.session_ttl:
                    self.registry.remove(session.id)
                    session.dispose()
            elif session.state in (SessionState.CREATED, SessionState.PAUSED) and (
                now - session.touched >= self.settings.session_idle_timeout
            ):
                label = short_id(session.id)
                log.info("session %s: idle, ending it", label, extra={"session": label})
                await session.abort("idle", "The session was idle for too long")

    async def run_sweeper(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval)
            await self.sweep()

    async def run_pacer(self) -> None:
        """Measure how late the event loop wakes up and let the pacer stretch chunks."""
        loop = asyncio.get_running_loop()
        lag = 0.0
        while True:
            expected = loop.time() + LAG_PROBE_SECONDS
            await asyncio.sleep(LAG_PROBE_SECONDS)
            late = max(0.0, loop.time() - expected)
            lag = late if late > lag else 0.7 * lag + 0.3 * late
            self.pacer.observe(lag)
            self.loop_lag = lag

    async def shutdown(self) -> None:
        """End every live session with ``stream-error`` code ``shutdown``."""
        live = [s for s in self.registry if s.is_live and not s.handed_over]
        await asyncio.gather(*(s.abort("shutdown", "The server is shutting down") for s in live))

    async def close_providers(self) -> None:
        """Release the providers' connection pools (those that hold one have ``aclose``)."""
        for provider in self._providers.values():
            aclose = getattr(provider, "aclose", None)
            if aclose is not None:
                await aclose()
