"""An agent's question to a person (`task.input_required`), decided without a broker."""

from services.supervisor import sequential
from services.supervisor.decisions import add_task, agent_asks, answer_agent, ask_next, outstanding
from shared.events import ObjectRef, TaskFailed, TaskInputRequired
from shared.runs import HumanWait, RunState
from shared.workflow import parse_workflows

WF = parse_workflows("""
agents:
  a: {handler: "x:a", writes: [drafts/]}
workflows:
  p: {pattern: sequential, stages: [a], max_attempts: 2}
""")
PIPE = WF.workflows["p"]
RESPONSE = ObjectRef(bucket="baton", key="runs/r1/human/responses/1.json", version_id="v1")


def asking():
    state = RunState(run_id="r1", workflow="p", pattern="sequential", trace_id="t")
    task = sequential.start(state, PIPE, WF).assign[0]
    ev = TaskInputRequired(
        run_id="r1", task_id=task.task_id, agent="a", question="which style?", resume={"a2a_task_id": "x"}
    )
    return state, task, ev


def waiting(state, decision):
    """What the engine does with a decision's human request (`Engine.ask`)."""
    h = decision.human
    state.status = "waiting_for_human"
    state.waiting = HumanWait(task_id=h.task_id, question=h.question, request=RESPONSE, agent=h.agent)


def test_a_question_asks_a_person_and_keeps_the_task_outstanding():
    state, task, ev = asking()
    decision = agent_asks(state, outstanding(state, ev), ev)
    assert decision.human.question == "a asks: which style?" and decision.human.agent == "a"
    assert not decision.assign
    assert state.tasks[task.task_id].question == "which style?"
    assert state.tasks[task.task_id].resume == {"a2a_task_id": "x"}


def test_the_answer_is_the_next_attempt_with_the_answer_and_resume_and_is_no_retry():
    state, task, ev = asking()
    waiting(state, agent_asks(state, outstanding(state, ev), ev))
    decision = answer_agent(state, True, "the house style", RESPONSE)
    [again] = decision.assign
    assert state.status == "running" and state.waiting is None
    assert again.attempt == 2 and again.answer.text == "the house style" and again.answer.approved
    assert again.resume == {"a2a_task_id": "x"} and state.tasks[task.task_id].question is None
    # max_attempts is 2, yet the answer's attempt failing is retried: an answer is not a retry
    failed = TaskFailed(run_id="r1", task_id=task.task_id, attempt=2, agent="a", error="x", retryable=True)
    retried = sequential.on_failed(state, PIPE, WF, failed, outstanding(state, failed))
    assert [t.attempt for t in retried.assign] == [3]


def test_a_second_question_waits_for_the_first_answer():
    state, task, ev = asking()
    waiting(state, agent_asks(state, outstanding(state, ev), ev))
    other = task.model_copy(update={"task_id": "r1.other"})
    add_task(state, other, "stage", "0")  # (a second task in flight, as in a hierarchical fan-out)
    second = ev.model_copy(update={"task_id": "r1.other", "question": "which audience?"})
    decision = agent_asks(state, outstanding(state, second), second)
    assert decision.human is None and state.asks == ["r1.other"]
    decision = ask_next(state, answer_agent(state, True, "house", RESPONSE))
    assert decision.human.question == "a asks: which audience?" and decision.human.task_id == "r1.other"
    assert [t.task_id for t in decision.assign] == [task.task_id] and state.asks == []
