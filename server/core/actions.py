"""Editor actions and their prompt templates (PROTOCOL.md "Document context, actions and
follow-ups"): what ``continue``, ``shorten``, ``translate``... ask the model.

Each action is a system message and a user message, ``str.format`` templates over the
fields of :data:`FIELDS`. The built-ins live here; an operator's TOML file
(``PROMPTS_FILE``) overrides any of them and adds new ones. Every problem in that file is
found when the server starts, with the file, the action and the field named, never when a
request arrives.
"""

from __future__ import annotations

import string
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

Insert = Literal["replace", "cursor", "after"]
INSERTS: tuple[Insert, ...] = ("replace", "cursor", "after")

#: What a template may name. ``marked`` is the text around the cursor with the selection
#: marked out (``<selection>...</selection>``) or the cursor marked (``<cursor/>``);
#: ``extra`` is the writer's own instruction as a sentence, or nothing.
FIELDS = {
    "selection": "the selected text, verbatim",
    "before": "the text before the cursor or selection",
    "after": "the text after it",
    "document": "the whole document, when the editor sent it",
    "marked": "before + the selection marked out (or the cursor marked) + after",
    "instruction": "the writer's prompt",
    "extra": "the writer's prompt as an additional instruction, or nothing",
    "language": "options.language",
    "tone": "options.tone",
}
#: The keys an action of the prompts file may have.
KEYS = ("label", "system", "user", "needsSelection", "insert", "options")


@dataclass(frozen=True, slots=True)
class ActionSpec:
    """One action: its menu label, its templates and where its answer goes by default."""

    id: str
    label: str
    system: str
    user: str
    needs_selection: bool = False
    insert: Insert = "cursor"
    #: The ``options`` it takes (``language``, ``tone``); ``translate`` needs ``language``.
    options: tuple[str, ...] = field(default=())

    @property
    def rewrites(self) -> bool:
        """It answers with the replacement of the selection."""
        return self.insert == "replace"

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label,
            "needsSelection": self.needs_selection,
            "options": list(self.options),
            "insert": self.insert,
        }


_EDITOR = (
    "You are a writing assistant inside a rich-text editor. You write in the language of"
    " the document unless told otherwise, and format with Markdown (headings, lists, bold,"
    " italic, links, code) only where the text calls for it."
)
_REWRITE = (
    _EDITOR + " The user selected part of their document; it is marked with <selection> and"
    " </selection> inside the text around it. Rewrite only the selected text. Answer with"
    " the replacement text only: no preamble, no explanation, no quotation marks around it,"
    " no <selection> tags, and none of the text around the selection."
)
_INSERT = (
    _EDITOR + " Answer with the new text only: no preamble, no explanation, and do not repeat"
    " the text that is already in the document."
)
_MARKED = "\n\n<document>\n{marked}\n</document>"


def _rewrite(id: str, label: str, task: str, options: tuple[str, ...] = ()) -> ActionSpec:
    return ActionSpec(
        id,
        label,
        _REWRITE,
        task + "{extra}" + _MARKED,
        needs_selection=True,
        insert="replace",
        options=options,
    )


BUILT_IN: dict[str, ActionSpec] = {
    spec.id: spec
    for spec in (
        ActionSpec(
            "continue",
            "Continue writing",
            _INSERT,
            "Continue the document from the cursor (<cursor/>): write the next few sentences in"
            " the same voice, tense and format, so they follow on from the text before it and"
            " lead into the text after it.{extra}" + _MARKED,
        ),
        ActionSpec(
            "complete",
            "Autocomplete",
            _INSERT + " Keep it short: the rest of the current sentence, at most one more.",
            "Complete the text at the cursor (<cursor/>) with a few words.{extra}" + _MARKED,
        ),
        _rewrite(
            "improve", "Improve writing", "Improve the selected text: clearer, more fluent, same meaning."
        ),
        _rewrite(
            "fix",
            "Fix spelling and grammar",
            "Fix the spelling, grammar and punctuation of the selected text; change nothing else.",
        ),
        _rewrite(
            "shorten",
            "Make shorter",
            "Make the selected text shorter, keeping its meaning and its formatting.",
        ),
        _rewrite(
            "expand", "Make longer", "Make the selected text longer, with more detail in the same voice."
        ),
        _rewrite("simplify", "Simplify", "Rewrite the selected text in simpler words and shorter sentences."),
        ActionSpec(
            "summarize",
            "Summarize",
            _INSERT,
            "Summarize the selected text (marked with <selection> and </selection>) in a few"
            " sentences, to be placed after it.{extra}" + _MARKED,
            needs_selection=True,
            insert="after",
        ),
        _rewrite(
            "translate", "Translate", "Translate the selected text into {language}.", options=("language",)
        ),
        _rewrite("tone", "Change tone", "Rewrite the selected text in a {tone} tone.", options=("tone",)),
        ActionSpec(
            "custom",
            "Ask AI",
            _EDITOR,
            "{instruction}" + _MARKED,
        ),
    )
}


