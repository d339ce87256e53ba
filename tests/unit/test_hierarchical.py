"""The supervisor's hierarchical decisions for a failing subtask, and the retry backoff, without a broker."""

import json

import pytest

from services.supervisor import hierarchical
from services.supervisor.decisions import backoff, outstanding
from services.worker.runtime import AgentContext
from shared.events import ObjectRef, TaskCompleted, TaskFailed
from shared.runs import RunState
from shared.workflow import parse_workflows

WF = parse_workflows("""
agents:
  planner: {handler: "x:plan", writes: [plans/]}
  flaky: {handler: "x:flaky", writes: [work/]}
  broken: {handler: "x:broken", writes: [work/]}
  alt: {handler: "x:alt", writes: [work/]}
workflows:
  b:
    pattern: hierarchical
    manager: planner
    workers: [flaky, broken, alt]
    max_attempts: 2
    retry_backoff: 1.0
    alternates: {broken: [alt]}
""")
BUILD = WF.workflows["b"]


def planned(agent: str):
    """A run whose plan has one subtask `x` for `agent`: its state and the subtask's task."""
    state = RunState(run_id="r1", workflow="b", pattern="hierarchical", trace_id="t")
    (plan_task,) = hierarchical.start(state, BUILD, WF).assign
    plan = json.dumps({"subtasks": [{"id": "x", "agent": agent}]}).encode()
    done = TaskCompleted(run_id="r1", task_id=plan_task.task_id, agent="planner")
    decision = hierarchical.on_completed(state, BUILD, WF, done, {"plan": plan})
    (task,) = decision.assign
    return decision.state, task


def failed(task, retryable: bool, error: str = "ConnectionError: flaky") -> TaskFailed:
    return TaskFailed(
        run_id="r1",
        task_id=task.task_id,
        attempt=task.attempt,
        agent=task.agent,
        retryable=retryable,
        error=error,
    )


def on_failed(state, task, retryable, error="ConnectionError: flaky"):
    ev = failed(task, retryable, error)
    return hierarchical.on_failed(state, BUILD, WF, ev, outstanding(state, ev))


def test_a_retryable_subtask_failure_is_retried_by_the_same_agent_after_a_backoff():
    state, task = planned("flaky")
    decision = on_failed(state, task, retryable=True)
    (again,) = decision.assign
    assert decision.retry  # the engine times it: sent after the retry policy's backoff, not at once
    assert (again.task_id, again.agent, again.attempt) == (task.task_id, "flaky", 2)
    assert decision.state.subtasks["x"].attempt == 2


def test_a_late_outcome_of_the_first_attempt_is_not_the_retrys():
    state, task = planned("flaky")
    state = on_failed(state, task, retryable=True).state
    assert isinstance(outstanding(state, failed(task, retryable=True)), str)


def test_a_permanent_subtask_failure_goes_to_an_alternate_at_once():
    state, task = planned("broken")
    decision = on_failed(state, task, retryable=False, error="ValueError: cannot")
    (reassigned,) = decision.assign
    assert not decision.retry
    assert (reassigned.agent, reassigned.attempt) == ("alt", 1)
    assert any("reassigned from broken to alt" in note for note in decision.state.history)


def test_a_permanent_subtask_failure_with_no_alternate_fails_the_run_naming_the_subtask():
    state, task = planned("flaky")
    decision = on_failed(state, task, retryable=False, error="ValueError: cannot")
    assert not decision.assign and decision.state.status == "failed"
    assert decision.state.reason.startswith("subtask 'x' could not be done by anyone (flaky)")
    assert "ValueError: cannot" in decision.state.reason


def test_a_subtask_out_of_retries_fails_the_run():
    state, task = planned("flaky")
    decision = on_failed(state, task, retryable=True)
    decision = on_failed(decision.state, decision.assign[0], retryable=True)
    assert decision.state.status == "failed" and "subtask 'x'" in decision.state.reason


@pytest.mark.parametrize(
    ("attempt", "rand", "cap", "expected"),
    [(2, 0.0, 30, 0.5), (2, 1.0, 30, 1.0), (3, 1.0, 30, 2.0), (4, 0.0, 30, 2.0), (5, 1.0, 3, 3.0)],
)
def test_the_backoff_doubles_per_attempt_with_jitter_and_a_cap(attempt, rand, cap, expected):
    assert backoff(1.0, cap, attempt, rand) == expected


REVIEWED = parse_workflows("""
agents:
  planner: {handler: "x:plan", writes: [plans/]}
  maker: {handler: "x:make", writes: [work/]}
  checker: {handler: "x:check", writes: [reviews/]}
  editor: {handler: "x:edit", writes: [published/]}
workflows:
  r:
    pattern: hierarchical
    manager: planner
    workers: [maker]
    reviewer: checker
    aggregator: editor
""")


def context(task) -> AgentContext:
    return AgentContext(task, task.agent, REVIEWED.agents[task.agent], storage=None)


def test_a_handler_finds_the_plan_subtask_it_does_or_reviews_in_ctx_subtask():
    wf = REVIEWED.workflows["r"]
    state = RunState(run_id="r-7.x", workflow="r", pattern="hierarchical", trace_id="t")
    (plan_task,) = hierarchical.start(state, wf, REVIEWED).assign
    assert context(plan_task).subtask is None
    subtasks = [{"id": "intro_1", "agent": "maker"}, {"id": "a-b", "agent": "maker"}]
    done = TaskCompleted(run_id=state.run_id, task_id=plan_task.task_id, agent="planner")
    plan = json.dumps({"subtasks": subtasks}).encode()
    decision = hierarchical.on_completed(state, wf, REVIEWED, done, {"plan": plan})
    assert {context(t).subtask for t in decision.assign} == {"intro_1", "a-b"}

    work = next(t for t in decision.assign if t.task_id.endswith(".a-b.maker"))
    ref = ObjectRef(bucket="b", key=f"runs/{state.run_id}/work/a-b.txt", version_id="v1", etag="e")
    done = TaskCompleted(run_id=state.run_id, task_id=work.task_id, agent="maker", outputs={"result": ref})
    (review,) = hierarchical.on_completed(decision.state, wf, REVIEWED, done).assign
    assert review.agent == "checker"
    assert context(review).subtask == "a-b"
    assert (context(review).params["worker"], context(review).params["worker_attempt"]) == ("maker", 1)
