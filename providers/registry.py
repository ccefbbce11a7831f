"""Maps a provider name to its factory: adding a provider is one entry here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from providers.base import AIProvider, ProviderSettings


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """How to build one provider and how to tell whether it is configured."""

    name: str
    build: Callable[[ProviderSettings], AIProvider]
    default_model: Callable[[ProviderSettings], str]
    #: ``None`` when usable, else a message that says what to set.
    missing: Callable[[ProviderSettings], str | None]


def _build_demo(settings: ProviderSettings) -> AIProvider:
    from providers.demo import DemoProvider

    return DemoProvider(tokens_per_second=settings.demo_tokens_per_second)


def _build_openai(settings: ProviderSettings) -> AIProvider:
    from providers.openai import OpenAIStreamingProvider

    return OpenAIStreamingProvider(settings)


def _build_anthropic(settings: ProviderSettings) -> AIProvider:
    from providers.anthropic import AnthropicStreamingProvider

    return AnthropicStreamingProvider(settings)


def _openai_missing(settings: ProviderSettings) -> str | None:
    if settings.openai_api_key or settings.openai_base_url:
        return None
    return "Provider 'openai' is not configured: set OPENAI_API_KEY (or OPENAI_BASE_URL for a local server)"


def _anthropic_missing(settings: ProviderSettings) -> str | None:
    if settings.anthropic_api_key:
        return None
    return "Provider 'anthropic' is not configured: set ANTHROPIC_API_KEY"


PROVIDERS: dict[str, ProviderSpec] = {
    "demo": ProviderSpec("demo", _build_demo, lambda s: "demo", lambda s: None),
    "openai": ProviderSpec("openai", _build_openai, lambda s: s.openai_model, _openai_missing),
    "anthropic": ProviderSpec("anthropic", _build_anthropic, lambda s: s.anthropic_model, _anthropic_missing),
}


def default_provider_name(settings: ProviderSettings) -> str:
    """``openai`` when its key (or a compatible server's URL) is set, else ``anthropic``
    when its key is set, else ``demo``."""
    if settings.openai_api_key or settings.openai_base_url:
        return "openai"
    if settings.anthropic_api_key:
        return "anthropic"
    return "demo"
