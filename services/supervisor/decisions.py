"""What every pattern's decisions return, and the helpers they share. Pure: no I/O here."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

from shared.events import (
    BaseEvent,
    HumanAnswer,
    ObjectRef,
    TaskAssigned,
    TaskCompleted,
    TaskFailed,
    TaskInputRequired,
    new_id,
    utcnow,
)
from shared.runs import RunState, TaskSlot
from shared.workflow import AgentSpec, WorkflowFile
from shared.workspace import run_prefix


@dataclass
class HumanRequest:
    """Ask a person: the app writes the request file and records the event."""

    task_id: str
    question: str
    inputs: dict[str, ObjectRef]
    key: str = ""
    on_reject: str = "fail"
    agent: str | None = None  # an agent's question: the answer goes back to its task (`answer_agent`)


@dataclass
class Decision:
    """A new state and what to send, or nothing (with why)."""

    state: RunState | None = None
    assign: list[TaskAssigned] = field(default_factory=list)
    human: HumanRequest | None = None
    ignored: str | None = None
    notes: list = field(default_factory=list)  # events for the run's stream (e.g. review verdicts)
    copies: list[tuple[ObjectRef, str]] = field(default_factory=list)  # server-side copies to make
    retry: bool = False  # the assigned tasks are retries: publish them after the workflow's backoff
    human_event: BaseEvent | None = None  # set by the engine once the request file is written
    encoded: dict[str, str] = field(default_factory=dict)  # the engine's JSON of each task, sent as is

    @staticmethod
    def ignore(why: str) -> Decision:
        return Decision(ignored=why)


def readable(state: RunState, refs: dict[str, ObjectRef], spec: AgentSpec | None) -> dict[str, ObjectRef]:
    """Only the refs an agent may read (its `reads` prefixes inside the run's workspace)."""
    if spec is None or spec.reads is None:
        return dict(refs)
    prefix = run_prefix(state.run_id)
    return {n: r for n, r in refs.items() if any(r.key.startswith(prefix + p) for p in spec.reads)}


def new_task(
    state: RunState,
    workflows: WorkflowFile,
    *,
    task_id: str,
    agent: str | None,
    inputs: dict[str, ObjectRef],
    instruction: str = "",
    stage: int = 0,
    attempt: int = 1,
    intent: str | None = None,
    parent: str | None = None,
    acceptance: str | None = None,
    params: dict | None = None,
) -> TaskAssigned:
    spec = workflows.agents.get(agent) if agent else None
    writes = spec.writes[0] if spec else "outputs/"
    return TaskAssigned(
        run_id=state.run_id,
        task_id=task_id,
        parent_task_id=parent,
        attempt=attempt,
        trace_id=state.trace_id,
        sender="supervisor",
        workflow=state.workflow,
        stage=stage,
        agent=agent,
        intent=intent,
        instruction=instruction,
        inputs=readable(state, inputs, spec),
        output_prefix=run_prefix(state.run_id) + writes,
        acceptance_criteria=acceptance,
        params={**state.params, **(params or {})},
    )


def add_task(state: RunState, task: TaskAssigned, role: str, key: str = "") -> TaskAssigned:
    state.tasks[task.task_id] = TaskSlot(task=task, role=role, key=key)
    return task


def outstanding(state: RunState, ev) -> TaskSlot | str:
    """The slot an outcome belongs to, or why it does not belong to any."""
    if not state.active:
        return f"run is already {state.status}"
    slot = state.tasks.get(ev.task_id)
    if slot is None or slot.task.attempt != ev.attempt:
        return f"stale or duplicate outcome for {ev.task_id} attempt {ev.attempt}"
    return slot


def take(state: RunState, ev) -> TaskSlot:
    """Remove the outcome's slot from the outstanding tasks and count its usage."""
    slot = state.tasks.pop(ev.task_id)
    if isinstance(ev, TaskCompleted):
        state.usage = state.usage + ev.usage
    return slot


def published_key(publish_to: str, trigger_key: str, outputs: dict) -> dict[str, str]:
    """Where a triggered run's outputs are copied: `briefs/topic.md` -> `published/topic.md`."""
    stem = posixpath.splitext(posixpath.basename(trigger_key))[0]
    if len(outputs) == 1:
        ((name, ref),) = outputs.items()
        return {name: f"{publish_to}{stem}{posixpath.splitext(ref.key)[1]}"}
    return {name: f"{publish_to}{stem}/{posixpath.basename(ref.key)}" for name, ref in outputs.items()}


def complete(state: RunState, final: dict[str, ObjectRef], ended_by: str | None = None) -> RunState:
    state.status, state.final, state.ended_by, state.waiting = "completed", dict(final), ended_by, None
    state.tasks.clear()
    return state


def fail(state: RunState, reason: str) -> RunState:
    state.status, state.reason, state.waiting = "failed", reason, None
    state.tasks.clear()
    return state


def retry_or_fail(
    state: RunState, slot: TaskSlot, ev: TaskFailed, wf, workflows: WorkflowFile, what: str
) -> Decision:
    """A failed task: retried as a new attempt if retryable and attempts remain, else the run fails.

    The worker says whether an error is retryable; the agent's or the workflow's `permanent_errors` can
    overrule it, and the agent's or the workflow's `max_attempts` bounds the attempts.
    """
    policy = wf.retry_policy(workflows.agents.get(ev.agent or slot.task.agent or ""))
    state.note(f"{what} attempt {ev.attempt} failed: {ev.error}")
    if policy.retries(ev.retryable, ev.error, ev.attempt - slot.answers):  # (an answer is no retry)
        task = slot.task.model_copy(
            update={"attempt": ev.attempt + 1, "event_id": new_id(), "created_at": utcnow()}
        )
        add_task(state, task, slot.role, slot.key)
        return Decision(state=state, assign=[task], retry=True)
    tries = f"{ev.attempt} attempt{'s' if ev.attempt > 1 else ''}"
    return Decision(state=fail(state, f"{what} failed after {tries}: {ev.error}"))


def backoff(base: float, cap: float, attempt: int, rand: float) -> float:
    """Seconds to wait before `attempt` (2, 3, ...): exponential, capped, with jitter in [50%, 100%]."""
    delay = min(cap, base * 2 ** max(attempt - 2, 0))
    return delay * (0.5 + rand / 2)


# --- an agent asks a person (the same request, wait and response as a workflow's `human` step) ---------
def agent_asks(state: RunState, slot: TaskSlot, ev: TaskInputRequired) -> Decision:
    """The task's agent needs a person's answer: the run waits for it, or, if it already waits for
    another answer, asks next (`ask_next`). The slot stays outstanding, with what the agent needs to go on."""
    slot.question, slot.resume = ev.question or "(no question given)", dict(ev.resume)
    state.note(f"{ev.agent} asks a person on attempt {ev.attempt}: {slot.question}")
    if state.status == "waiting_for_human":
        state.asks.append(ev.task_id)
        return Decision(state=state)
    return Decision(state=state, human=ask_for(slot))


def ask_for(slot: TaskSlot) -> HumanRequest:
    task = slot.task
    return HumanRequest(
        task_id=task.task_id,
        question=f"{task.agent} asks: {slot.question}",
        inputs=task.inputs,
        agent=task.agent,
    )


def answer_agent(state: RunState, approved: bool, text: str, response: ObjectRef) -> Decision:
    """A person answered an agent's question: its task goes back to it with the answer and what it kept
    (`resume`), as the next attempt (the workers' done-marks are per attempt), not counted as a retry."""
    task_id = state.waiting.task_id
    state.waiting, state.status = None, "running"
    slot = state.tasks.get(task_id)
    if slot is None or slot.question is None:
        state.note(f"an answer for task {task_id}, which no longer waits for one")
        return Decision(state=state)
    answer = HumanAnswer(approved=approved, text=text, response=response)
    task = slot.task.model_copy(
        update={
            "attempt": slot.task.attempt + 1,
            "event_id": new_id(),
            "created_at": utcnow(),
            "answer": answer,
            "resume": dict(slot.resume),
        }
    )
    slot.task, slot.question, slot.answers, slot.since = task, None, slot.answers + 1, utcnow()
    state.note(f"{task.agent} got a person's answer ({'approved' if approved else 'rejected'})")
    return Decision(state=state, assign=[task])


def ask_next(state: RunState, decision: Decision) -> Decision:
    """Once a run stops waiting, the next agent's question that waited behind the answered one."""
    while decision.state is state and state.status == "running" and decision.human is None and state.asks:
        slot = state.tasks.get(state.asks.pop(0))
        if slot is not None and slot.question is not None:
            decision.human = ask_for(slot)
    return decision
