"""Turns a provider's failures into :class:`ProviderError`: one set of codes, safe messages.

Both SDKs raise their own exception types; each provider module catches them and asks an
:class:`ErrorTranslator` for the :class:`ProviderError` to raise instead. The messages are
shown to users, so they never carry the API key or the prompt, even when the upstream
error text echoes them.
"""

from __future__ import annotations

import logging
import re
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio
import httpx2

from providers.base import ErrorCode, ProviderError

log = logging.getLogger(__name__)

REDACTED = "[redacted]"
#: Anything shaped like an OpenAI or Anthropic key (``sk-...``, ``sk-proj-...``, ``sk-ant-...``).
_KEY_LIKE = re.compile(r"sk-[A-Za-z0-9_*-]{6,}")
#: A prompt shorter than this is too likely to match ordinary words to be redacted as a whole.
_MIN_PROMPT_ECHO = 8
_MAX_DETAIL = 300

#: What the transport raises when a connection fails or drops (httpx2 does not wrap all of it).
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (httpx2.TransportError, anyio.EndOfStream, ssl.SSLError)


def redact(text: str, *, api_key: str | None, prompt: str | None) -> str:
    """``text`` on one line, without the key, the prompt or anything key-shaped, cut to a sane length."""
    if api_key:
        text = text.replace(api_key, REDACTED)
    if prompt and len(prompt.strip()) >= _MIN_PROMPT_ECHO:
        text = text.replace(prompt, REDACTED)
    text = " ".join(_KEY_LIKE.sub(REDACTED, text).split())
    if len(text) > _MAX_DETAIL:
        text = text[: _MAX_DETAIL - 1] + "…"
    return text


def origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: no credentials, path or query."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme}://{host}{port}"


def code_for_status(status: int) -> ErrorCode:
    """The error code of an HTTP error status from a provider."""
    if status in (401, 403):
        return "auth"
    if status == 429:
        return "rate_limited"
    if status == 408:
        return "timeout"
    if status >= 500:
        return "upstream"
    return "bad_request"


@dataclass(frozen=True, slots=True)
class ErrorTranslator:
    """Builds the :class:`ProviderError` for one request (knows its label, model and secrets)."""

    #: How users know the provider: ``"OpenAI"``, ``"Anthropic"``.
    label: str
    #: Where requests go, shown (as an origin only) when it cannot be reached.
    base_url: str
    model: str
    api_key: str | None
    prompt: str
    timeout: float

    def detail(self, text: str | None) -> str:
        return redact(text or "", api_key=self.api_key, prompt=self.prompt) or "no details given"

    def status(self, status: int, message: str | None, *, model_error: bool = False) -> ProviderError:
        """An HTTP error answer; ``model_error`` when the upstream blamed the model name."""
        code = code_for_status(status)
        detail = self.detail(message)
        if code == "auth":
            what = "rejected the API key" if status == 401 else "refused access"
            text = f"{self.label} {what} (HTTP {status}): {detail}"
        elif code == "rate_limited":
            text = f"{self.label} is rate limiting requests (HTTP 429): {detail}"
        elif code == "bad_request" and (model_error or status == 404):
            text = f"The model '{self.model}' was rejected by {self.label}: {detail}"
        elif code == "bad_request":
            text = f"{self.label} rejected the request (HTTP {status}): {detail}"
        else:
            text = f"{self.label} failed (HTTP {status}): {detail}"
        return ProviderError(code, text)

    def stream_error(self, code: ErrorCode, message: str | None) -> ProviderError:
        """An error the upstream reported inside an already started stream."""
        return ProviderError(code, f"{self.label} reported an error mid-stream: {self.detail(message)}")

    def timed_out(self) -> ProviderError:
        text = f"{self.label} timed out: nothing received for {self.timeout:g} seconds"
        return ProviderError("timeout", text)

    def connection(self, *, streaming: bool) -> ProviderError:
        """The connection failed before an answer (``streaming=False``) or dropped during one."""
        if streaming:
            return ProviderError("upstream", f"The connection to {self.label} was lost mid-stream")
        return ProviderError("upstream", f"Could not connect to {self.label} at {origin(self.base_url)}")

    def incomplete(self) -> ProviderError:
        return ProviderError("upstream", f"The answer from {self.label} ended before it was complete")

    def malformed(self) -> ProviderError:
        return ProviderError("upstream", f"{self.label} sent a response that could not be read")

    def unexpected(self, exc: Exception) -> ProviderError:
        """Our own bug, not the provider's failure: logged with its traceback."""
        log.error("unexpected error in the %s provider", self.label, exc_info=exc)
        return ProviderError("internal", f"Unexpected {type(exc).__name__} in the {self.label} provider")
