"""From a start request to what the provider is asked (PROTOCOL.md "Document context,
actions and follow-ups"): the action's templates filled with the editor's context, cut to
``MAX_CONTEXT_CHARS`` so that the text nearest the cursor stays, and for a follow-up the
earlier request and answer as the conversation so far.

A body with only ``{prompt}`` is asked exactly as before: the prompt alone, with the
client's own system prompt if it set one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import orjson

from providers.base import StreamConfig, Task, Turn
from server.core.actions import ActionSpec
from server.core.models import ContextIn, StartIn

SELECTION_OPEN, SELECTION_CLOSE, CURSOR = "<selection>", "</selection>", "<cursor/>"


class RequestError(Exception):
    """A start request that cannot be served: ``status`` is the HTTP status (400, 403, 404,
    409, 413) and the message says why, naming the field."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Target:
    """The collaborative document a session writes its answer into (``target`` of a start)."""

    document_id: str
    #: Base64 of a Yjs relative position in the ``default`` fragment; None: the end.
    anchor: str | None = None


@dataclass(frozen=True, slots=True)
class Conversation:
    """What a session asked its provider: kept with the session (and in Redis mode with its
    log) so that a follow-up, a takeover and ``GET /api/streaming/{id}`` see it."""

    action: str
    #: The last user message: the filled template, or the bare prompt.
    prompt: str
    system: str | None
    history: tuple[Turn, ...]
    task: Task
    follow_up: str | None = None
    #: ``maxTokens`` this action uses when the session's config sets none (``complete``).
    max_tokens: int | None = None
    #: The document the server writes the answer into, if any.
    target: Target | None = None

    @classmethod
    def bare(cls, prompt: str, system: str | None) -> Conversation:
        """A start with the prompt alone (the seed's): asked as it is."""
        return cls("custom", prompt, system, (), Task(instruction=prompt))

    def configure(self, config: StreamConfig) -> StreamConfig:
        """``config`` carrying this conversation to the provider."""
        return replace(
            config,
            system_prompt=self.system,
            history=self.history,
            task=self.task,
            max_tokens=config.max_tokens if config.max_tokens is not None else self.max_tokens,
        )

    def to_json(self) -> str:
        # orjson writes dataclasses itself, as ``asdict`` would give them (a tenth of its cost).
        return orjson.dumps(self).decode()

    @classmethod
    def from_json(cls, raw: str | bytes) -> Conversation:
        data = orjson.loads(raw)
        task = data["task"]
        return cls(
            action=data["action"],
            prompt=data["prompt"],
            system=data.get("system"),
            history=tuple(Turn(t["role"], t["content"]) for t in data.get("history", ())),
            task=Task(**{**task, "options": tuple((k, v) for k, v in task.get("options", ()))}),
            follow_up=data.get("follow_up"),
            max_tokens=data.get("max_tokens"),
            target=Target(**data["target"]) if data.get("target") else None,
        )


@dataclass(frozen=True, slots=True)
class Earlier:
    """The session a follow-up continues: what it asked and what it answered."""

    session_id: str
    conversation: Conversation | None
    answer: str


@dataclass(frozen=True, slots=True)
class PromptLimits:
    max_prompt_chars: int
    max_context_chars: int
    max_follow_ups: int
    complete_max_tokens: int


@dataclass(frozen=True, slots=True)
class Context:
    selection: str | None = None
    before: str = ""
    after: str = ""
    document: str = ""


