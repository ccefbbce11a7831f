"""Pydantic models for what crosses the wire: HTTP bodies and Socket.IO payloads."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator
from pydantic.alias_generators import to_camel


class WireModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown keys are ignored."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class StreamConfigIn(WireModel):
    """The seed's ``StreamConfig``: every key optional, known keys validated."""

    provider: StrictStr | None = None
    model: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    system_prompt: Annotated[str, Field(max_length=100_000)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    max_tokens: StrictInt | None = None
    tokens_per_second: Annotated[float, Field(ge=0, le=100_000)] | None = None
    animation_type: Literal["wave", "fade", "slide"] | None = None
    speed: Annotated[float, Field(ge=0)] | None = None


class CreateSessionIn(WireModel):
    user_id: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    config: StreamConfigIn | None = None


class StartIn(WireModel):
    prompt: StrictStr


def encode_json(value: object) -> str:
    """JSON text for an outgoing event (orjson: several times faster than ``json``)."""
    return orjson.dumps(value).decode()


def _is_uuid(value: str) -> bool:
    if len(value) != 36:
        return False
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
