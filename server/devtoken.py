"""``python -m server.devtoken``: mint a short-lived token for trying access control locally.

It signs with ``AUTH_JWT_SECRET`` (from the environment or ``.env``), as an app's own
backend would for its users. For development only: production tokens come from the app.

    AUTH_JWT_SECRET=dev-secret-at-least-32-bytes-long!! python -m server.devtoken --sub me
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

import jwt

from server.settings import Settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.devtoken", description=__doc__.splitlines()[0])
    parser.add_argument("--sub", default="dev-user", help="the user (default dev-user)")
    parser.add_argument("--view", default="", help="comma-separated users whose sessions this token may view")
    parser.add_argument("--minutes", type=float, default=60, help="lifetime (default 60)")
    args = parser.parse_args(argv)
    settings = Settings()
    if settings.auth_jwt_secret is None:
        print("Set AUTH_JWT_SECRET first (the same value the server uses).", file=sys.stderr)
        return 2
    claims: dict[str, Any] = {"sub": args.sub, "exp": int(time.time() + args.minutes * 60)}
    if args.view:
        claims["view"] = [user for user in args.view.split(",") if user]
    if settings.auth_jwt_audience:
        claims["aud"] = settings.auth_jwt_audience
    if settings.auth_jwt_issuer:
        claims["iss"] = settings.auth_jwt_issuer
    print(jwt.encode(claims, settings.auth_jwt_secret.get_secret_value(), algorithm="HS256"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
