"""The hierarchical pattern: plan, parallel subtasks, review, retry with feedback, reassign, aggregate."""

from __future__ import annotations

import json

import pytest

from shared.storage import Storage
from tests.helpers import of_type, run

pytestmark = pytest.mark.e2e


def sub(id_, criteria="accept", agent="maker", instruction="", **kw):
    return {"id": id_, "agent": agent, "instruction": instruction, "acceptance_criteria": criteria, **kw}


def windows(events, prefix):
    """(start, end) of every attempt of subtasks whose task id contains `prefix`."""
    starts = {
        (e.task_id, e.attempt): e.created_at for e in of_type(events, "task.started") if prefix in e.task_id
    }
    ends = {
        (e.task_id, e.attempt): e.created_at for e in of_type(events, "task.completed") if prefix in e.task_id
    }
    return {k: (starts[k], ends[k]) for k in starts}


async def test_independent_subtasks_run_concurrently_on_two_workers(settings):
    plan = [sub("a", instruction="sleep=1.5"), sub("b", instruction="sleep=1.5")]
    _run_id, events = await run(settings, "build", params={"plan": plan}, timeout=40)
    assert events[-1].type == "run.completed", events[-1]
    spans = windows(events, ".sub.")
    (a_start, a_end), (b_start, b_end) = spans.values()
    assert a_start < b_end and b_start < a_end, spans  # the time windows overlap
    workers = {e.sender for e in of_type(events, "task.started") if ".sub." in e.task_id}
    assert len(workers) == 2
    async with Storage.connect(settings) as storage:
        final = (await storage.get(events[-1].outputs["final"])).decode()
    assert "subtask=a" in final and "subtask=b" in final


async def test_dependent_subtask_waits_for_its_input_and_sees_it(settings):
    plan = [sub("a"), sub("b", inputs=["a"])]
    _run_id, events = await run(settings, "build", params={"plan": plan})
    assert events[-1].type == "run.completed", events[-1]
    assigned = {
        e.task_id.split(".sub.")[1]: e for e in of_type(events, "task.assigned") if ".sub." in e.task_id
    }
    assert "a.result" in assigned["b.maker"].inputs
    a_done = next(e for e in of_type(events, "task.completed") if ".sub.a." in e.task_id)
    assert assigned["b.maker"].created_at >= a_done.created_at


async def test_rejected_once_then_accepted_with_the_feedback(settings):
    _run_id, events = await run(settings, "build", params={"plan": [sub("a", criteria="accept-after:2")]})
    assert events[-1].type == "run.completed", events[-1]
    verdicts = of_type(events, "review.verdict")
    assert [v.accepted for v in verdicts] == [False, True]
    second = [e for e in of_type(events, "task.assigned") if ".sub.a." in e.task_id][-1]
    assert second.attempt == 2 and "feedback" in second.inputs


async def test_rejected_max_attempts_times_is_reassigned_to_an_alternate(settings):
    _run_id, events = await run(settings, "build", params={"plan": [sub("a", criteria="accept-by:maker2")]})
    assert events[-1].type == "run.completed", events[-1]
    agents = [e.agent for e in of_type(events, "task.assigned") if ".sub.a." in e.task_id]
    assert agents == ["maker", "maker", "maker2"]
    assert [v.accepted for v in of_type(events, "review.verdict")] == [False, False, True]


async def test_a_subtask_nobody_can_do_fails_the_run_with_its_history(settings):
    _run_id, events = await run(settings, "build", params={"plan": [sub("a", criteria="never")]})
    assert events[-1].type == "run.failed"
    reason = events[-1].reason
    assert "subtask 'a' could not be done by anyone (maker, maker2)" in reason
    assert reason.count("not good enough") == 4  # 2 attempts each for maker and maker2


async def test_an_invalid_plan_fails_the_run_clearly(settings):
    plan = [sub("a", depends_on=["b"]), sub("b", depends_on=["a"])]
    _run_id, events = await run(settings, "build", params={"plan": plan})
    assert events[-1].type == "run.failed"
    assert "dependency cycle" in events[-1].reason
    _run_id, events = await run(settings, "build", params={"plan": [sub("a", agent="stranger")]})
    assert "agent 'stranger' is not one of the workers" in events[-1].reason


async def test_a_plan_larger_than_the_supervisor_reads_fails_the_run_with_the_reason(settings):
    """The supervisor reads a plan to decide (DOC_MAX_BYTES at most): a runaway planner's 65 MiB plan fails
    the run by name instead of being read into the supervisor's memory."""
    from services.supervisor.results import DOC_MAX_BYTES

    pad = DOC_MAX_BYTES + 2**20
    _run_id, events = await run(settings, "build", params={"plan": [sub("a")], "pad": pad}, timeout=60)
    assert events[-1].type == "run.failed"
    size = len(json.dumps({"subtasks": [sub("a")]})) + pad
    assert f"the plan from planner is {size:,} bytes" in events[-1].reason, events[-1].reason
    assert f"more than the {DOC_MAX_BYTES:,} the supervisor reads" in events[-1].reason


async def test_a_subtask_with_many_dependents_starts_them_all_when_accepted(settings):
    """Accepting one subtask touches its dependents: a handful are read one by one, more all at once."""
    plan = [sub("root")] + [sub(f"leaf{i}", inputs=["root"]) for i in range(30)]
    _run_id, events = await run(settings, "build", params={"plan": plan}, timeout=90)
    assert events[-1].type == "run.completed", events[-1]
    leaves = {e.task_id for e in of_type(events, "task.completed") if ".sub.leaf" in e.task_id}
    assert len(leaves) == 30
