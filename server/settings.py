"""Typed settings read from the environment and a ``.env`` file.

Every limit the server enforces is named here with a safe default; the env var is the
field name in upper case (``MAX_BODY_BYTES``), and the CLI flags reuse the same names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from providers.base import ProviderSettings
from providers.registry import default_provider_name

ROOT = Path(__file__).resolve().parent.parent
#: The demo page inside an installed wheel (``make wheel`` copies ``frontend/dist`` here).
PACKAGED_STATIC = Path(__file__).resolve().parent / "static"


def _default_static_dir() -> Path:
    """The built demo page: ``frontend/dist`` in a source checkout, else the copy the
    wheel carries as package data."""
    checkout = ROOT / "frontend" / "dist"
    if checkout.is_dir() or not PACKAGED_STATIC.is_dir():
        return checkout
    return PACKAGED_STATIC


def _memory_share(share: float) -> int:
    """``share`` of this machine's physical memory, in bytes (256 MiB when unknown)."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 256 * 1024 * 1024
    return max(int(total * share), 64 * 1024 * 1024)


def setting(default: Any, meaning: str, issue: int, *, shown: str | None = None, **constraints: Any) -> Any:
    """A settings field with its documentation: ``meaning`` and the ``issue`` that added it
    go to ``docs/configuration.md``; ``shown`` replaces a default that is computed (a
    callable ``default`` is a factory)."""
    extra: dict[str, Any] = {"issue": issue}
    if shown is not None:
        extra["shown"] = shown
    if callable(default):
        return Field(default_factory=default, description=meaning, json_schema_extra=extra, **constraints)
    return Field(default, description=meaning, json_schema_extra=extra, **constraints)


