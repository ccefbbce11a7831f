"""Pydantic models for what crosses the wire: HTTP bodies and Socket.IO payloads.

The request models validate what clients send; the response models (``...Out``) describe
what the server answers. ``server.transports.openapi`` turns both into the OpenAPI document served at
``/api/openapi.json``, so a field's docstring here is its description there.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from dataclasses import dataclass
from typing import Annotated, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
)
from pydantic.alias_generators import to_camel


class WireModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown keys are ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", use_attribute_docstrings=True
    )


class StreamConfigIn(WireModel):
    """The seed's ``StreamConfig``: every key optional, known keys validated (numbers must
    be JSON numbers: ``true`` or ``"0.5"`` is a 400, not 1.0 or 0.5)."""

    provider: StrictStr | None = None
    """``openai``, ``anthropic`` or ``demo``; the server's default when absent."""
    model: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    """The provider's model; the provider's default when absent."""
    system_prompt: Annotated[str, Field(max_length=100_000)] | None = None
    temperature: Annotated[StrictFloat, Field(ge=0, le=2)] | None = None
    max_tokens: StrictInt | None = None
    """1 to ``MAX_TOKENS_LIMIT``."""
    tokens_per_second: Annotated[StrictFloat, Field(ge=0, le=100_000)] | None = None
    """Demo provider pacing; 0 = as fast as it can."""
    animation_type: Literal["wave", "fade", "slide"] | None = None
    speed: Annotated[StrictFloat, Field(ge=0)] | None = None
    """Frontend only: kept and echoed."""


class CreateSessionIn(WireModel):
    """``POST /api/streaming/session``."""

    user_id: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    config: StreamConfigIn | None = None


class ContextIn(WireModel):
    """The document around the cursor, as the editor saw it when the action started."""

    selection: StrictStr | None = None
    """The text the action works on (rewrites need it); more than ``MAX_CONTEXT_CHARS``
    characters is a 413."""
    before: StrictStr | None = None
    """The text before the cursor or selection; cut from its start to fit."""
    after: StrictStr | None = None
    """The text after it; cut from its end to fit."""
    document: StrictStr | None = None
    """The whole document; cut from its end to fit."""
    format: Literal["markdown", "text"] = "markdown"
    """How the strings are written."""


ActionOption = Annotated[StrictStr, Field(min_length=1, max_length=64)]


class OptionsIn(WireModel):
    """Per-action options."""

    language: ActionOption | None = None
    """The language ``translate`` writes in (required there)."""
    tone: ActionOption | None = None
    """The tone ``tone`` writes in (default: professional)."""


DocumentId = Annotated[StrictStr, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]
"""A collaborative document's id (``/collab/{documentId}``)."""


class TargetIn(WireModel):
    """A collaborative document the server writes the answer into, as a peer."""

    document_id: DocumentId
    anchor: Annotated[StrictStr, Field(min_length=1, max_length=4096)] | None = None
    """Base64 of ``Y.encodeRelativePosition(...)`` in the ``default`` fragment: where the
    answer's blocks go. Absent: at the end of the document."""

    @field_validator("anchor")
    @classmethod
    def _base64(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("anchor must be base64 (Y.encodeRelativePosition)") from None
        return value


class StartIn(WireModel):
    """``POST /api/streaming/{sessionId}/start``. Only ``prompt`` given: the model gets the
    prompt alone, as in the seed."""

    prompt: StrictStr = ""
    """The instruction: required (not blank) for ``custom``, an optional extra instruction
    for the other actions; at most ``MAX_PROMPT_CHARS`` characters (413 above)."""
    action: Annotated[StrictStr, Field(min_length=1, max_length=64)] | None = None
    """``custom`` (the default), a built-in action (``GET /api/streaming/actions``) or one
    of the operator's prompts file; unknown: 400."""
    context: ContextIn | None = None
    options: OptionsIn | None = None
    follow_up: StrictStr | None = None
    """The ``sessionId`` of an earlier session of the same user whose request and answer the
    model gets as the conversation so far; unknown: 404, another user's: 403."""
    target: TargetIn | None = None
    """Write the answer into this collaborative document as it streams (a token must be
    allowed to edit it: 403)."""


def encode_json(value: object) -> str:
    """JSON text for an outgoing event (orjson: several times faster than ``json``)."""
    return orjson.dumps(value).decode()


#: A UUID in its canonical form, which every session id has: checked by a regular
#: expression at a sixth of ``uuid.UUID``'s cost (it runs on most requests).
_CANONICAL_UUID = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
).fullmatch


