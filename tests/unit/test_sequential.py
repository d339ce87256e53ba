"""The supervisor's sequential decisions, without a broker."""

from services.supervisor import sequential
from services.supervisor.state import RunState
from shared.events import ObjectRef, TaskCompleted, TaskFailed
from shared.workflow import parse_workflows

WF = parse_workflows("""
agents:
  a: {handler: "x:a", reads: [inputs/], writes: [drafts/]}
  b: {handler: "x:b", reads: [drafts/], writes: [published/]}
workflows:
  p: {pattern: sequential, stages: [a, b], max_attempts: 2}
""")
PIPE = WF.workflows["p"]


def ref(key):
    return ObjectRef(bucket="baton", key=key, version_id="v1", etag="e")


def started():
    state = RunState(
        run_id="r1",
        workflow="p",
        pattern="sequential",
        trace_id="t",
        inputs={"brief": ref("runs/r1/inputs/brief.md"), "secret": ref("runs/r1/private/k")},
    )
    task = sequential.stage_task(state, PIPE, WF)
    state.task_id = task.task_id
    return state, task


def test_first_task_gets_only_inputs_the_agent_may_read():
    _state, task = started()
    assert task.agent == "a" and task.stage == 0
    assert set(task.inputs) == {"brief"}
    assert task.output_prefix == "runs/r1/drafts/"


def test_completion_assigns_the_next_stage_with_previous_outputs():
    state, task = started()
    done = TaskCompleted(
        run_id="r1", task_id=task.task_id, agent="a", outputs={"outline": ref("runs/r1/drafts/o.md")}
    )
    decision = sequential.on_completed(state, PIPE, WF, done)
    assert decision.assign.agent == "b" and decision.assign.stage == 1
    assert set(decision.assign.inputs) == {"outline"}  # b reads drafts/ only
    assert decision.state.stage == 1 and not decision.state.dispatched


def test_last_completion_completes_the_run():
    state, task = started()
    state = sequential.on_completed(
        state,
        PIPE,
        WF,
        TaskCompleted(
            run_id="r1", task_id=task.task_id, agent="a", outputs={"o": ref("runs/r1/drafts/o.md")}
        ),
    ).state
    final = TaskCompleted(
        run_id="r1", task_id=state.task_id, agent="b", outputs={"art": ref("runs/r1/published/x.md")}
    )
    decision = sequential.on_completed(state, PIPE, WF, final)
    assert decision.state.status == "completed" and decision.assign is None
    assert set(decision.state.final) == {"art"}


def test_duplicate_or_stale_outcomes_are_ignored():
    state, task = started()
    stale = TaskCompleted(run_id="r1", task_id=task.task_id, attempt=2, agent="a")
    assert sequential.on_completed(state, PIPE, WF, stale).ignored
    other = TaskCompleted(run_id="r1", task_id="r1.9.x", agent="a")
    assert "stale or duplicate" in sequential.on_completed(state, PIPE, WF, other).ignored


def test_retryable_failure_retries_until_max_attempts_then_fails_with_history():
    state, task = started()
    first = sequential.on_failed(
        state, PIPE, WF, TaskFailed(run_id="r1", task_id=task.task_id, error="boom", retryable=True)
    )
    assert first.assign.attempt == 2
    second = sequential.on_failed(
        first.state,
        PIPE,
        WF,
        TaskFailed(run_id="r1", task_id=task.task_id, attempt=2, error="boom again", retryable=True),
    )
    assert second.state.status == "failed" and second.assign is None
    assert second.state.reason == "stage 0 (a) failed after 2 attempts: boom again"
    assert len(second.state.history) == 2


def test_permanent_failure_is_not_retried():
    state, task = started()
    decision = sequential.on_failed(
        state, PIPE, WF, TaskFailed(run_id="r1", task_id=task.task_id, error="bad key")
    )
    assert decision.state.status == "failed" and decision.assign is None


def test_published_names_follow_the_dropped_file():
    one = {"article": ref("runs/r1/published/x.md")}
    assert sequential.published_key("published/", "briefs/topic.md", one) == {"article": "published/topic.md"}
    two = {"a": ref("runs/r1/published/a.md"), "b": ref("runs/r1/published/b.txt")}
    assert sequential.published_key("out/", "briefs/t.md", two) == {"a": "out/t/a.md", "b": "out/t/b.txt"}