class Settings(BaseSettings):
    """Server configuration. ``docs/configuration.md`` is generated from these fields
    (``make docs``): each one's ``description`` is its meaning there, and ``issue`` names
    the issue that introduced it."""

    # hide_input_in_errors: a refused value is not repeated in the error (a URL may carry a
    # password, a key is a secret).
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True, hide_input_in_errors=True)

    host: str = setting("127.0.0.1", "address to bind", 2)
    port: int = setting(3001, "port (the seed's client expects 3001)", 2, ge=0, le=65535)
    cors_origins: Annotated[list[str], NoDecode] = setting(
        ["http://localhost:5173"],
        "comma-separated browser origins allowed besides the server's own (Vite's dev server by"
        " default); a request from any other `Origin` gets 403 on every path (HTTP, SSE, both"
        " WebSockets, long-polling); `*` allows any",
        2,
        shown="http://localhost:5173",
    )
    log_level: Literal["debug", "info", "warning", "error"] = setting(
        "info", "`debug`, `info`, `warning`, `error`; prompts are never logged", 2
    )
    log_format: Literal["text", "json"] = setting(
        "text", "`text`, or `json` (one JSON object per line, with a request id; docs/operations.md)", 12
    )
    static_dir: Path = setting(
        _default_static_dir,
        "the built demo page served at `/`",
        2,
        shown="`frontend/dist` in a checkout, else the copy the installed package carries",
    )

    # Providers.
    default_provider: str | None = setting(
        None,
        "provider when a session's config names none",
        2,
        shown="`openai` if `OPENAI_API_KEY` or `OPENAI_BASE_URL`, else `anthropic` if"
        " `ANTHROPIC_API_KEY`, else `demo`",
    )
    openai_api_key: SecretStr | None = setting(None, "OpenAI API key (never logged)", 2)
    openai_base_url: str | None = setting(
        None, "an OpenAI-compatible server instead of OpenAI (Ollama, vLLM, llama.cpp, LM Studio)", 2
    )
    openai_model: str = setting("gpt-5.4-mini", "OpenAI model when the session names none", 2)
    openai_background: bool = setting(
        False,
        "stream OpenAI answers through the Responses API in background mode, so that another"
        " process can resume them (docs/providers.md)",
        11,
    )
    anthropic_api_key: SecretStr | None = setting(None, "Anthropic API key (never logged)", 2)
    anthropic_base_url: str | None = setting(None, "another Anthropic endpoint", 2)
    anthropic_model: str = setting("claude-sonnet-4-6", "Anthropic model when the session names none", 2)
    anthropic_max_tokens: int = setting(
        4000, "`max_tokens` sent to Anthropic when the session sets none", 2, ge=1
    )
    provider_timeout: float = setting(60.0, "seconds for one upstream request (SDK timeout)", 2, gt=0)
    provider_max_retries: int = setting(2, "SDK retries on 429/5xx/connection errors", 2, ge=0)
    first_token_timeout: float = setting(
        30.0, "seconds to wait for the first token before `stream-error` `timeout`", 2, gt=0
    )
    token_idle_timeout: float = setting(30.0, "seconds to wait for each further token", 2, gt=0)
    demo_tokens_per_second: float = setting(
        40.0, "demo provider pace when the session sets none (0 = as fast as possible)", 2, ge=0
    )

    # Limits.
    max_body_bytes: int = setting(
        1024 * 1024,
        "largest HTTP body (413 above); room for a start body whose context fills `MAX_CONTEXT_CHARS`",
        2,
        ge=1024,
    )
    max_prompt_chars: int = setting(100_000, "longest prompt (413 above)", 2, ge=1)
    max_tokens_limit: int = setting(32_000, "largest `config.maxTokens` accepted", 2, ge=1)
    max_sessions_per_user: int = setting(20, "live sessions per `userId` (429 above)", 2, ge=1)
    max_viewers_per_session: int = setting(32, "viewers connected to one session", 2, ge=1)
    max_socket_message_bytes: int = setting(
        2 * 1024 * 1024, "largest Socket.IO message accepted from a client", 2, ge=1024
    )
    session_ttl: float = setting(3600.0, "seconds a finished session stays readable and replayable", 2, gt=0)
    session_idle_timeout: float = setting(
        900.0,
        "a session created but never started, or paused, this long is ended (`stream-error` `idle`)",
        2,
        gt=0,
    )
    viewer_max_lag: int = setting(64, "events queued for one viewer before the session waits for it", 2, ge=1)
    viewer_stall_timeout: float = setting(
        10.0,
        "seconds a viewer may stay behind before it is disconnected (it may reconnect with `lastSeq`)",
        2,
        gt=0,
    )
    max_pending_chars: int = setting(
        64 * 1024, "received-but-unsent characters before the provider stops being read", 2, ge=1
    )
    coalesce_ms: float = setting(
        5.0,
        "a session sends at most one chunk per this interval, joining the tokens that arrived"
        " meanwhile; an idle session sends each token at once",
        5,
        ge=0,
        le=1000,
    )
    coalesce_max_ms: float = setting(
        50.0,
        "how far that interval stretches while the event loop runs late (a busy server sends"
        " fewer, larger chunks)",
        5,
        ge=0,
        le=1000,
    )
    keepalive_timeout: float = setting(
        75.0, "seconds a connection may stay idle before its first request or between two", 5, gt=0
    )
    socketio_direct_websocket: bool = setting(
        True,
        "serve Socket.IO clients that connect with the `websocket` transport with the server's"
        " own lean connection handler (about 3 KiB per idle client instead of 36); `false`"
        " leaves every Socket.IO request to python-socketio",
        5,
    )
    socketio_ping_interval: float = setting(25.0, "Engine.IO heartbeat interval, seconds", 5, gt=0)
    socketio_ping_timeout: float = setting(
        20.0,
        "Engine.IO heartbeat timeout, seconds: a client silent for interval plus timeout is disconnected",
        5,
        gt=0,
    )
    sse_keepalive_interval: float = setting(
        15.0, "seconds between keep-alive comments on an idle Server-Sent Events stream", 14, gt=0
    )
    chunks_page_limit: int = setting(
        1000, "most chunks one `GET /api/streaming/{id}/chunks` returns", 14, ge=1, le=100_000
    )
    sweep_interval: float = setting(30.0, "seconds between expiry sweeps", 2, gt=0)
    max_log_bytes: int = setting(
        lambda: _memory_share(0.25),
        "bytes of chunk text all sessions' logs of this process may hold; past it new sessions"
        " get 503 and `/readyz` says not ready until some expire",
        12,
        ge=1024,
        shown="a quarter of the machine's memory",
    )
    handshake_timeout: float = setting(
        10.0,
        "seconds a connection has to send its request head and connect a Socket.IO namespace,"
        " else it is closed",
        12,
        gt=0,
    )
    max_partial_message_bytes_total: int = setting(
        64 * 1024 * 1024,
        "bytes all direct WebSocket connections together may hold in unfinished (fragmented)"
        " messages; the one that would pass it is closed (1009)",
        12,
        ge=1024,
    )
    max_packets_per_turn: int = setting(
        32,
        "packets one direct WebSocket connection has handled per event-loop turn (the rest"
        " wait, so one client cannot starve the others)",
        12,
        ge=1,
    )

    # The model sees the document (issue 19).
    max_context_chars: int = setting(
        200_000,
        "characters of editor context (selection, before, after, document) sent upstream, about"
        " 50k tokens, which fits a 128k-token model with room for the answer; `before` is cut"
        " from its start and `after` and `document` from their end, and a longer selection is 413",
        19,
        ge=1,
    )
    max_follow_ups: int = setting(20, "earlier exchanges one follow-up chain may carry (400 above)", 19, ge=1)
    complete_max_tokens: int = setting(
        48,
        "`maxTokens` of the `complete` (autocomplete) action when the session's config sets none",
        19,
        ge=1,
    )
    prompts_file: Path | None = setting(
        None,
        "a TOML file of prompt templates that overrides built-in actions and adds new ones"
        " (docs/prompts.md); a problem in it stops the server at startup",
        19,
    )

    # Collaborative documents (issue 21; docs/collaboration.md).
    collab_store: Literal["sqlite", "memory"] = setting(
        "sqlite",
        "where collaborative documents persist: `sqlite` (one database file under"
        " `COLLAB_DATA_DIR`) or `memory` (lost on restart: tests and demos); in Redis mode"
        " they live in Redis",
        21,
    )
    collab_data_dir: Path = setting(
        Path("data"),
        "folder of the SQLite document store, relative to the folder the server starts from;"
        " created when the first document is opened",
        21,
    )
    collab_max_document_bytes: int = setting(
        16 * 1024 * 1024,
        "bytes one document may take in its store; a client whose update would pass it is"
        " closed (1009) and the update dropped",
        21,
        ge=1024,
    )
    collab_max_message_bytes: int = setting(
        16 * 1024 * 1024,
        "largest y-websocket message a client may send to `/collab` (a larger one closes it, 1009)",
        21,
        ge=1024,
    )
    collab_max_connections_per_document: int = setting(
        200, "WebSockets open on one document; past it the upgrade is refused (429)", 21, ge=1
    )
    collab_room_idle_timeout: float = setting(
        60.0,
        "seconds a document stays in memory with no client and no writer (every update is"
        " stored before it leaves)",
        21,
        gt=0,
    )
    collab_sync_timeout: float = setting(
        10.0,
        "seconds a `/collab` client has to send its sync step 1 after it connects, else it is closed (1008)",
        21,
        gt=0,
    )
    collab_squash_after: int = setting(
        300,
        "SQLite store: a document not written for this many seconds has its stored history"
        " squashed into one update on its next write",
        21,
        ge=1,
    )
    collab_flush_ms: int = setting(
        60,
        "the AI peer writes the text it received into the document at most this often"
        " (milliseconds): one transaction per batch, not per token, since every collaborator's"
        " editor re-renders on each update",
        21,
        ge=1,
        le=5000,
    )
    collab_awareness_flush_ms: int = setting(
        50,
        "Redis mode: a document's awareness changes (carets, selections, who is in it, the AI's"
        " state) go to the other processes at most this often per process (milliseconds),"
        " the latest state of each client that changed meanwhile in one update; 0 sends them"
        " on the next event-loop turn. Carets on other processes lag by up to this much",
        21,
        ge=0,
        le=5000,
    )
    collab_ai_name: str = setting(
        "AI", "the name collaborators see for the AI peer (its awareness `user.name`)", 21, min_length=1
    )
    collab_ai_color: str = setting("#7c3aed", "the AI peer's caret colour (awareness `user.color`)", 21)
    collab_sqlite_open_documents: int = setting(
        256,
        "SQLite store: documents whose database connection stays open; past it the least"
        " recently used one is closed",
        21,
        ge=1,
    )

    # Rate limits (token buckets: a rate per second and a burst).
    trusted_proxies: Annotated[list[str], NoDecode] = setting(
        [],
        "comma-separated addresses or networks (e.g. `127.0.0.1,10.0.0.0/8`) whose"
        " `X-Forwarded-For` names the client; otherwise the peer is the client",
        12,
        shown="",
    )
    session_rate_per_user: float = setting(
        1.0, "new sessions per second per user (429 with `Retry-After` above)", 12, ge=0
    )
    session_burst_per_user: float = setting(30.0, "burst of new sessions per user", 12, ge=1)
    session_rate_per_address: float = setting(5.0, "new sessions per second per client address", 12, ge=0)
    session_burst_per_address: float = setting(100.0, "burst of new sessions per client address", 12, ge=1)
    socket_message_rate: float = setting(
        50.0,
        "Socket.IO or WebSocket messages per second per connection; over it an event is acked"
        " `{ok: false, error}` and does nothing",
        12,
        ge=0,
    )
    socket_message_burst: float = setting(200.0, "burst of messages per connection", 12, ge=1)
    max_connections_per_address: int = setting(
        1000,
        "open connections (WebSockets, SSE streams, Engine.IO sessions) per client address (429 above)",
        12,
        ge=1,
    )
    handshake_rate_per_address: float = setting(
        20.0, "new Socket.IO connections per second per client address (429 above)", 12, ge=0
    )
    handshake_burst_per_address: float = setting(
        200.0, "burst of new Socket.IO connections per client address", 12, ge=1
    )

    # Access (off unless a secret or a public key is set; see docs/protocol.md "Access").
    auth_jwt_secret: SecretStr | None = setting(
        None, "turns access control on: HS256 bearer tokens signed with this secret", 12
    )
    auth_jwt_public_key: SecretStr | None = setting(
        None, "instead: a PEM public key, for RS256/ES256 tokens", 12
    )
    auth_jwt_audience: str | None = setting(None, "when set, tokens must carry this `aud`", 12)
    auth_jwt_issuer: str | None = setting(None, "when set, tokens must carry this `iss`", 12)
    auth_jwt_leeway: float = setting(30.0, "seconds of clock skew allowed on `exp`", 12, ge=0)

    # Several processes.
    redis_url: str | None = setting(
        None,
        "run several processes as one server on this Redis (or Valkey); unset, everything stays"
        " in this process's memory (docs/scaling.md)",
        10,
    )
    owner_lease_seconds: float = setting(
        5.0,
        "Redis mode: a process that stops renewing its lease for this long is taken for dead;"
        " another process takes its live streams over (resumable providers) or ends them with"
        " `owner_lost`",
        10,
        gt=0,
    )
    owner_lost_after: float = setting(
        600.0,
        "Redis mode: seconds a stream whose process died may wait for another process to take"
        " it over; later it ends with `owner_lost`",
        11,
        gt=0,
    )
    redis_timeout: float = setting(
        3.0,
        "Redis mode: seconds one Redis call may take before the store counts as unavailable"
        " (HTTP 503, ack `{ok: false}`)",
        10,
        gt=0,
    )
    redis_sentinels: Annotated[list[str], NoDecode] = setting(
        [],
        "Redis mode through Redis Sentinel instead of `REDIS_URL`: comma-separated `host:port`"
        " of the Sentinels; the processes write to the primary they name for"
        " `REDIS_SENTINEL_MASTER` and follow it through failovers (docs/scaling.md, High"
        " availability)",
        22,
        shown="",
    )
    redis_sentinel_master: str | None = setting(
        None, "the name the Sentinels monitor the primary under; required with `REDIS_SENTINELS`", 22
    )
    redis_sentinel_password: SecretStr | None = setting(
        None, "password of the Sentinels (their `requirepass`); never logged", 22
    )
    redis_password: SecretStr | None = setting(
        None,
        "password of the Redis servers the Sentinels name (with `REDIS_URL`, the URL carries"
        " it); never logged",
        22,
    )
    redis_cluster_url: str | None = setting(
        None,
        "Redis mode on a Redis Cluster (or Valkey Cluster) instead of `REDIS_URL`: the"
        " `redis://` (or `rediss://`) URL of one of its nodes, or several comma-separated in"
        " case one is down at start; the others are found from them. The first URL's password,"
        " else `REDIS_PASSWORD`, is every node's (docs/scaling.md, Redis Cluster)",
        22,
    )
    redis_primary_check_interval: float = setting(
        1.0,
        "Sentinel mode: seconds between two asks of the Sentinels which server is the primary"
        " (besides listening for `+switch-master`); after a failover no write goes to the old"
        " primary for longer. Cluster mode: seconds between two looks at which primary serves"
        " which slots",
        22,
        gt=0,
    )
    redis_wait_replicas: int = setting(
        0,
        "Redis mode: after each batch of log writes, wait (Redis `WAIT`) until this many"
        " replicas have it before the viewers get it, so a failover rarely loses it; 0: do"
        " not wait. When fewer answer within `REDIS_WAIT_TIMEOUT_MS` the batch is delivered"
        " anyway and a warning logged",
        22,
        ge=0,
    )
    redis_wait_timeout_ms: int = setting(
        100, "Redis mode: the longest one `WAIT` of `REDIS_WAIT_REPLICAS` holds a batch, ms", 22, ge=1
    )
    shutdown_timeout: float = setting(
        5.0,
        "seconds from SIGTERM/SIGINT to exit, however busy the process: live streams end with"
        " `shutdown` (or are handed over in Redis mode) while the listener still takes"
        " connections; what is not done in time is dropped",
        2,
        gt=0,
    )

    @field_validator("cors_origins", "trusted_proxies", "redis_sentinels", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @field_validator("redis_sentinels")
    @classmethod
    def _check_sentinels(cls, value: list[str]) -> list[str]:
        for entry in value:
            host, _, port = entry.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"a Sentinel is host:port, not {entry!r}")
        return value

    @field_validator("redis_cluster_url")
    @classmethod
    def _check_cluster_url(cls, value: str | None) -> str | None:
        for url in (value or "").split(","):
            if url.strip() and not url.strip().startswith(("redis://", "rediss://")):
                # Not the value itself: a URL may carry a password.
                raise ValueError("REDIS_CLUSTER_URL holds redis:// or rediss:// URLs, comma-separated")
        return value

    @model_validator(mode="after")
    def _sentinel_master_named(self) -> Settings:
        if self.redis_sentinels and not self.redis_sentinel_master:
            raise ValueError("REDIS_SENTINELS needs REDIS_SENTINEL_MASTER (the primary's name)")
        if sum(map(bool, (self.redis_url, self.redis_sentinels, self.redis_cluster_url))) > 1:
            raise ValueError("set one of REDIS_URL, REDIS_SENTINELS and REDIS_CLUSTER_URL")
        return self

    @property
    def redis_mode(self) -> bool:
        """Several processes as one server: ``REDIS_URL``, ``REDIS_SENTINELS`` or
        ``REDIS_CLUSTER_URL`` is set."""
        return bool(self.redis_url or self.redis_sentinels or self.redis_cluster_url)

    def provider_settings(self) -> ProviderSettings:
        """The subset the provider factories need, with secrets unwrapped."""
        return ProviderSettings(
            openai_api_key=self.openai_api_key.get_secret_value() if self.openai_api_key else None,
            openai_base_url=self.openai_base_url,
            openai_model=self.openai_model,
            openai_background=self.openai_background,
            anthropic_api_key=(self.anthropic_api_key.get_secret_value() if self.anthropic_api_key else None),
            anthropic_base_url=self.anthropic_base_url,
            anthropic_model=self.anthropic_model,
            anthropic_max_tokens=self.anthropic_max_tokens,
            request_timeout=self.provider_timeout,
            max_retries=self.provider_max_retries,
            demo_tokens_per_second=self.demo_tokens_per_second,
        )

    def resolved_default_provider(self) -> str:
        return self.default_provider or default_provider_name(self.provider_settings())
