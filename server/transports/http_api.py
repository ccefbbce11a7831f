"""HTTP routes: create, start, inspect and cancel sessions; health; what every request goes
through first (request ids, CORS, JSON errors, upgrade tracking: :func:`edge_middleware`)
and the limits every connection is counted against (:mod:`server.guards.ratelimit`)."""

from __future__ import annotations

import asyncio
import base64
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import orjson
from aiohttp import web
from prometheus_client import Counter
from pydantic import BaseModel, ValidationError

from providers.base import StreamConfig
from server.collab.writer import AnchorError, decode_anchor
from server.core.commands import PERSIST_WAIT, Action, session_command, start_command
from server.core.errors import StoreUnavailable
from server.core.manager import ProviderUnavailable, StreamingSessionManager, TooManySessions, Unavailable
from server.core.models import (
    CreateSessionIn,
    Resume,
    StartIn,
    StreamConfigIn,
    TargetIn,
    parse_resume,
    parse_session_id,
)
from server.core.prompting import Earlier, RequestError, build_conversation
from server.core.session_view import SessionState, SessionView, short_id
from server.core.sessions import SessionFull, StreamingSession
from server.guards.auth import (
    FORBIDDEN,
    Authenticator,
    Identity,
    OriginPolicy,
    Unauthorized,
    bearer_token,
    may_control,
    may_edit_document,
    may_view,
)
from server.guards.logs import REQUEST_ID, SESSION, new_request_id, well_formed_request_id
from server.guards.metrics import SESSIONS_BY_ACTION
from server.guards.ratelimit import AddressCounter, limits_key
from server.settings import Settings

log = logging.getLogger(__name__)

manager_key = web.AppKey("manager", StreamingSessionManager)
settings_key = web.AppKey("settings", Settings)
authenticator_key = web.AppKey("authenticator", Authenticator)

