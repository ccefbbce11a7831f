"""Failures every layer may meet, defined where no optional dependency is needed."""

from __future__ import annotations


class StoreUnavailable(Exception):
    """The shared store (Redis) could not be reached: HTTP 503, ack ``{ok: false, error}``."""
