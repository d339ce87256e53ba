"""The supervisor's sequential decisions, without a broker."""

from services.supervisor import sequential
from services.supervisor.decisions import outstanding, published_key
from shared.events import ObjectRef, TaskCompleted, TaskFailed
from shared.runs import HumanWait, RunState
from shared.workflow import parse_workflows

WF = parse_workflows("""
agents:
  a: {handler: "x:a", reads: [inputs/], writes: [drafts/]}
  b: {handler: "x:b", reads: [drafts/], writes: [published/]}
workflows:
  p: {pattern: sequential, stages: [a, b], max_attempts: 2}
  h: {pattern: sequential, stages: [a, {agent: human, instruction: "ok?", on_reject: a}, b]}
""")
PIPE = WF.workflows["p"]


def ref(key):
    return ObjectRef(bucket="baton", key=key, version_id="v1", etag="e")


def started(wf=PIPE):
    state = RunState(
        run_id="r1",
        workflow="p",
        pattern="sequential",
        trace_id="t",
        inputs={"brief": ref("runs/r1/inputs/brief.md"), "secret": ref("runs/r1/private/k")},
    )
    decision = sequential.start(state, wf, WF)
    return decision.state, decision.assign[0]


def done(task, agent, outputs, attempt=1):
    return TaskCompleted(run_id="r1", task_id=task.task_id, attempt=attempt, agent=agent, outputs=outputs)


def test_first_task_gets_only_inputs_the_agent_may_read():
    state, task = started()
    assert task.agent == "a" and task.stage == 0
    assert set(task.inputs) == {"brief"}
    assert task.output_prefix == "runs/r1/drafts/"


def test_completion_assigns_the_next_stage_with_previous_outputs():
    state, task = started()
    decision = sequential.on_completed(
        state, PIPE, WF, done(task, "a", {"outline": ref("runs/r1/drafts/o.md")})
    )
    (nxt,) = decision.assign
    assert nxt.agent == "b" and nxt.stage == 1
    assert set(nxt.inputs) == {"outline"}  # b reads drafts/ only
    assert list(decision.state.tasks) == [nxt.task_id]


def test_last_completion_completes_the_run():
    state, task = started()
    d = sequential.on_completed(state, PIPE, WF, done(task, "a", {"o": ref("runs/r1/drafts/o.md")}))
    final = sequential.on_completed(
        d.state, PIPE, WF, done(d.assign[0], "b", {"art": ref("runs/r1/published/x.md")})
    )
    assert final.state.status == "completed" and final.assign == []
    assert set(final.state.final) == {"art"}


def test_duplicate_or_stale_outcomes_are_not_outstanding():
    state, task = started()
    assert "stale or duplicate" in outstanding(state, done(task, "a", {}, attempt=2))
    other = TaskCompleted(run_id="r1", task_id="r1.9.x", agent="a")
    assert "stale or duplicate" in outstanding(state, other)
    state.status = "completed"
    assert outstanding(state, done(task, "a", {})) == "run is already completed"


def test_retryable_failure_retries_until_max_attempts_then_fails_with_history():
    state, task = started()
    slot = state.tasks[task.task_id]
    first = sequential.on_failed(
        state, PIPE, WF, TaskFailed(run_id="r1", task_id=task.task_id, error="boom", retryable=True), slot
    )
    assert first.assign[0].attempt == 2
    slot = first.state.tasks[task.task_id]
    second = sequential.on_failed(
        first.state,
        PIPE,
        WF,
        TaskFailed(run_id="r1", task_id=task.task_id, attempt=2, error="boom again", retryable=True),
        slot,
    )
    assert second.state.status == "failed" and second.assign == []
    assert second.state.reason == "stage 0 (a) failed after 2 attempts: boom again"
    assert len(second.state.history) == 2


def test_permanent_failure_is_not_retried():
    state, task = started()
    decision = sequential.on_failed(
        state, PIPE, WF, TaskFailed(run_id="r1", task_id=task.task_id, error="bad"), state.tasks[task.task_id]
    )
    assert decision.state.status == "failed" and decision.assign == []


def test_human_stage_asks_and_a_rejection_goes_back_to_the_declared_stage():
    wf = WF.workflows["h"]
    state, task = started(wf)
    d = sequential.on_completed(state, wf, WF, done(task, "a", {"o": ref("runs/r1/drafts/o.md")}))
    assert d.human is not None and d.human.question == "ok?" and d.assign == []
    d.state.status = "waiting_for_human"
    d.state.waiting = HumanWait(
        task_id=d.human.task_id, question="ok?", request=ref("r"), key="1", on_reject="a"
    )
    back = sequential.on_human(d.state, wf, WF, False, "too short", ref("runs/r1/human/responses/x.json"))
    (redo,) = back.assign
    assert redo.agent == "a" and redo.stage == 0 and redo.task_id != task.task_id  # a new task, not a replay
    assert back.state.status == "running" and "feedback" in back.state.outputs


def test_published_names_follow_the_dropped_file():
    one = {"article": ref("runs/r1/published/x.md")}
    assert published_key("published/", "briefs/topic.md", one) == {"article": "published/topic.md"}
    two = {"a": ref("runs/r1/published/a.md"), "b": ref("runs/r1/published/b.txt")}
    assert published_key("out/", "briefs/t.md", two) == {"a": "out/t/a.md", "b": "out/t/b.txt"}
