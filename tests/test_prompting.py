"""Templates, the context window and follow-ups, without a server: what the model is asked
for each action (server.core.prompting, server.core.actions)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.core.actions import BUILT_IN, PromptsFileError, load_actions
from server.core.models import StartIn
from server.core.prompting import (
    Context,
    Conversation,
    Earlier,
    PromptLimits,
    RequestError,
    build_conversation,
    cut_context,
)

LIMITS = PromptLimits(max_prompt_chars=1000, max_context_chars=200, max_follow_ups=3, complete_max_tokens=48)
REWRITES = ["improve", "fix", "shorten", "expand", "simplify", "translate", "tone"]


def build(
    body: dict, earlier: Earlier | None = None, limits: PromptLimits = LIMITS, system: str | None = None
):
    return build_conversation(
        StartIn.model_validate(body), BUILT_IN, limits, client_system=system, earlier=earlier
    )


def test_a_bare_prompt_is_asked_as_before():
    asked = build({"prompt": "Write a haiku"})
    assert (asked.prompt, asked.system, asked.history, asked.action) == ("Write a haiku", None, (), "custom")
    assert build({"prompt": "Write a haiku"}, system="Be brief").system == "Be brief"


@pytest.mark.parametrize("action", REWRITES)
def test_a_rewrite_marks_the_selection_inside_its_context(action):
    selection = "The quick brown {fox} jumps."
    asked = build(
        {
            "action": action,
            "context": {"selection": selection, "before": "Intro. ", "after": " Outro."},
            "options": {"language": "German", "tone": "casual"},
        }
    )
    assert f"Intro. <selection>{selection}</selection> Outro." in asked.prompt
    assert "replacement text only" in (asked.system or "")
    assert asked.task.selection == selection


def test_the_writer_s_instruction_and_options_reach_the_model():
    asked = build(
        {
            "action": "translate",
            "prompt": "keep names",
            "context": {"selection": "Hi"},
            "options": {"language": "French"},
        }
    )
    assert "into French" in asked.prompt and "keep names" in asked.prompt
    assert build({"action": "tone", "context": {"selection": "Hi"}}).prompt.count("professional") == 1


def test_continue_marks_the_cursor_and_complete_is_short():
    asked = build({"action": "continue", "context": {"before": "Once upon", "after": "The end."}})
    assert "Once upon<cursor/>The end." in asked.prompt
    assert build({"action": "complete", "context": {"before": "Once"}}).max_tokens == 48


@pytest.mark.parametrize(
    ("body", "status", "names"),
    [
        ({"action": "nope", "prompt": "x"}, 400, "nope"),
        ({"action": "shorten"}, 400, "context.selection"),
        ({"action": "shorten", "context": {"before": "x"}}, 400, "context.selection"),
        ({"action": "translate", "context": {"selection": "x"}}, 400, "options.language"),
        ({"action": "custom"}, 400, "prompt"),
        ({"action": "fix", "context": {"selection": "x" * 201}}, 413, "MAX_CONTEXT_CHARS"),
        ({"prompt": "x" * 1001}, 413, "Prompt too long"),
    ],
)
def test_refusals_name_what_is_wrong(body, status, names):
    with pytest.raises(RequestError) as caught:
        build(body)
    assert caught.value.status == status and names in caught.value.message


def test_a_follow_up_carries_the_earlier_request_and_answer():
    first = build(
        {"action": "shorten", "context": {"selection": "A long sentence here."}}, system="House style"
    )
    second = build({"prompt": "shorter still"}, Earlier("s1", first, "A sentence."))
    assert [(t.role, t.content) for t in second.history] == [
        ("user", first.prompt),
        ("assistant", "A sentence."),
    ]
    assert second.prompt == "shorter still" and second.system == first.system and second.follow_up == "s1"
    third = build({"prompt": "again"}, Earlier("s2", second, "Short."))
    assert len(third.history) == 4
    with pytest.raises(RequestError) as caught:
        build({"prompt": "and again"}, Earlier("s4", build({"prompt": "x"}, Earlier("s3", third, "S.")), "S"))
    assert caught.value.status == 400 and "MAX_FOLLOW_UPS" in caught.value.message


def test_a_follow_up_of_a_session_never_started_is_a_conflict():
    with pytest.raises(RequestError) as caught:
        build({"prompt": "x"}, Earlier("s1", None, ""))
    assert caught.value.status == 409


def test_a_conversation_survives_json():
    asked = build({"action": "tone", "context": {"selection": "Hi"}, "options": {"tone": "warm"}})
    again = build({"prompt": "more"}, Earlier("s1", asked, "Hello"))
    assert Conversation.from_json(again.to_json()) == again


text = st.text(max_size=300)


@given(text, text, text, st.one_of(st.none(), st.text(max_size=120)), st.integers(1, 400))
def test_the_cut_keeps_the_text_nearest_the_cursor(before, after, document, selection, limit):
    if selection is not None and len(selection) > limit:
        with pytest.raises(RequestError):
            cut_context(Context(selection, before, after, document), limit)
        return
    cut = cut_context(Context(selection, before, after, document), limit)
    assert cut.selection == selection
    assert before.endswith(cut.before) and after.startswith(cut.after) and document.startswith(cut.document)
    total = len(selection or "") + len(cut.before) + len(cut.after) + len(cut.document)
    assert total <= limit
    # Nothing is cut while there is room: a side is only cut when the window is full.
    if len(cut.before) < len(before) or len(cut.after) < len(after) or len(cut.document) < len(document):
        assert total == limit
    # Before and after share the room: neither loses text while the other has more than half.
    room = limit - len(selection or "")
    if len(cut.before) < len(before):
        assert len(cut.before) >= room // 2 or len(cut.before) + len(cut.after) == room


@given(st.sampled_from(REWRITES), st.text(min_size=1, max_size=150), text, text)
def test_any_selection_within_the_bound_reaches_the_model_whole(action, selection, before, after):
    body = {"action": action, "context": {"selection": selection, "before": before, "after": after}}
    body["options"] = {"language": "Italian"}
    asked = build(body)
    assert f"<selection>{selection}</selection>" in asked.prompt


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "prompts.toml"
    path.write_text(text)
    return path


def test_the_prompts_file_overrides_and_adds(tmp_path):
    actions = load_actions(
        write(
            tmp_path,
            """