def cut_context(context: Context, limit: int) -> Context:
    """``context`` within ``limit`` characters in all: the selection whole (413 when it alone
    is longer), then ``before`` (cut from its start) and ``after`` (cut from its end) half
    the room each, a side that needs less leaving the rest to the other, then ``document``
    (cut from its end) in what is left."""
    selection = context.selection or ""
    if len(selection) > limit:
        raise RequestError(
            413, f"context.selection too long: {len(selection)} characters (MAX_CONTEXT_CHARS {limit})"
        )
    room = limit - len(selection)
    before, after, document = context.before, context.after, context.document
    keep_before = min(len(before), max(room // 2, room - len(after)))
    keep_after = min(len(after), room - keep_before)
    keep_document = min(len(document), room - keep_before - keep_after)
    return Context(
        context.selection,
        before[len(before) - keep_before :],
        after[:keep_after],
        document[:keep_document],
    )


def _marked(context: Context) -> str:
    """The text around the cursor with the selection (or the cursor) marked out."""
    marker = CURSOR if context.selection is None else SELECTION_OPEN + context.selection + SELECTION_CLOSE
    if not context.before and not context.after and context.document:
        # Only the whole document came: mark the selection where it first occurs in it.
        at = context.document.find(context.selection) if context.selection else -1
        if at >= 0 and context.selection:
            end = at + len(context.selection)
            return context.document[:at] + marker + context.document[end:]
        return context.document + "\n\n" + marker
    return context.before + marker + context.after


def _located(selection: str | None, raw: ContextIn) -> Context:
    """The editor's context, with an empty selection as none; when only the whole document
    came, the text around the selection's first occurrence in it becomes ``before`` and
    ``after`` (so that the cut keeps what is nearest the selection)."""
    before, after, document = raw.before or "", raw.after or "", raw.document or ""
    if selection and document and not before and not after:
        at = document.find(selection)
        if at >= 0:
            return Context(selection, document[:at], document[at + len(selection) :], "")
    return Context(selection, before, after, document)


def _join_system(*parts: str | None) -> str | None:
    text = "\n\n".join(p for p in parts if p)
    return text or None


def _history_of(earlier: Earlier, limits: PromptLimits) -> tuple[Turn, ...]:
    """The conversation a follow-up continues: at most ``MAX_FOLLOW_UPS`` exchanges, and the
    oldest left out while the turns hold more than ``MAX_CONTEXT_CHARS``."""
    asked = earlier.conversation
    if asked is None:
        raise RequestError(409, f"followUp: session {earlier.session_id} was never started")
    if not earlier.answer:
        raise RequestError(409, f"followUp: session {earlier.session_id} has no answer")
    history = (*asked.history, Turn("user", asked.prompt), Turn("assistant", earlier.answer))
    if len(history) // 2 > limits.max_follow_ups:
        raise RequestError(
            400, f"followUp: the chain is longer than MAX_FOLLOW_UPS ({limits.max_follow_ups})"
        )
    size = sum(len(turn.content) for turn in history)
    while len(history) > 2 and size > limits.max_context_chars:
        size -= len(history[0].content) + len(history[1].content)
        history = history[2:]
    return history


def build_conversation(
    body: StartIn,
    actions: dict[str, ActionSpec],
    limits: PromptLimits,
    *,
    client_system: str | None,
    earlier: Earlier | None = None,
) -> Conversation:
    """What the provider is asked for ``body``; :class:`RequestError` for what PROTOCOL.md
    refuses (unknown action, missing selection or language, oversized selection)."""
    action_id = body.action or "custom"
    spec = actions.get(action_id)
    if spec is None:
        known = ", ".join(sorted(actions))
        raise RequestError(400, f"Unknown action {action_id!r}: use one of {known}")
    instruction = body.prompt.strip()
    if action_id == "custom" and not instruction:
        raise RequestError(400, "Invalid request: prompt must not be empty")
    if len(body.prompt) > limits.max_prompt_chars:
        raise RequestError(
            413, f"Prompt too long: {len(body.prompt)} characters (limit {limits.max_prompt_chars})"
        )
    raw = body.context
    if spec.needs_selection and (raw is None or not raw.selection):
        raise RequestError(400, f"Action {action_id!r} needs context.selection")
    options = body.options
    language = options.language if options else None
    tone = options.tone if options else None
    if "language" in spec.options and not language:
        raise RequestError(400, f"Action {action_id!r} needs options.language")
    history = _history_of(earlier, limits) if earlier is not None else ()
    follow_up = earlier.session_id if earlier is not None else None
    context = Context()
    if raw is not None:
        context = cut_context(_located(raw.selection or None, raw), limits.max_context_chars)
    task = Task(
        action=action_id,
        instruction=instruction,
        selection=context.selection
        if context.selection is not None
        else (earlier.answer if earlier else None),
        before=context.before,
        after=context.after,
        options=tuple((k, v) for k, v in (("language", language), ("tone", tone)) if v),
    )
    max_tokens = limits.complete_max_tokens if action_id == "complete" else None
    target = Target(body.target.document_id, body.target.anchor) if body.target else None
    if action_id == "custom" and raw is None:
        # The prompt alone, as before this existed (and a follow-up's instruction as is).
        earlier_system = earlier.conversation.system if earlier and earlier.conversation else None
        return Conversation(
            action_id,
            body.prompt,
            earlier_system or client_system,
            history,
            task,
            follow_up,
            max_tokens,
            target,
        )
    fields = {
        "selection": context.selection or "",
        "before": context.before,
        "after": context.after,
        "document": context.document,
        "marked": _marked(context),
        "instruction": instruction,
        "extra": f" Also: {instruction}" if instruction and action_id != "custom" else "",
        "language": language or "",
        "tone": tone or "professional",
    }
    return Conversation(
        action_id,
        spec.user.format_map(fields),
        _join_system(spec.system.format_map(fields), client_system),
        history,
        task,
        follow_up,
        max_tokens,
        target,
    )
