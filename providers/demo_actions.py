"""What the offline demo provider answers to an editor action (PROTOCOL.md "Document
context, actions and follow-ups"): a visible, deterministic transformation of the
selection or a continuation of the text before the cursor, so that every flow (rewrite,
review, continue, autocomplete) works with no model. It is not a language model."""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable

from providers.base import Task

_SENTENCE = re.compile(r"[^.!?]+[.!?]*\s*")
_WORDS = re.compile(r"\S+|\s+")

#: Words ``fix`` corrects (the mistakes a demo paragraph can plant).
_MISSPELLINGS = {
    "teh": "the",
    "recieve": "receive",
    "seperate": "separate",
    "definately": "definitely",
    "occured": "occurred",
    "wich": "which",
    "alot": "a lot",
    "thier": "their",
    "untill": "until",
    "becuase": "because",
    "adress": "address",
    "tommorow": "tomorrow",
    "i": "I",
}
_FILLER = {"very", "really", "quite", "just", "actually", "basically", "simply", "rather", "truly"}
_SIMPLER = {
    "utilize": "use",
    "utilise": "use",
    "approximately": "about",
    "demonstrate": "show",
    "additional": "more",
    "assistance": "help",
    "commence": "start",
    "numerous": "many",
    "purchase": "buy",
    "sufficient": "enough",
    "individuals": "people",
    "however": "but",
    "therefore": "so",
    "facilitate": "help",
    "subsequently": "then",
}
_STRONGER = {"good": "great", "bad": "poor", "big": "substantial", "small": "compact", "nice": "pleasant"}
_TRANSLATIONS = {
    "french": {
        "the": "le",
        "a": "un",
        "is": "est",
        "and": "et",
        "of": "de",
        "to": "à",
        "in": "dans",
        "it": "il",
        "this": "ce",
        "for": "pour",
        "with": "avec",
        "on": "sur",
        "we": "nous",
        "you": "vous",
        "not": "pas",
        "text": "texte",
        "editor": "éditeur",
        "write": "écrire",
    },
    "german": {
        "the": "die",
        "a": "ein",
        "is": "ist",
        "and": "und",
        "of": "von",
        "to": "zu",
        "in": "in",
        "it": "es",
        "this": "dies",
        "for": "für",
        "with": "mit",
        "on": "auf",
        "we": "wir",
        "you": "Sie",
        "not": "nicht",
        "text": "Text",
        "editor": "Editor",
        "write": "schreiben",
    },
    "spanish": {
        "the": "el",
        "a": "un",
        "is": "es",
        "and": "y",
        "of": "de",
        "to": "a",
        "in": "en",
        "it": "eso",
        "this": "esto",
        "for": "para",
        "with": "con",
        "on": "en",
        "we": "nosotros",
        "you": "usted",
        "not": "no",
        "text": "texto",
        "editor": "editor",
        "write": "escribir",
    },
}
_LANGUAGE_CODES = {"fr": "french", "de": "german", "es": "spanish"}
_CONTRACTIONS = {
    "don't": "do not",
    "can't": "cannot",
    "it's": "it is",
    "won't": "will not",
    "isn't": "is not",
    "we're": "we are",
    "i'm": "I am",
    "you're": "you are",
}
_CONTINUATIONS = [
    "Each step builds on the one before it, so the reader never loses the thread.",
    "That is the part most drafts skip, and the part readers remember.",
    "A concrete example makes the point clearer than another paragraph of theory.",
    "The next step is to test the idea on a small case before going further.",
    "It helps to say plainly what changes for the reader, and what stays the same.",
]
_COMPLETIONS = [
    " and keeps every step small enough to check.",
    " so that the reader can follow along.",
    " with one clear example.",
    " before anything else changes.",
    " in a sentence or two.",
]


def _map_words(text: str, change: Callable[[str], str]) -> str:
    """``text`` with each word (its letters, keeping the punctuation around) changed."""
    out = []
    for piece in _WORDS.findall(text):
        if piece.isspace():
            out.append(piece)
            continue
        match = re.match(r"^(\W*)(.*?)(\W*)$", piece)
        assert match is not None
        lead, word, trail = match.groups()
        new = change(word) if word else word
        if new and word[:1].isupper() and new[:1].islower():
            new = new[:1].upper() + new[1:]
        out.append(lead + new + trail if new else "")
    return re.sub(r"  +", " ", "".join(out)).strip()


def _seeded(text: str) -> random.Random:
    return random.Random(hashlib.sha256(text.encode()).digest())