def _is_uuid(value: str) -> bool:
    if len(value) != 36:
        return False
    if _CANONICAL_UUID(value) is not None:
        return True
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


Epoch = Annotated[StrictStr, Field(min_length=1, max_length=64)]


class JoinIn(WireModel):
    """``join-stream``'s object form: ``{sessionId, lastSeq?, epoch?, snapshot?}``."""

    session_id: StrictStr
    last_seq: Annotated[StrictInt, Field(ge=-1)] | None = None
    epoch: Epoch | None = None
    snapshot: StrictBool = False

    @field_validator("session_id")
    @classmethod
    def _uuid(cls, value: str) -> str:
        if not _is_uuid(value):
            raise ValueError("sessionId must be a session UUID")
        return value


def parse_session_id(value: object) -> str | None:
    """A session id given as a bare string, or ``None`` when it is not one."""
    if isinstance(value, str) and _is_uuid(value):
        return value
    return None


def parse_last_seq(value: object) -> int | None:
    """``lastSeq`` from a handshake or query string; raises ``ValueError`` when malformed."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("lastSeq must be an integer")
    if isinstance(value, str):
        value = int(value)
    if not isinstance(value, int) or value < -1:
        raise ValueError("lastSeq must be an integer >= -1")
    return value


@dataclass(frozen=True, slots=True)
class Resume:
    """Where a viewer picks a session up: after ``last_seq`` of history ``epoch``, or from
    a ``snapshot`` of everything so far."""

    last_seq: int | None = None
    epoch: str | None = None
    snapshot: bool = False


def parse_resume(last_seq: object, epoch: object, snapshot: object = False) -> Resume:
    """A handshake's or query string's resume point; raises ``ValueError`` with the reason."""
    try:
        seq = parse_last_seq(last_seq)
    except (ValueError, TypeError):
        raise ValueError("Invalid lastSeq: expected an integer >= -1") from None
    if epoch is not None and not (isinstance(epoch, str) and 0 < len(epoch) <= 64):
        raise ValueError("Invalid epoch: expected a string")
    if snapshot in ("true", "1"):
        snapshot = True
    elif snapshot in (None, "false", "0"):
        snapshot = False
    if not isinstance(snapshot, bool):
        raise ValueError("Invalid snapshot: expected a boolean")
    return Resume(seq, epoch or None, snapshot)


# -- query strings (documented in the OpenAPI document) -------------------------------------


class ResumeQuery(WireModel):
    """The resume point in a viewer's query string (``parse_resume`` reads it)."""

    last_seq: Annotated[int, Field(ge=-1)] | None = None
    """Resume after this chunk (``Last-Event-ID`` takes precedence)."""
    epoch: Epoch | None = None
    """The epoch the client's chunks came from; another one gets ``stream-reset`` first."""
    snapshot: bool = False
    """One ``snapshot`` event with the text so far instead of the replay."""


class ChunksQuery(WireModel):
    """``GET /api/streaming/{sessionId}/chunks?after=N&limit=M``."""

    after: Annotated[int, Field(ge=-1, le=2**53)] = -1
    """Return the chunks with ``seq`` above this."""
    limit: Annotated[int, Field(ge=1)] | None = None
    """At most this many chunks (1 to ``CHUNKS_PAGE_LIMIT``, the default)."""


# -- responses ------------------------------------------------------------------------------

SessionId = Annotated[StrictStr, Field(json_schema_extra={"format": "uuid"})]
SessionStateName = Literal["created", "streaming", "paused", "completed", "failed", "cancelled"]


