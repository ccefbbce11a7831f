"""Editor actions across processes (Redis mode, real processes on a real Redis): a start
sent to another process than the owner carries its conversation; a follow-up works from
any process after the earlier session finished; a takeover after the owner dies goes on
with the same action (the demo regenerates the same answer from the logged task)."""

from __future__ import annotations

from typing import Any

from providers.demo_actions import expand, shorten
from tests.cluster_nodes import Node, assert_contiguous, create, post, status_of
from tests.helpers import WAIT

SELECTION = " ".join(
    f"Sentence {i} is a very good line about the editor and how it streams text." for i in range(40)
)
FINISH = WAIT + 30


async def start_with(http, node: Node, session_id: str, body: dict[str, Any]) -> None:
    status, answer = await post(http, f"{node.url}/api/streaming/{session_id}/start", body)
    assert status == 200, answer


async def test_a_start_through_another_process_carries_the_action(nodes, http, viewers):
    a, b = await nodes(2)
    session_id = await create(http, a, tokensPerSecond=0.0)
    _, on_a = await viewers(a, session_id)
    await start_with(http, b, session_id, {"action": "shorten", "context": {"selection": SELECTION}})
    await on_a.wait_finished(timeout=FINISH)
    final = await status_of(http, b, session_id)
    assert final["text"] == on_a.text == shorten(SELECTION)
    assert final["action"] == "shorten"


async def test_a_follow_up_from_another_process_after_the_first_finished(nodes, http, viewers):
    a, b = await nodes(2)
    first = await create(http, a, tokensPerSecond=0.0)
    _, on_a = await viewers(a, first)
    await start_with(http, a, first, {"action": "expand", "context": {"selection": "Short text."}})
    await on_a.wait_finished(timeout=FINISH)
    earlier = (await status_of(http, a, first))["text"]
    second = await create(http, b, tokensPerSecond=0.0)
    _, on_b = await viewers(b, second)
    await start_with(http, b, second, {"prompt": "make it shorter", "followUp": first})
    await on_b.wait_finished(timeout=FINISH)
    final = await status_of(http, a, second)
    assert final["followUp"] == first and final["text"] == shorten(earlier)
    # Another user's session is refused from any process.
    third = await create(http, b, user="someone-else")
    status, answer = await post(
        http, f"{b.url}/api/streaming/{third}/start", {"prompt": "x", "followUp": first}
    )
    assert status == 403, answer


async def test_a_takeover_goes_on_with_the_same_action(nodes, http, viewers):
    a, b = await nodes(2)
    session_id = await create(http, a, tokensPerSecond=100.0)
    _, on_b = await viewers(b, session_id)
    await start_with(http, a, session_id, {"action": "expand", "context": {"selection": SELECTION}})
    await on_b.wait_for(lambda: len(on_b.chunks) >= 5)
    a.kill()
    await on_b.wait_finished(timeout=FINISH)
    final = await status_of(http, b, session_id)
    assert on_b.errors == [] and final["state"] == "completed"
    assert_contiguous(on_b, final["chunks"])
    assert on_b.text == final["text"] == expand(SELECTION)
    assert final["action"] == "expand"