Model = TypeVar("Model", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: What ``web.Response(text=..., content_type="application/json")`` would say.
JSON_CONTENT_TYPE = "application/json; charset=utf-8"
#: Where python-socketio serves Engine.IO (``sio.attach(app)``'s default).
ENGINEIO_PATH = "/socket.io/"
#: ``Retry-After`` of a connection refused for its address's count: connections have no
#: rate to compute a wait from, and a refusal costs the server next to nothing.
CONNECTION_RETRY_AFTER = 1.0
#: The longest ``Retry-After`` announced (a rate of 0 would make it infinite).
MAX_RETRY_AFTER = 3600.0


class ApiError(Exception):
    """An expected failure: answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def json_response(body: object, status: int = 200) -> web.Response:
    """A JSON response encoded with orjson (``web.json_response`` uses the stdlib)."""
    return web.Response(body=orjson.dumps(body), status=status, headers={"Content-Type": JSON_CONTENT_TYPE})


def error_response(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status=status)


def too_many(message: str, retry_after: float) -> ApiError:
    """429 with ``Retry-After`` in whole seconds (rounded up, at least 1)."""
    seconds = max(1, math.ceil(min(retry_after, MAX_RETRY_AFTER)))
    return ApiError(429, f"{message}: retry in {seconds} s", {"Retry-After": str(seconds)})


def client_address(request: web.Request) -> str:
    """The client's address: the peer, or what a trusted proxy says (``TRUSTED_PROXIES``)."""
    proxies = request.app[limits_key].proxies
    # Every X-Forwarded-For line, joined as one list (a proxy may add a line of its own).
    forwarded = ", ".join(request.headers.getall("X-Forwarded-For", ())) or None
    return proxies.client_address(request.remote, forwarded)


class ConnectionSlot:
    """One open connection counted against its client address (``MAX_CONNECTIONS_PER_ADDRESS``);
    :meth:`release` gives it back, once however often it is called."""

    __slots__ = ("_counter", "address")

    def __init__(self, counter: AddressCounter, address: str) -> None:
        self._counter: AddressCounter | None = counter
        self.address = address

    def release(self) -> None:
        if self._counter is not None:
            self._counter.release(self.address)
            self._counter = None


def acquire_connection(request: web.Request) -> ConnectionSlot:
    """Count the connection ``request`` opens against its client address; 429 at the limit.
    Called before the response is prepared (upgraded, handshaken), so that a refusal is an
    ordinary HTTP answer."""
    address = client_address(request)
    counter = request.app[limits_key].connections
    if not counter.acquire(address):
        raise too_many(
            f"Too many open connections from this address (MAX_CONNECTIONS_PER_ADDRESS {counter.limit})",
            CONNECTION_RETRY_AFTER,
        )
    return ConnectionSlot(counter, address)


#: The slot an Engine.IO handshake holds: taken (popped) by the Engine.IO session it opens,
#: which releases it when it ends (:class:`server.transports.socket_api.SocketAPI`), else released by
#: :func:`edge_middleware` once the request is answered.
engineio_slot_key = web.RequestKey("engineio_slot", ConnectionSlot)
#: Transports of upgraded (WebSocket) requests still being handled, aborted on shutdown.
upgrades_key = web.AppKey("upgrades", set[asyncio.Transport])

REQUEST_ID_HEADER = "X-Request-ID"


def edge_middleware(policy: OriginPolicy) -> Callable[..., Awaitable[web.StreamResponse]]:
    """What every HTTP request goes through before its route, as one middleware (each
    layer of aiohttp's chain costs a call and a coroutine per request). In order:

    - its request id: its well-formed ``X-Request-ID``, else a new one, which its log
      lines carry and its response echoes; lines about a route's session carry that
      session's short id (``docs/operations.md``);
    - CORS: requests from origins ``policy`` does not allow are refused (403, before
      anything runs: HTTP, SSE, WebSocket upgrades and python-socketio alike), the
      allowed ones' preflights answered and their responses marked;
    - WebSocket upgrades: remembered (:data:`upgrades_key`) so that shutdown can drop
      them, and offered no compression (frames are small JSON events: permessage-deflate
      costs CPU on each and saves little);
    - JSON errors: every error is ``{"error": ...}``; a 500 never leaks a trace or a
      secret;
    - new Engine.IO sessions of python-socketio (a ``GET /socket.io/`` without ``sid``,
      over long-polling or WebSocket) are limited per client address, in rate
      (``HANDSHAKE_RATE_PER_ADDRESS``) and in number open (``MAX_CONNECTIONS_PER_ADDRESS``):
      429 (a JSON error, with CORS) before python-engineio builds anything.
    """
    any_origin = policy.any

    @web.middleware
    async def edge(request: web.Request, handler: Handler) -> web.StreamResponse:
        headers = request.headers
        incoming = headers.get(REQUEST_ID_HEADER)
        request_id = incoming if well_formed_request_id(incoming) else new_request_id()
        session_id = parse_session_id(request.match_info.get("session_id"))
        id_token = REQUEST_ID.set(request_id)
        session_token = SESSION.set(short_id(session_id) if session_id else None)
        try:
            origin = headers.get("Origin")
            if origin is not None and not policy.allows(origin, request.host):
                return _tagged(error_response(403, "Origin not allowed"), request_id)
            if (
                origin is not None
                and request.method == "OPTIONS"
                and "Access-Control-Request-Method" in headers
            ):
                response: web.StreamResponse = _preflight(headers)
            else:
                transport = request.transport
                upgrade = headers.get("Upgrade")
                upgrades = None
                if transport is not None and upgrade is not None and upgrade.lower() == "websocket":
                    if "Sec-WebSocket-Extensions" in headers:
                        stripped = headers.copy()
                        del stripped["Sec-WebSocket-Extensions"]
                        request = request.clone(headers=stripped)
                    upgrades = request.app[upgrades_key]
                    upgrades.add(transport)
                try:
                    if request.method == "GET" and request.path == ENGINEIO_PATH:
                        response = await _engineio_handshake(request, handler)
                    else:
                        response = await handler(request)
                except Exception as exc:
                    response = _error_answer(request, exc)
                finally:
                    if upgrades is not None:
                        upgrades.discard(transport)
            if origin is not None and not response.prepared:
                response.headers["Access-Control-Allow-Origin"] = "*" if any_origin else origin
                response.headers["Vary"] = "Origin"
        except web.HTTPException as exc:
            exc.headers[REQUEST_ID_HEADER] = request_id
            raise
        finally:
            SESSION.reset(session_token)
            REQUEST_ID.reset(id_token)
        return _tagged(response, request_id)

    return edge


def _tagged(response: web.StreamResponse, request_id: str) -> web.StreamResponse:
    """The response echoes the request id (one prepared inside its handler, SSE or a
    WebSocket upgrade, got it then: ``server.transports.ops_api``)."""
    if not response.prepared:
        response.headers[REQUEST_ID_HEADER] = request_id
    return response


def _preflight(headers: Mapping[str, str]) -> web.Response:
    response = web.Response(status=204)
    response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
    response.headers["Access-Control-Allow-Headers"] = headers.get(
        "Access-Control-Request-Headers", "Content-Type"
    )
    response.headers["Access-Control-Max-Age"] = "600"
    return response


def _error_answer(request: web.Request, exc: Exception) -> web.StreamResponse:
    """An error as JSON (``HTTPException`` below 400, a redirect, is raised again)."""
    if isinstance(exc, ApiError):
        response = error_response(exc.status, exc.message)
        response.headers.update(exc.headers)
        return response
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        response = error_response(exc.status, exc.reason)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    if isinstance(exc, StoreUnavailable):
        return error_response(503, str(exc))
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    return error_response(500, "Internal server error")


async def _engineio_handshake(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A request to python-socketio: a new Engine.IO session is limited per address."""
    # A blank ``sid=`` is no sid to python-engineio (it parses with parse_qs): a handshake.
    if request.query.get("sid"):
        return await handler(request)
    wait = request.app[limits_key].handshakes_per_address.take(client_address(request))
    if wait:
        raise too_many(
            "Too many new Socket.IO connections from this address (HANDSHAKE_RATE_PER_ADDRESS)", wait
        )
    request[engineio_slot_key] = acquire_connection(request)
    try:
        return await handler(request)
    finally:
        slot = request.pop(engineio_slot_key, None)
        if slot is not None:
            slot.release()


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "Invalid request: " + "; ".join(parts)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"Request body too large (limit {limit} bytes)")


async def read_body(request: web.Request, model: type[Model]) -> Model:
    """Parse and validate a JSON body, raising the right 4xx for each way it can be bad."""
    limit = request.app[settings_key].max_body_bytes
    length = request.content_length
    if length is not None and length > limit:
        raise _too_large(limit)
    raw = await request.content.read(limit + 1)
    if len(raw) > limit:
        raise _too_large(limit)
    try:
        data: Any = orjson.loads(raw) if raw.strip() else None
    except ValueError:
        raise ApiError(400, "Invalid JSON body") from None
    if not isinstance(data, dict):
        raise ApiError(400, "The body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(400, _describe(exc)) from None


def identity_of(request: web.Request, *, query_token: bool = False) -> Identity | None:
    """The caller's verified identity (``None`` when access is open); 401 without a valid
    ``Authorization: Bearer`` token (or ``?token=``, for the plain WebSocket and SSE)."""
    token = bearer_token(request.headers.get("Authorization"))
    if token is None and query_token:
        token = request.query.get("token")
    try:
        return request.app[authenticator_key].verify(token)
    except Unauthorized as exc:
        raise ApiError(401, str(exc), {"WWW-Authenticate": "Bearer"}) from None


async def session_of(
    request: web.Request, *, control: bool = False, query_token: bool = False
) -> SessionView:
    """The session the route names, wherever it runs, if the caller may view it (or, with
    ``control``, start and stop it); 401 without a valid token, 404 when there is no such
    session, 403 when it is someone else's."""
    identity = identity_of(request, query_token=query_token)
    session_id = parse_session_id(request.match_info["session_id"])
    session = await request.app[manager_key].find(session_id) if session_id else None
    if session is None:
        raise ApiError(404, "Session not found")
    allowed = may_control if control else may_view
    if not allowed(identity, session.user_id):
        raise ApiError(403, FORBIDDEN)
    return session


def viewer_resume(request: web.Request, last_seq: str | None = None) -> Resume:
    """A viewer's resume point from the query string (``lastSeq``, ``epoch``, ``snapshot``);
    ``last_seq`` overrides ``?lastSeq=`` (SSE's ``Last-Event-ID``). 400 when malformed."""
    query = request.query
    try:
        return parse_resume(last_seq or query.get("lastSeq"), query.get("epoch"), query.get("snapshot"))
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None


def ensure_viewer_room(session: SessionView) -> None:
    """429 before a response is prepared when the session has its maximum of viewers."""
    try:
        session.viewer_set.check_room(None)
    except SessionFull as exc:
        raise ApiError(429, str(exc)) from None


def _stream_config(manager: StreamingSessionManager, raw: StreamConfigIn | None) -> StreamConfig:
    raw = raw or StreamConfigIn()
    settings = manager.settings
    provider = raw.provider or settings.resolved_default_provider()
    manager.provider(provider)  # raises ProviderUnavailable with what to set
    if raw.max_tokens is not None and not 1 <= raw.max_tokens <= settings.max_tokens_limit:
        raise ApiError(
            400, f"Invalid request: config.maxTokens must be between 1 and {settings.max_tokens_limit}"
        )
    return StreamConfig(
        provider=provider,
        model=raw.model or manager.default_model(provider),
        system_prompt=raw.system_prompt,
        temperature=raw.temperature,
        max_tokens=raw.max_tokens,
        tokens_per_second=raw.tokens_per_second,
        animation_type=raw.animation_type,
        speed=raw.speed,
    )


async def create_session(request: web.Request) -> web.Response:
    """``POST /api/streaming/session`` → ``{sessionId, wsEndpoint}``.

    New sessions are limited in rate per client address (before the body is read) and per
    user (the token's ``sub``, or the body's ``userId`` with access open): 429 with
    ``Retry-After``.
    """
    identity = identity_of(request)
    limits = request.app[limits_key]
    wait = limits.sessions_per_address.take(client_address(request))
    if wait:
        raise too_many("Too many new sessions from this address (SESSION_RATE_PER_ADDRESS)", wait)
    body = await read_body(request, CreateSessionIn)
    if identity is not None and body.user_id != identity.user:
        raise ApiError(403, FORBIDDEN)
    wait = limits.sessions_per_user.take(body.user_id)
    if wait:
        raise too_many("Too many new sessions for this user (SESSION_RATE_PER_USER)", wait)
    manager = request.app[manager_key]
    try:
        config = _stream_config(manager, body.config)
        session = await manager.create_session(body.user_id, config)
    except ProviderUnavailable as exc:
        raise ApiError(400, str(exc)) from None
    except TooManySessions as exc:
        raise ApiError(429, str(exc)) from None
    except Unavailable as exc:
        raise ApiError(503, str(exc)) from None
    return json_response({"sessionId": session.id, "wsEndpoint": f"/ws/stream/{session.id}"})


async def earlier_of(request: web.Request, session: SessionView, follow_up: str | None) -> Earlier | None:
    """The session a follow-up continues, with what it asked and answered: 404 when there is
    no such session, 403 when it is not the same user's."""
    if follow_up is None:
        return None
    manager = request.app[manager_key]
    session_id = parse_session_id(follow_up)
    earlier = await manager.find(session_id) if session_id else None
    if earlier is None:
        raise ApiError(404, "followUp: session not found")
    if earlier.user_id != session.user_id:
        raise ApiError(403, "followUp: that session belongs to another user")
    if earlier.is_live and earlier.state is not SessionState.CREATED:
        raise ApiError(409, "followUp: that session is still streaming; follow up once it has ended")
    await settled(earlier)
    return Earlier(earlier.id, await manager.conversation_of(earlier), earlier.text)


#: ``SESSIONS_BY_ACTION``'s child of each action (``labels()`` costs more than the count):
#: as many as there are actions.
_STARTED_BY_ACTION: dict[str, Counter] = {}


async def start_session(request: web.Request) -> web.Response:
    """``POST /api/streaming/{sessionId}/start`` with ``{prompt}``, or an action with the
    editor's context (``{action, context, options, followUp}``)."""
    session = await session_of(request, control=True)
    body = await read_body(request, StartIn)
    if body.target is not None:
        check_target(request, body.target)
    manager = request.app[manager_key]
    try:
        conversation = build_conversation(
            body,
            manager.actions,
            manager.prompt_limits,
            client_system=session.config.system_prompt,
            earlier=await earlier_of(request, session, body.follow_up),
        )
    except RequestError as exc:
        raise ApiError(exc.status, exc.message) from None
    ack = await start_command(session, conversation.prompt, conversation)
    if not ack["ok"]:
        raise ApiError(409 if ack.get("conflict") else 503, ack["error"])
    action = conversation.action
    started = _STARTED_BY_ACTION.get(action)
    if started is None:
        started = _STARTED_BY_ACTION[action] = SESSIONS_BY_ACTION.labels(action=action)
    started.inc()
    log.info("session %s: started", short_id(session.id))
    return json_response({"status": "started"})


def check_target(request: web.Request, target: TargetIn) -> None:
    """403 when the caller may not edit the target document, 400 for an anchor that is no
    Yjs relative position."""
    if not may_edit_document(identity_of(request), target.document_id):
        raise ApiError(403, "target: this token may not edit that document")
    if target.anchor is not None:
        try:
            decode_anchor(base64.b64decode(target.anchor))
        except AnchorError:
            raise ApiError(
                400, "target.anchor is not a Yjs relative position (Y.encodeRelativePosition)"
            ) from None


async def settled(session: SessionView) -> SessionView:
    """``session`` once what it made so far is written and delivered (Redis mode: its state
    changes at once, its chunks one write later), so that a read shows one moment."""
    if isinstance(session, StreamingSession):
        await session.persisted(PERSIST_WAIT)
    return session


async def get_session(request: web.Request) -> web.Response:
    """``GET /api/streaming/{sessionId}``: state, text so far and usage."""
    session = await settled(await session_of(request))
    await request.app[manager_key].conversation_of(session)
    return json_response(session.status())


async def cancel_session(request: web.Request) -> web.Response:
    """``POST /api/streaming/{sessionId}/cancel``: closes the upstream request."""
    ack = await session_command(await session_of(request, control=True), Action.CANCEL)
    if not ack["ok"]:
        raise ApiError(409, ack["error"])
    return json_response({"status": "cancelled"})


async def list_actions(request: web.Request) -> web.Response:
    """``GET /api/streaming/actions``: what a client can offer in its menu (with access
    control on, for any caller with a valid token)."""
    identity_of(request)
    actions = request.app[manager_key].actions.values()
    return json_response({"actions": [spec.to_wire() for spec in actions]})


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/streaming/session", create_session)
    # Before ``/api/streaming/{session_id}``, which would take "actions" for an id.
    app.router.add_get("/api/streaming/actions", list_actions)
    app.router.add_post("/api/streaming/{session_id}/start", start_session)
    app.router.add_get("/api/streaming/{session_id}", get_session)
    app.router.add_post("/api/streaming/{session_id}/cancel", cancel_session)
    app.router.add_get("/healthz", healthz)