def shorten(text: str) -> str:
    sentences = [s.strip() for s in _SENTENCE.findall(text) if s.strip()]
    if len(sentences) > 1:
        text = " ".join(sentences[: max(1, (len(sentences) + 1) // 2)])
    short = _map_words(text, lambda w: "" if w.lower() in _FILLER else w)
    words = short.split()
    if len(short) >= len(text.strip()) and len(words) > 3:
        short = " ".join(words[: max(3, len(words) * 2 // 3)]).rstrip(",;:") + "."
    return short


def expand(text: str) -> str:
    base = text.strip()
    extra = _seeded(base).sample(_CONTINUATIONS, 2)
    return f"{base} In more detail: {extra[0]} {extra[1]}"


def fix(text: str) -> str:
    fixed = _map_words(text, lambda w: _MISSPELLINGS.get(w.lower(), w) if w.lower() in _MISSPELLINGS else w)
    # A sentence starts with a capital letter.
    return re.sub(r"(^|[.!?]\s+)([a-z])", lambda m: m.group(1) + m.group(2).upper(), fixed)


def simplify(text: str) -> str:
    return _map_words(text, lambda w: "" if w.lower() in _FILLER else _SIMPLER.get(w.lower(), w))


def improve(text: str) -> str:
    return fix(_map_words(text, lambda w: "" if w.lower() in _FILLER else _STRONGER.get(w.lower(), w)))


def translate(text: str, language: str) -> str:
    key = language.strip().lower()
    table = _TRANSLATIONS.get(_LANGUAGE_CODES.get(key, key))
    if table is None:
        return f"[{language}] {text.strip()}"
    return _map_words(text, lambda w: table.get(w.lower(), w))


def tone(text: str, name: str) -> str:
    kind = name.strip().lower()
    if kind in ("formal", "professional", "academic", "business"):
        return _map_words(text, lambda w: _CONTRACTIONS.get(w.lower(), w))
    if kind in ("casual", "friendly", "conversational"):
        informal = {v.lower(): k for k, v in _CONTRACTIONS.items() if " " not in v}
        return "Honestly, " + _map_words(text, lambda w: informal.get(w.lower(), w))
    if kind in ("confident", "persuasive"):
        return _map_words(text, lambda w: "" if w.lower() in {"maybe", "perhaps", "might", "probably"} else w)
    return f"({kind}) {text.strip()}"


def summarize(text: str) -> str:
    first = next((s.strip() for s in _SENTENCE.findall(text) if s.strip()), text.strip())
    return f"**Summary:** {shorten(first)}"


def _joiner(before: str) -> str:
    """A space before the new text unless the text before the cursor ends with one."""
    return "" if not before or before[-1:].isspace() else " "


def continue_writing(before: str) -> str:
    picks = _seeded(before).sample(_CONTINUATIONS, 3)
    return _joiner(before) + " ".join(picks)


def complete(before: str) -> str:
    ending = _seeded(before).choice(_COMPLETIONS)
    tail = before.rstrip()
    if tail.endswith((".", "!", "?")):
        return _joiner(before) + _seeded(tail).choice(_CONTINUATIONS)
    return ending.lstrip() if before[-1:].isspace() else ending


#: What a free instruction about a selection (or, in a follow-up, about the earlier answer)
#: asks for, by a word in it.
_INSTRUCTED: tuple[tuple[tuple[str, ...], Callable[[str, str], str]], ...] = (
    (("shorter", "shorten", "concise", "brief"), lambda text, _: shorten(text)),
    (("longer", "expand", "more detail"), lambda text, _: expand(text)),
    (("simpl",), lambda text, _: simplify(text)),
    (("fix", "spell", "grammar"), lambda text, _: fix(text)),
    (("summar",), lambda text, _: summarize(text)),
    (("formal", "professional"), lambda text, _: tone(text, "formal")),
    (("casual", "friendly"), lambda text, _: tone(text, "casual")),
    (("french", "german", "spanish"), lambda text, how: translate(text, _language_in(how))),
    (("improve", "better"), lambda text, _: improve(text)),
)


def _language_in(instruction: str) -> str:
    lowered = instruction.lower()
    return next((name for name in _TRANSLATIONS if name in lowered), "french")


def _instructed(selection: str, instruction: str) -> str | None:
    lowered = instruction.lower()
    for words, change in _INSTRUCTED:
        if any(word in lowered for word in words):
            return change(selection, instruction)
    return None


def answer(task: Task) -> str | None:
    """The demo's answer to ``task``, or ``None`` when it answers from the prompt as it
    always did (``custom``, unless its instruction asks for a change it knows of the
    selection or, in a follow-up, of the earlier answer; or an action it does not know)."""
    selection = task.selection or ""
    before = task.before or ""
    match task.action:
        case "shorten":
            return shorten(selection)
        case "expand":
            return expand(selection)
        case "fix":
            return fix(selection)
        case "simplify":
            return simplify(selection)
        case "improve":
            return improve(selection)
        case "translate":
            return translate(selection, task.option("language") or "French")
        case "tone":
            return tone(selection, task.option("tone") or "formal")
        case "summarize":
            return summarize(selection)
        case "continue":
            return continue_writing(before)
        case "complete":
            return complete(before)
        case "custom" if selection:
            return _instructed(selection, task.instruction)
    return None
