"""Operations over HTTP: ``GET /readyz``, ``GET /metrics`` and the request id of streamed
responses (``docs/operations.md``; every other response gets it from
:func:`server.transports.http_api.edge_middleware`). ``GET /healthz`` (liveness) is in
``http_api``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from server.guards.logs import REQUEST_ID
from server.transports.http_api import (
    REQUEST_ID_HEADER,
    error_response,
    json_response,
    manager_key,
    settings_key,
)

#: Set once shutdown has begun: ``/readyz`` answers 503 from then on.
draining_key = web.AppKey("draining", asyncio.Event)
#: What ``GET /metrics`` reads (:func:`server.guards.metrics.build_registry`).
registry_key = web.AppKey("metrics_registry", CollectorRegistry)


async def _request_id_on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Streamed responses (SSE, WebSocket upgrades) are prepared inside the handler."""
    request_id = REQUEST_ID.get()
    if request_id is not None and REQUEST_ID_HEADER not in response.headers:
        response.headers[REQUEST_ID_HEADER] = request_id


async def not_ready(app: web.Application) -> str | None:
    """Why this process cannot take sessions now, or ``None`` when it can."""
    if app[draining_key].is_set():
        return "The server is shutting down"
    manager = app[manager_key]
    if manager.log_budget.full:
        return "The session logs hold MAX_LOG_BYTES: no new sessions until some expire"
    cluster = manager.cluster
    if cluster is None:
        return None
    return await cluster.not_ready(app[settings_key].redis_timeout)


async def readyz(request: web.Request) -> web.Response:
    """``GET /readyz``: 200 when this process can take sessions, else 503 with the reason."""
    reason = await not_ready(request.app)
    if reason is not None:
        return error_response(503, reason)
    return json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    """``GET /metrics``: the Prometheus text format (OpenMetrics when the scraper asks)."""
    encoder: Callable[[Any], bytes]
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = encoder(request.app[registry_key])
    return web.Response(body=body, headers={"Content-Type": content_type})


def add_routes(app: web.Application, registry: CollectorRegistry) -> None:
    app[draining_key] = asyncio.Event()
    app[registry_key] = registry
    app.on_response_prepare.append(_request_id_on_prepare)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
