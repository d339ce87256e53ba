"""`kind: a2a` agents: a stage handed to a remote A2A agent (a2a-sdk's server, tests/a2a_agents.py)."""

from __future__ import annotations

import pytest

from baton import client
from shared.storage import Storage
from tests.helpers import of_type, wait_for_end

pytestmark = pytest.mark.e2e


async def _ended(settings, workflow: str, params: dict | None = None):
    run_id = await client.submit(settings, workflow, {}, params=params)
    events = await wait_for_end(settings, run_id, timeout=60)
    return run_id, events


async def test_a_remote_agent_reviews_the_draft_and_its_artifact_is_a_named_output(settings, a2a_agents):
    run_id, events = await _ended(settings, "a2a-review", {"tone": "friendly"})
    assert events[-1].type == "run.completed", events[-1]
    review = events[-1].outputs["review"]
    assert review.key == f"runs/{run_id}/reviews/review.md"
    async with Storage.connect(settings) as storage:
        text = (await storage.get(review)).decode()
    # the instruction, the params and the previous stage's file all reached the remote agent
    assert "text: Review the draft for clarity." in text
    assert '"friendly"' in text
    assert "file draft.txt (text/plain): draft " in text
    progress = [e.message for e in of_type(events, "task.progress") if e.agent == "remote-echo"]
    assert any("echo: writing the review" in m for m in progress), progress


async def test_a_remote_failure_is_retried(settings, a2a_agents):
    _run_id, events = await _ended(settings, "a2a-flaky")
    assert events[-1].type == "run.completed", events[-1]
    failed = of_type(events, "task.failed")
    assert len(failed) == 1 and failed[0].retryable and "overloaded" in failed[0].error


async def test_a_remote_failure_declared_permanent_is_not_retried(settings, a2a_agents):
    _run_id, events = await _ended(settings, "a2a-fail")
    assert events[-1].type == "run.failed"
    assert "A2ATaskFailed" in events[-1].reason and "overloaded" in events[-1].reason
    assert len(of_type(events, "task.failed")) == 1


async def test_a_rejection_is_permanent(settings, a2a_agents):
    _run_id, events = await _ended(settings, "a2a-reject")
    assert events[-1].type == "run.failed"
    assert "A2ATaskRejected" in events[-1].reason and "poetry" in events[-1].reason
    assert [f.retryable for f in of_type(events, "task.failed")] == [False]


async def test_a_remote_agent_asking_for_input_fails_the_task_with_its_question(settings, a2a_agents):
    _run_id, events = await _ended(settings, "a2a-asks")
    assert events[-1].type == "run.failed"
    assert "A2AInputRequired" in events[-1].reason and "which style guide?" in events[-1].reason


async def test_a_slow_remote_agent_is_stopped_at_the_time_limit(settings, a2a_agents):
    _run_id, events = await _ended(settings, "a2a-slow")
    assert events[-1].type == "run.failed"
    assert "time limit" in events[-1].reason


async def test_a_malformed_card_is_a_permanent_error(settings, a2a_agents):
    _run_id, events = await _ended(settings, "a2a-badcard")
    assert events[-1].type == "run.failed"
    assert "A2ACardError" in events[-1].reason and "badcard" in events[-1].reason
    assert len(of_type(events, "task.failed")) == 1


async def test_an_unreachable_agent_is_retried_then_fails_naming_its_url(settings, a2a_agents):
    _run_id, events = await _ended(settings, "a2a-gone")
    assert events[-1].type == "run.failed"
    assert "A2AUnreachable" in events[-1].reason and "127.0.0.1:1" in events[-1].reason
    assert [f.retryable for f in of_type(events, "task.failed")] == [True, True]