[actions.shorten]
user = "One sentence only: {selection}"

[actions.legal]
label = "Legalese"
system = "You are a lawyer."
user = "Rewrite: {marked}"
needsSelection = true
insert = "replace"
""",
        )
    )
    assert actions["shorten"].user == "One sentence only: {selection}"
    assert actions["shorten"].system == BUILT_IN["shorten"].system
    assert actions["legal"].to_wire() == {
        "id": "legal",
        "label": "Legalese",
        "needsSelection": True,
        "options": [],
        "insert": "replace",
    }
    asked = build_conversation(
        StartIn.model_validate({"action": "legal", "context": {"selection": "x"}}),
        actions,
        LIMITS,
        client_system=None,
    )
    assert asked.prompt == "Rewrite: <selection>x</selection>" and asked.system == "You are a lawyer."


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("[actions.shorten]\nuser = 'Hi {nam}'\n", ["prompts.toml", "'shorten'", "{nam}"]),
        ("[actions.shorten]\ncolour = 'red'\n", ["prompts.toml", "'shorten'", "'colour'"]),
        ("[actions.new]\nuser = 'x'\n", ["'new'", "'system'"]),
        ("[actions.shorten]\ninsert = 'top'\n", ["'shorten'", "'insert'"]),
        ("[actions.shorten\n", ["prompts.toml", "not valid TOML"]),
        ("[actions.shorten]\nuser = '{selection!r}'\n", ["'shorten'", "{selection}"]),
        ("[actions.shorten]\nuser = 'a { b'\n", ["'shorten'", "not a valid template"]),
    ],
)
def test_a_bad_prompts_file_names_the_file_the_action_and_the_field(tmp_path, text, names):
    with pytest.raises(PromptsFileError) as caught:
        load_actions(write(tmp_path, text))
    for name in names:
        assert name in str(caught.value)


def test_a_follow_up_of_an_empty_answer_is_a_conflict():
    with pytest.raises(RequestError) as caught:
        build({"prompt": "x"}, Earlier("s1", build({"prompt": "first"}), ""))
    assert caught.value.status == 409 and "no answer" in caught.value.message


def test_a_long_chain_leaves_out_its_oldest_exchanges():
    limits = PromptLimits(
        max_prompt_chars=1000, max_context_chars=200, max_follow_ups=10, complete_max_tokens=48
    )
    first = build({"prompt": "a" * 90}, limits=limits)
    second = build({"prompt": "b" * 10}, Earlier("s1", first, "A" * 90), limits=limits)
    third = build({"prompt": "c" * 10}, Earlier("s2", second, "B" * 10), limits=limits)
    # 90 + 90 + 10 + 10 characters of earlier turns: within 200, all kept.
    assert [t.content[0] for t in third.history] == ["a", "A", "b", "B"]
    fourth = build({"prompt": "d"}, Earlier("s3", third, "C" * 10), limits=limits)
    # 220 characters: the oldest exchange is left out, the rest stays in order.
    assert [t.content[0] for t in fourth.history] == ["b", "B", "c", "C"]


def test_a_document_alone_is_cut_around_the_selection():
    document = "x" * 500 + "THE SELECTION" + "y" * 500
    asked = build({"action": "fix", "context": {"selection": "THE SELECTION", "document": document}})
    assert "x" * 93 + "<selection>THE SELECTION</selection>" + "y" * 94 in asked.prompt


def test_an_empty_selection_is_the_cursor():
    asked = build({"action": "continue", "context": {"selection": "", "before": "Hi", "after": "there"}})
    assert "Hi<cursor/>there" in asked.prompt