class PromptsFileError(ValueError):
    """The operator's prompts file cannot be used; the message names the file, the action
    and the field."""


def check_template(text: str, where: str) -> None:
    """Raise :class:`PromptsFileError` when ``text`` is no valid template or names a field
    that :data:`FIELDS` does not have."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise PromptsFileError(
            f"{where}: not a valid template ({exc}); write {{{{ and }}}} for braces"
        ) from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        base = name.split(".")[0].split("[")[0]
        if base not in FIELDS or name != base or spec or conversion:
            known = ", ".join(sorted(FIELDS))
            raise PromptsFileError(f"{where}: unknown field {{{name}}} (known: {known})")


def _action_from_toml(path: Path, action_id: str, table: object, base: ActionSpec | None) -> ActionSpec:
    where = f"{path}: action {action_id!r}"
    if not isinstance(table, dict):
        raise PromptsFileError(f"{where}: must be a table ([actions.{action_id}])")
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise PromptsFileError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(KEYS)})")
    for key in ("label", "system", "user"):
        if key in table and not isinstance(table[key], str):
            raise PromptsFileError(f"{where}: field {key!r} must be a string")
        if base is None and key in ("system", "user") and key not in table:
            raise PromptsFileError(f"{where}: field {key!r} is required for a new action")
    for key in ("system", "user"):
        if key in table:
            check_template(table[key], f"{where}: field {key!r}")
    if "needsSelection" in table and not isinstance(table["needsSelection"], bool):
        raise PromptsFileError(f"{where}: field 'needsSelection' must be true or false")
    if "insert" in table and table["insert"] not in INSERTS:
        raise PromptsFileError(f"{where}: field 'insert' must be one of {', '.join(INSERTS)}")
    options = table.get("options", base.options if base else ())
    if not isinstance(options, list | tuple) or not all(o in ("language", "tone") for o in options):
        raise PromptsFileError(f"{where}: field 'options' must be a list of 'language' and 'tone'")
    start = base or ActionSpec(action_id, action_id.replace("-", " ").capitalize(), "", "")
    return replace(
        start,
        label=table.get("label", start.label),
        system=table.get("system", start.system),
        user=table.get("user", start.user),
        needs_selection=table.get("needsSelection", start.needs_selection),
        insert=table.get("insert", start.insert),
        options=tuple(options),
    )


def load_actions(path: Path | None) -> dict[str, ActionSpec]:
    """The built-in actions, with those of the TOML file at ``path`` over them:

    .. code-block:: toml

        [actions.shorten]              # overrides a built-in (any key may be left out)
        user = "Cut the selection to one sentence.{extra}\\n\\n{marked}"

        [actions.legal]                # adds an action
        label = "Make it sound legal"
        system = "You are a lawyer's editor. Answer with the replacement only."
        user = "Rewrite in legal language:\\n\\n{marked}"
        needsSelection = true
        insert = "replace"
    """
    actions = dict(BUILT_IN)
    if path is None:
        return actions
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PromptsFileError(f"{path}: cannot be read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise PromptsFileError(f"{path}: not valid TOML ({exc})") from None
    unknown = sorted(set(data) - {"actions"})
    if unknown:
        raise PromptsFileError(f"{path}: unknown top-level key {unknown[0]!r} (only [actions.<id>] tables)")
    tables = data.get("actions", {})
    if not isinstance(tables, Mapping):
        raise PromptsFileError(f"{path}: 'actions' must be a table of actions")
    for action_id, table in tables.items():
        if not action_id or len(action_id) > 64 or not all(c.isalnum() or c in "-_" for c in action_id):
            raise PromptsFileError(f"{path}: action {action_id!r}: ids are 1-64 letters, digits, - and _")
        actions[action_id] = _action_from_toml(path, action_id, table, actions.get(action_id))
    return actions
