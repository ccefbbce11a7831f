"""Typed settings read from the environment and a ``.env`` file.

Every limit the server enforces is named here with a safe default; the env var is the
field name in upper case (``MAX_BODY_BYTES``), and the CLI flags reuse the same names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
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


class Settings(BaseSettings):
    """Server configuration; see the README's configuration table."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(3001, ge=0, le=65535)
    #: Browser origins allowed besides the server's own (``*``: any). The default is Vite's
    #: dev server, for the frontend's ``npm run dev``.
    cors_origins: Annotated[list[str], NoDecode] = ["http://localhost:5173"]
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: ``text`` (human-readable lines) or ``json`` (one JSON object per line).
    log_format: Literal["text", "json"] = "text"
    static_dir: Path = Field(default_factory=_default_static_dir)

    # Providers.
    default_provider: str | None = None
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    openai_model: str = "gpt-5.4-mini"
    openai_background: bool = False
    anthropic_api_key: SecretStr | None = None
    anthropic_base_url: str | None = None
    anthropic_model: str = "claude-sonnet-4-6"
    anthropic_max_tokens: int = Field(4000, ge=1)
    provider_timeout: float = Field(60.0, gt=0)
    provider_max_retries: int = Field(2, ge=0)
    first_token_timeout: float = Field(30.0, gt=0)
    token_idle_timeout: float = Field(30.0, gt=0)
    demo_tokens_per_second: float = Field(40.0, ge=0)

    # Limits.
    max_body_bytes: int = Field(256 * 1024, ge=1024)
    max_prompt_chars: int = Field(100_000, ge=1)
    max_tokens_limit: int = Field(32_000, ge=1)
    max_sessions_per_user: int = Field(20, ge=1)
    max_viewers_per_session: int = Field(32, ge=1)
    max_socket_message_bytes: int = Field(2 * 1024 * 1024, ge=1024)
    session_ttl: float = Field(3600.0, gt=0)
    session_idle_timeout: float = Field(900.0, gt=0)
    viewer_max_lag: int = Field(64, ge=1)
    viewer_stall_timeout: float = Field(10.0, gt=0)
    max_pending_chars: int = Field(64 * 1024, ge=1)
    coalesce_ms: float = Field(5.0, ge=0, le=1000)
    coalesce_max_ms: float = Field(50.0, ge=0, le=1000)
    keepalive_timeout: float = Field(75.0, gt=0)
    socketio_direct_websocket: bool = True
    socketio_ping_interval: float = Field(25.0, gt=0)
    socketio_ping_timeout: float = Field(20.0, gt=0)
    sse_keepalive_interval: float = Field(15.0, gt=0)
    chunks_page_limit: int = Field(1000, ge=1, le=100_000)
    sweep_interval: float = Field(30.0, gt=0)
    #: Bytes of chunk text all sessions' logs of this process may hold; past it new
    #: sessions get 503 and ``/readyz`` says not ready. Default: a quarter of the memory.
    max_log_bytes: int = Field(default_factory=lambda: _memory_share(0.25), ge=1024)
    #: A connection that completes no Socket.IO / Engine.IO handshake by then is closed.
    handshake_timeout: float = Field(10.0, gt=0)
    #: Bytes all direct-path connections together may hold in unfinished (fragmented)
    #: WebSocket messages; a connection that would pass it is closed (1009).
    max_partial_message_bytes_total: int = Field(64 * 1024 * 1024, ge=1024)
    #: Engine.IO/Socket.IO packets one direct-path connection may have handled per event
    #: loop turn; the rest wait for the next turn (reading pauses meanwhile).
    max_packets_per_turn: int = Field(32, ge=1)

    # Rate limits (token buckets: a rate per second and a burst).
    #: Peers whose ``X-Forwarded-For`` names the client (addresses or networks, comma-separated).
    trusted_proxies: Annotated[list[str], NoDecode] = []
    session_rate_per_user: float = Field(1.0, ge=0)
    session_burst_per_user: float = Field(30.0, ge=1)
    session_rate_per_address: float = Field(5.0, ge=0)
    session_burst_per_address: float = Field(100.0, ge=1)
    socket_message_rate: float = Field(50.0, ge=0)
    socket_message_burst: float = Field(200.0, ge=1)
    max_connections_per_address: int = Field(1000, ge=1)
    handshake_rate_per_address: float = Field(20.0, ge=0)
    handshake_burst_per_address: float = Field(200.0, ge=1)

    # Access (off unless a secret or a public key is set; see docs/protocol.md "Access").
    auth_jwt_secret: SecretStr | None = None
    auth_jwt_public_key: SecretStr | None = None
    auth_jwt_audience: str | None = None
    auth_jwt_issuer: str | None = None
    auth_jwt_leeway: float = Field(30.0, ge=0)

    # Several processes.
    redis_url: str | None = None
    owner_lease_seconds: float = Field(5.0, gt=0)
    owner_lost_after: float = Field(600.0, gt=0)
    redis_timeout: float = Field(3.0, gt=0)
    shutdown_timeout: float = Field(5.0, gt=0)

    @field_validator("cors_origins", "trusted_proxies", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

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
