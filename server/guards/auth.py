"""Who may do what: JWT bearer tokens (``AUTH_JWT_*``) and the origins browsers may call
from (``CORS_ORIGINS``). PROTOCOL.md, "Access".

Tokens are checked by PyJWT. The token's ``sub`` is the user; a session belongs to the
user who created it, and only that user may start, pause, resume or cancel it. Viewing is
for the owner and for the users the app lets watch: a token whose ``view`` claim lists the
owner's user id may view that owner's sessions (the app's backend, which mints tokens,
decides who watches whom). A collaborative document may be joined, and written into by a
session's ``target``, with a token whose ``docs`` claim lists its id or a prefix of it
ending in ``*``. With no secret and no public key set, access is open, as in ``make dev``.

Tokens never appear in a log line, an error message or a metric.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt

from server.settings import Settings

log = logging.getLogger(__name__)

UNAUTHORIZED = "Unauthorized"
FORBIDDEN = "Forbidden"

#: Signature algorithms by kind of key: a shared secret, or a public key (PEM).
SECRET_ALGORITHMS = ["HS256"]
PUBLIC_KEY_ALGORITHMS = ["RS256", "ES256"]


class Unauthorized(Exception):
    """No token, or one that does not verify (HTTP 401, Socket.IO ``connect_error``)."""


@dataclass(frozen=True, slots=True)
class Identity:
    """The verified bearer of a token."""

    user: str
    #: Owners whose sessions this bearer may view (the ``view`` claim).
    views: frozenset[str] = frozenset()
    #: Collaborative documents this bearer may edit (the ``docs`` claim): ids, and
    #: prefixes ending in ``*``.
    docs: frozenset[str] = frozenset()


class Authenticator:
    """Verifies bearer tokens; ``enabled`` is false when no key is configured."""

    def __init__(self, settings: Settings) -> None:
        self._key: str | None = None
        self._algorithms: list[str] = []
        if settings.auth_jwt_public_key is not None:
            self._key = settings.auth_jwt_public_key.get_secret_value()
            self._algorithms = PUBLIC_KEY_ALGORITHMS
        elif settings.auth_jwt_secret is not None:
            self._key = settings.auth_jwt_secret.get_secret_value()
            self._algorithms = SECRET_ALGORITHMS
        self._audience = settings.auth_jwt_audience
        self._issuer = settings.auth_jwt_issuer
        self._leeway = settings.auth_jwt_leeway

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def verify(self, token: object) -> Identity | None:
        """The identity in ``token``; ``None`` when access is open. Raises
        :class:`Unauthorized` when a token is needed and this one is missing or invalid."""
        if self._key is None:
            return None
        if not isinstance(token, str) or not token:
            raise Unauthorized(UNAUTHORIZED)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["sub", "exp"], "verify_aud": self._audience is not None},
            )
        except jwt.PyJWTError as exc:
            # The reason only, never the token: "Signature has expired", "Invalid audience"...
            log.debug("token refused: %s", type(exc).__name__)
            raise Unauthorized(UNAUTHORIZED) from None
        user = claims.get("sub")
        if not isinstance(user, str) or not user:
            raise Unauthorized(UNAUTHORIZED)
        return Identity(user, _strings(claims.get("view")), _strings(claims.get("docs")))


def _strings(claim: object) -> frozenset[str]:
    """A claim that lists names: its strings (anything else in it is ignored)."""
    return frozenset(v for v in claim if isinstance(v, str)) if isinstance(claim, list) else frozenset()


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def may_view(identity: Identity | None, owner: str) -> bool:
    """Whether ``identity`` may watch a session of ``owner`` (anyone, when access is open)."""
    return identity is None or identity.user == owner or owner in identity.views


def may_control(identity: Identity | None, owner: str) -> bool:
    """Whether ``identity`` may start, pause, resume or cancel a session of ``owner``."""
    return identity is None or identity.user == owner


def may_edit_document(identity: Identity | None, document_id: str) -> bool:
    """Whether ``identity`` may join and write the collaborative document ``document_id``:
    its ``docs`` claim lists the id, or a prefix of it ending in ``*`` (anyone, when access
    is open)."""
    if identity is None or document_id in identity.docs:
        return True
    return any(granted.endswith("*") and document_id.startswith(granted[:-1]) for granted in identity.docs)


class OriginPolicy:
    """Which browser origins may call the server: the server's own origin always, plus
    ``CORS_ORIGINS`` (``*``: any). A request without ``Origin`` is not a browser's."""

    def __init__(self, origins: Iterable[str]) -> None:
        listed = [origin.rstrip("/") for origin in origins]
        self.any = "*" in listed
        self.listed = frozenset(listed)

    def allows(self, origin: str | None, host: str | None) -> bool:
        if origin is None or self.any or origin in self.listed:
            return True
        # The page the server itself serves (its own demo page): same host and port.
        return host is not None and urlsplit(origin).netloc.lower() == host.lower()
