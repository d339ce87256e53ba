"""`kind: a2a` agents: a stage handed to a remote A2A agent (a2a-sdk's server, tests/a2a_agents.py)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from baton import client
from shared.storage import Storage
from tests.helpers import of_type, wait_for_end

ROOT = Path(__file__).resolve().parents[2]
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


async def test_a_remote_agents_tasks_share_its_connections(settings, a2a_agents):
    """One client an agent (in each worker): tasks one after another reuse its idle connection, where a
    client a task opened a connection (and built a TLS context) each time."""
    echo = a2a_agents.behaviours["echo"]
    echo.clients.clear()
    for _ in range(4):
        _run_id, events = await _ended(settings, "a2a-echo")
        assert events[-1].type == "run.completed", events[-1]
    assert 1 <= len(echo.clients) <= 2, echo.clients  # two workers, one connection each at most


async def test_many_tasks_of_a_remote_agent_are_in_flight_at_once(settings, a2a_agents):
    """A task holds its connection while the remote agent streams: the shared client caps none (httpcore's
    pool would allow 10), so 24 tasks reach the agent together, as its `concurrency` (32) allows."""
    from tests.a2a_agents import TOGETHER

    runs = [await client.submit(settings, "a2a-together", {}) for _ in range(TOGETHER)]
    ends = await asyncio.gather(*(wait_for_end(settings, run_id, timeout=60) for run_id in runs))
    assert [events[-1].type for events in ends] == ["run.completed"] * TOGETHER, [
        events[-1].reason for events in ends if events[-1].type != "run.completed"
    ][:3]


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


async def _until(settings, run_id: str, type_: str, timeout: float = 30):
    async def find():
        async for event in client.follow(settings, run_id, block_ms=500):
            if event.type == type_:
                return event

    return await asyncio.wait_for(find(), timeout)


def _baton(stack, *args: str) -> subprocess.CompletedProcess:
    """The `baton` command, as the CLI's own users."""
    return subprocess.run(
        [sys.executable, "-m", "baton.cli", *args],
        env={**os.environ, **stack.service_env("cli")},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


async def test_a_remote_agents_question_waits_for_a_person_whose_answer_goes_on_the_same_remote_task(
    settings, stack, a2a_agents
):
    run_id = await client.submit(settings, "a2a-asks", {})
    asked = await _until(settings, run_id, "human.requested")
    assert asked.question == "remote-asks asks: asks: which style guide?"
    waiting = _baton(stack, "runs", "--waiting")
    assert run_id in waiting.stdout and "which style guide?" in waiting.stdout, waiting.stdout
    # Nothing waits in a worker: both batched workers are replaced while the run waits for the person.
    workers = [h for h in stack.procs if h.startswith("worker") and h != stack.per_message_worker]
    for handle in workers:
        stack.kill(handle, hard=True)
    for _ in workers:
        stack.start("worker")
    answered = _baton(stack, "respond", run_id, "--approve", "--text", "the house style guide")
    assert answered.returncode == 0, answered.stderr
    events = await wait_for_end(settings, run_id, timeout=60)
    assert events[-1].type == "run.completed", events[-1]
    asking, answering = of_type(events, "task.assigned")
    assert (asking.attempt, answering.attempt) == (1, 2) and answering.answer.text == "the house style guide"
    remote_task = answering.resume["a2a_task_id"]
    [question] = of_type(events, "task.input_required")
    assert question.resume["a2a_task_id"] == remote_task and question.attempt == 1
    assert not of_type(events, "task.failed")
    async with Storage.connect(settings) as storage:
        text = (await storage.get(events[-1].outputs["review"])).decode()
    # the remote agent got the answer as the next message on the task that asked, and finished it
    assert f"task {remote_task} context {answering.resume['a2a_context_id']}" in text
    assert "text: the house style guide" in text
    progress = [e.message for e in of_type(events, "task.progress") if e.attempt == 2]
    assert any("answer sent to" in m for m in progress) and any("writing the review" in m for m in progress)


async def test_a_run_cancelled_while_a_remote_agent_waits_for_a_person_ends_cancelled(settings, a2a_agents):
    run_id = await client.submit(settings, "a2a-asks", {})
    await _until(settings, run_id, "human.requested")
    await client.cancel(settings, run_id, reason="no answer today")
    events = await wait_for_end(settings, run_id, timeout=30)
    assert events[-1].type == "run.cancelled" and "no answer today" in events[-1].reason
    assert run_id not in [r["run_id"] for r in await client.list_runs(settings, waiting=True)]


async def test_cancelling_a_run_cancels_its_remote_task(settings, a2a_agents):
    run_id = await client.submit(settings, "a2a-slow-cancel", {})
    await _until(settings, run_id, "task.progress")  # the remote task exists
    slow = a2a_agents.behaviours["slow"]
    before = len(slow.cancelled)
    await client.cancel(settings, run_id)
    events = await wait_for_end(settings, run_id, timeout=30)
    assert events[-1].type == "run.cancelled"
    for _ in range(100):  # the worker sees the cancel within POLL_S and cancels the remote task
        if len(slow.cancelled) > before:
            break
        await asyncio.sleep(0.1)
    assert len(slow.cancelled) == before + 1


async def test_an_artifact_over_max_artifact_bytes_fails_the_task_permanently(settings, a2a_agents):
    _run_id, events = await _ended(settings, "a2a-huge")
    assert events[-1].type == "run.failed"
    assert "A2AArtifactTooLarge" in events[-1].reason and "4096 bytes" in events[-1].reason
    assert "max_artifact_bytes=1024" in events[-1].reason
    assert [f.retryable for f in of_type(events, "task.failed")] == [False]


async def test_an_artifact_url_on_the_agents_own_origin_is_fetched(settings, a2a_agents):
    run_id, events = await _ended(settings, "a2a-linked")
    assert events[-1].type == "run.completed", events[-1]
    async with Storage.connect(settings) as storage:
        body = await storage.get(events[-1].outputs["notes"])
    assert body == b"# notes.md, served by the agents' server\n"


async def test_an_artifact_url_elsewhere_on_the_workers_network_is_refused_permanently(settings, a2a_agents):
    """A remote agent cannot make the worker read its network (server-side request forgery): a URL on a
    loopback address that is not the agent's own origin is refused where it connects, naming the address
    and the setting, and not retried. (The same server by another name: fetched before the check.)"""
    why = await _refused(settings, "a2a-pointer", "A2AArtifactRefused")
    assert "the agent (127.0.0.1:" in why, why


async def test_a_card_naming_an_interface_elsewhere_on_the_workers_network_is_refused(settings, a2a_agents):
    """A remote agent's card cannot point the worker's messages (and its token) at another address on its
    network: an interface on a loopback address that is not the agent's own origin is refused where the
    connection would be made, naming the address and the setting, and not retried; nothing reached it.
    (The same server by another name: the task went there before the check.)"""
    why = await _refused(settings, "a2a-diverted", "A2AAddressRefused")
    assert "interface http://localhost:" in why, why
    assert a2a_agents.behaviours["diverted"].seen == {}


async def _refused(settings, workflow: str, error: str) -> str:
    """The run failed on `error`, once (permanent), naming the loopback address and the setting."""
    _run_id, events = await _ended(settings, workflow)
    assert events[-1].type == "run.failed"
    why = events[-1].reason
    assert error in why and "localhost resolves to 127.0.0.1 (loopback)" in why, why
    assert "BATON_A2A_FETCH_HOSTS" in why, why
    assert [f.retryable for f in of_type(events, "task.failed")] == [False]
    return why


async def test_a_token_the_remote_agent_refuses_is_a_permanent_error(settings, a2a_agents):
    _run_id, events = await _ended(settings, "a2a-badtoken")
    assert events[-1].type == "run.failed"
    assert "A2AUnauthorized" in events[-1].reason and "HTTP 401" in events[-1].reason
    assert "A2A_TEST_TOKEN" in events[-1].reason
    assert [f.retryable for f in of_type(events, "task.failed")] == [False]


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
