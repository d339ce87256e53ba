"""The hierarchical pattern: plan -> subtasks as a DAG (independent ones in parallel) -> review each ->
retry with feedback, or reassign to an alternate -> aggregate the accepted results."""

from __future__ import annotations

from pydantic import BaseModel, Field, ValidationError

from shared.events import ObjectRef, ReviewVerdict, TaskCompleted, TaskFailed
from shared.workflow import HierarchicalWorkflow, WorkflowFile

from .decisions import Decision, add_task, complete, fail, new_task, retry_or_fail, take
from .state import RunState, Subtask, SubtaskState, TaskSlot


class Plan(BaseModel):
    """What a planner writes (output named `plan`, JSON)."""

    subtasks: list[Subtask] = Field(min_length=1)


class Verdict(BaseModel):
    """What a reviewer writes (output named `verdict`, JSON)."""

    accepted: bool
    feedback: str = ""


DOCS = {"planner": "plan", "review": "verdict"}  # which output the app must read before deciding


def parse_plan(raw: bytes, wf: HierarchicalWorkflow, input_names: set[str]) -> list[Subtask]:
    """Validate a plan: unique ids, known agents, known inputs and dependencies, no cycles."""
    if not raw:
        raise ValueError("no output named `plan` was written")
    try:
        plan = Plan.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ValueError(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    subs = plan.subtasks
    if len(subs) > wf.max_subtasks:
        raise ValueError(f"{len(subs)} subtasks, more than max_subtasks={wf.max_subtasks}")
    ids = [s.id for s in subs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate subtask ids in {ids}")
    allowed = set(wf.workers)
    for s in subs:
        if s.agent not in allowed:
            raise ValueError(
                f"subtask {s.id!r}: agent {s.agent!r} is not one of the workers {sorted(allowed)}"
            )
        for dep in s.depends_on:
            if dep not in ids:
                raise ValueError(f"subtask {s.id!r} depends on unknown subtask {dep!r}")
        for name in s.inputs:
            if name not in input_names and name not in ids:
                raise ValueError(f"subtask {s.id!r}: input {name!r} is neither a run input nor a subtask")
    deps = {s.id: set(s.depends_on) | {i for i in s.inputs if i in ids} for s in subs}
    done: set[str] = set()
    while len(done) < len(ids):
        ready = [i for i in ids if i not in done and deps[i] <= done]
        if not ready:
            raise ValueError(f"the plan has a dependency cycle among {sorted(set(ids) - done)}")
        done.update(ready)
    return subs


def start(state: RunState, wf: HierarchicalWorkflow, workflows: WorkflowFile) -> Decision:
    state.phase = "planning"
    task = new_task(
        state,
        workflows,
        task_id=f"{state.run_id}.plan",
        agent=wf.manager,
        inputs=state.inputs,
        instruction=str(state.params.get("goal", wf.description)),
    )
    add_task(state, task, "planner")
    return Decision(state=state, assign=[task])


def _deps(st: SubtaskState, state: RunState) -> set[str]:
    return set(st.spec.depends_on) | {i for i in st.spec.inputs if i in state.subtasks}


def _subtask_task(state: RunState, workflows: WorkflowFile, st: SubtaskState):
    inputs: dict[str, ObjectRef] = {}
    for name in st.spec.inputs:
        if name in state.inputs:
            inputs[name] = state.inputs[name]
    for dep in sorted(_deps(st, state)):
        for out, ref in state.subtasks[dep].outputs.items():
            inputs[f"{dep}.{out}"] = ref
    if st.feedback:
        inputs["feedback"] = st.feedback
    task = new_task(
        state,
        workflows,
        task_id=f"{state.run_id}.sub.{st.spec.id}.{st.agent}",
        agent=st.agent,
        inputs=inputs,
        instruction=st.spec.instruction,
        attempt=st.attempt,
        parent=f"{state.run_id}.plan",
        acceptance=st.spec.acceptance_criteria,
    )
    st.status = "running"
    st.total_attempts += 1
    return add_task(state, task, "subtask", st.spec.id)


def _progress(state: RunState, wf: HierarchicalWorkflow, workflows: WorkflowFile) -> Decision:
    """Start every subtask whose dependencies are accepted; aggregate when all are."""
    accepted = {i for i, st in state.subtasks.items() if st.status == "accepted"}
    tasks = [
        _subtask_task(state, workflows, st)
        for st in state.subtasks.values()
        if st.status == "pending" and _deps(st, state) <= accepted
    ]
    if tasks or len(accepted) < len(state.subtasks):
        return Decision(state=state, assign=tasks)
    results = {f"{i}.{name}": ref for i, st in state.subtasks.items() for name, ref in st.outputs.items()}
    if not wf.aggregator:
        return Decision(state=complete(state, results))
    state.phase = "aggregating"
    task = new_task(
        state,
        workflows,
        task_id=f"{state.run_id}.aggregate",
        agent=wf.aggregator,
        inputs=results,
        instruction="Integrate the accepted results.",
    )
    add_task(state, task, "aggregate")
    return Decision(state=state, assign=[task])


def _reject(
    state: RunState,
    wf: HierarchicalWorkflow,
    workflows: WorkflowFile,
    st: SubtaskState,
    reason: str,
    feedback: ObjectRef | None,
) -> Decision:
    """Send the work back with the feedback; after max_attempts, reassign; with nobody left, fail."""
    st.rejections.append(f"{st.agent} attempt {st.attempt}: {reason}")
    st.feedback = feedback
    if st.attempt < wf.max_attempts:
        st.attempt += 1
        st.status = "pending"
        return _progress(state, wf, workflows)
    st.tried.append(st.agent)
    candidates = [a for a in wf.alternates.get(st.spec.agent, []) if a not in st.tried]
    if candidates:
        state.history.append(
            f"subtask {st.spec.id} reassigned from {st.agent} to {candidates[0]} "
            f"after {st.attempt} rejected attempts"
        )
        st.agent, st.attempt, st.status = candidates[0], 1, "pending"
        return _progress(state, wf, workflows)
    st.status = "failed"
    history = "; ".join(st.rejections)
    return Decision(
        state=fail(
            state, f"subtask {st.spec.id!r} could not be done by anyone ({', '.join(st.tried)}): {history}"
        )
    )


def on_completed(
    state: RunState,
    wf: HierarchicalWorkflow,
    workflows: WorkflowFile,
    ev: TaskCompleted,
    docs: dict | None = None,
) -> Decision:
    slot = take(state, ev)
    docs = docs or {}
    if slot.role == "planner":
        try:
            subtasks = parse_plan(docs.get("plan", b""), wf, set(state.inputs))
        except ValueError as exc:
            return Decision(state=fail(state, f"the plan from {wf.manager} is invalid: {exc}"))
        state.subtasks = {s.id: SubtaskState(spec=s, agent=s.agent) for s in subtasks}
        state.phase = "executing"
        state.history.append(f"planned {len(subtasks)} subtasks")
        return _progress(state, wf, workflows)
    if slot.role == "aggregate":
        return Decision(state=complete(state, ev.outputs))
    st = state.subtasks[slot.key]
    if slot.role == "subtask":
        st.outputs = dict(ev.outputs)
        if not wf.reviewer:
            st.status = "accepted"
            return _progress(state, wf, workflows)
        st.status = "reviewing"
        task = new_task(
            state,
            workflows,
            task_id=f"{state.run_id}.review.{st.spec.id}.{st.agent}.{st.attempt}",
            agent=wf.reviewer,
            inputs=st.outputs,
            instruction=st.spec.instruction,
            acceptance=st.spec.acceptance_criteria,
            parent=slot.task.task_id,
            params={"subtask": st.spec.id, "worker": st.agent, "worker_attempt": st.attempt},
        )
        add_task(state, task, "review", st.spec.id)
        return Decision(state=state, assign=[task])
    # a review
    try:
        verdict = Verdict.model_validate_json(docs.get("verdict") or b"null")
    except ValidationError as exc:
        return Decision(
            state=fail(state, f"reviewer {wf.reviewer} wrote an invalid verdict: {exc.errors()[0]['msg']}")
        )
    note = ReviewVerdict(
        run_id=state.run_id,
        task_id=slot.task.parent_task_id or "",
        subtask=st.spec.id,
        agent=st.agent,
        accepted=verdict.accepted,
        feedback=verdict.feedback,
        feedback_ref=ev.outputs.get("verdict"),
        trace_id=state.trace_id,
        sender="supervisor",
    )
    if verdict.accepted:
        st.status = "accepted"
        decision = _progress(state, wf, workflows)
    else:
        decision = _reject(
            state, wf, workflows, st, verdict.feedback or "rejected", ev.outputs.get("verdict")
        )
    decision.notes.append(note)
    return decision


def on_failed(
    state: RunState, wf: HierarchicalWorkflow, workflows: WorkflowFile, ev: TaskFailed, slot: TaskSlot
) -> Decision:
    take(state, ev)
    if slot.role == "subtask":
        st = state.subtasks[slot.key]
        policy = wf.retry_policy(workflows.agents.get(ev.agent or slot.task.agent or ""))
        if policy.retries(ev.retryable, ev.error, st.attempt):
            state.history.append(f"subtask {st.spec.id} attempt {st.attempt} failed, retrying: {ev.error}")
            st.attempt, st.status = st.attempt + 1, "pending"
            return _progress(state, wf, workflows)
        st.attempt = wf.max_attempts  # out of attempts (or a permanent failure): an alternate, if any
        return _reject(state, wf, workflows, st, f"failed: {ev.error}", None)
    what = {
        "planner": f"planner {wf.manager}",
        "aggregate": f"aggregator {wf.aggregator}",
        "review": f"reviewer {wf.reviewer}",
    }.get(slot.role, f"subtask {slot.key}")
    return retry_or_fail(state, slot, ev, wf, workflows, what)


def on_human(state, wf, workflows, approved, text, response) -> Decision:
    return Decision.ignore("hierarchical workflows do not wait for people")