class ErrorOut(BaseModel):
    """Every error answer, whatever its status."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    error: StrictStr
    """A human-readable message (never a stack trace or a secret)."""


class CreateSessionOut(WireModel):
    session_id: SessionId
    ws_endpoint: Annotated[StrictStr, Field(pattern=r"^/ws/stream/")]
    """The plain WebSocket of this session: ``/ws/stream/<sessionId>``."""


class StartedOut(WireModel):
    status: Literal["started"]


class CancelledOut(WireModel):
    status: Literal["cancelled"]


class HealthOut(WireModel):
    status: Literal["ok"]


class ReadyOut(WireModel):
    status: Literal["ready"]


class UsageOut(WireModel):
    """Token counts as the provider reported them."""

    prompt_tokens: Annotated[StrictInt, Field(ge=0)]
    completion_tokens: Annotated[StrictInt, Field(ge=0)]
    total_tokens: Annotated[StrictInt, Field(ge=0)]


class SessionErrorOut(WireModel):
    """Why a session failed, as in its ``stream-error`` event."""

    code: StrictStr
    """``auth``, ``rate_limited``, ``upstream``, ``timeout``, ``bad_request``, ``idle``,
    ``shutdown``, ``internal``, ``owner_lost`` or ``unavailable``."""
    error: StrictStr


class TargetOut(WireModel):
    """Where the AI peer writes a session's answer."""

    document_id: StrictStr
    relocated: Annotated[StrictInt, Field(ge=0)]
    """How many times a collaborator deleted the block the answer was going into, so that it
    went on in a new block after the last one still there."""


class SessionStatusOut(WireModel):
    """``GET /api/streaming/{sessionId}``."""

    session_id: SessionId
    user_id: StrictStr
    state: SessionStateName
    epoch: StrictStr
    """The identity of this chunk log's history."""
    chunks: Annotated[StrictInt, Field(ge=0)]
    """How many chunks were logged."""
    text: StrictStr
    """Every chunk's content so far, joined."""
    provider: StrictStr
    model: StrictStr
    created_at: Annotated[StrictInt, Field(ge=0)]
    """Milliseconds since the epoch."""
    usage: UsageOut | None
    finish_reason: StrictStr | None
    """``null`` until the session ends."""
    error: SessionErrorOut | None
    """``null`` unless the session failed."""
    action: StrictStr | None
    """The action it was started with (``custom`` for a bare prompt); ``null`` before it starts."""
    follow_up: StrictStr | None
    """The session whose conversation it continues, or ``null``."""
    target: TargetOut | None = None
    """The collaborative document the answer is written into, or ``null``."""


class ActionOut(WireModel):
    """One action a client can offer (``GET /api/streaming/actions``)."""

    id: StrictStr
    label: StrictStr
    needs_selection: StrictBool
    """It needs ``context.selection`` (400 without)."""
    options: list[Literal["language", "tone"]]
    insert: Literal["replace", "cursor", "after"]
    """Where the answer goes by default: over the selection, at the cursor, after the selection."""


class ActionsOut(WireModel):
    """``GET /api/streaming/actions``: the built-in actions and the operator's."""

    actions: list[ActionOut]


class ChunkMetadataOut(WireModel):
    """At least the provider and the model; ``tokens`` when the provider reports usage."""

    model_config = ConfigDict(extra="allow")

    provider: StrictStr
    model: StrictStr
    tokens: Annotated[StrictInt, Field(ge=0)] | None = None


class ChunkOut(WireModel):
    """One logged chunk: the ``chunk`` event's payload."""

    content: StrictStr
    timestamp: Annotated[StrictInt, Field(ge=0)]
    """Milliseconds since the epoch."""
    metadata: ChunkMetadataOut
    seq: Annotated[StrictInt, Field(ge=0)]
    session_id: SessionId


class ChunksPageOut(WireModel):
    """``GET /api/streaming/{sessionId}/chunks``: one page of the chunk log."""

    session_id: SessionId
    epoch: StrictStr
    state: SessionStateName
    last_seq: Annotated[StrictInt, Field(ge=-1)]
    """The last logged chunk's ``seq`` (-1 before the first)."""
    chunks: list[ChunkOut]
