"""The hierarchical pattern: plan -> subtasks as a DAG (independent ones in parallel) -> review each ->
retry with feedback, or reassign to an alternate -> aggregate the accepted results."""

from __future__ import annotations

from pydantic import BaseModel, Field, ValidationError

from shared.events import ObjectRef, ReviewVerdict, TaskCompleted, TaskFailed
from shared.runs import RunState, Subtask, SubtaskState, TaskSlot, review_task_id, subtask_task_id
from shared.workflow import HierarchicalWorkflow, WorkflowFile

from .decisions import Decision, add_task, complete, fail, new_task, retry_or_fail, take


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
    known = set(ids)
    if len(known) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1}) if len(ids) < 1000 else "(several)"
        raise ValueError(f"duplicate subtask ids: {dupes}")
    allowed = set(wf.workers)
    for s in subs:
        if s.agent not in allowed:
            raise ValueError(
                f"subtask {s.id!r}: agent {s.agent!r} is not one of the workers {sorted(allowed)}"
            )
        for dep in s.depends_on:
            if dep not in known:
                raise ValueError(f"subtask {s.id!r} depends on unknown subtask {dep!r}")
        for name in s.inputs:
            if name not in input_names and name not in known:
                raise ValueError(f"subtask {s.id!r}: input {name!r} is neither a run input nor a subtask")
    # Kahn's algorithm: linear in the plan's size, whatever its shape
    waiting = {s.id: len(_deps(s, known)) for s in subs}
    dependents: dict[str, list[str]] = {}
    for s in subs:
        for dep in _deps(s, known):
            dependents.setdefault(dep, []).append(s.id)
    ready = [i for i, n in waiting.items() if n == 0]
    done = 0
    while ready:
        current = ready.pop()
        done += 1
        for nxt in dependents.get(current, ()):
            waiting[nxt] -= 1
            if waiting[nxt] == 0:
                ready.append(nxt)
    if done < len(ids):
        stuck = sorted(i for i, n in waiting.items() if n > 0)
        raise ValueError(f"the plan has a dependency cycle among {stuck[:20]}")
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


def _deps(spec: Subtask, ids) -> set[str]:
    return set(spec.depends_on) | {i for i in spec.inputs if i in ids}


def _subtask_task(state: RunState, workflows: WorkflowFile, st: SubtaskState):
    """The task for a subtask whose dependencies are accepted (their outputs are its inputs)."""
    inputs: dict[str, ObjectRef] = {}
    deps = set(st.spec.depends_on)
    for name in st.spec.inputs:
        if name in state.inputs:
            inputs[name] = state.inputs[name]
        else:
            deps.add(name)  # (parse_plan checked: a run input or a subtask)
    for dep in sorted(deps):
        for out, ref in state.subtasks[dep].outputs.items():
            inputs[f"{dep}.{out}"] = ref
    if st.feedback:
        inputs["feedback"] = st.feedback
    task = new_task(
        state,
        workflows,
        task_id=subtask_task_id(state.run_id, st.spec.id, st.agent),
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


def _accept(state: RunState, wf: HierarchicalWorkflow, workflows: WorkflowFile, st: SubtaskState) -> Decision:
    """A subtask is accepted: start the subtasks that waited only for it; aggregate after the last one.

    Touches only this subtask's dependents (a hop's cost does not grow with the plan), and the whole plan
    once, to gather the results."""
    st.status = "accepted"
    state.n_accepted += 1
    tasks = []
    for dep_id in st.dependents:
        dependent = state.subtasks[dep_id]
        dependent.waiting_on -= 1
        if dependent.waiting_on == 0 and dependent.status == "pending":
            tasks.append(_subtask_task(state, workflows, dependent))
    if state.n_accepted < state.n_subtasks:
        return Decision(state=state, assign=tasks)
    results = {f"{i}.{name}": ref for i, s in state.subtasks.items() for name, ref in s.outputs.items()}
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


def _again(state: RunState, workflows: WorkflowFile, st: SubtaskState, retry: bool = False) -> Decision:
    """The subtask's next attempt (its dependencies were accepted before its first)."""
    return Decision(state=state, assign=[_subtask_task(state, workflows, st)], retry=retry)


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
        return _again(state, workflows, st)
    st.tried.append(st.agent)
    candidates = [a for a in wf.alternates.get(st.spec.agent, []) if a not in st.tried]
    if candidates:
        state.note(
            f"subtask {st.spec.id} reassigned from {st.agent} to {candidates[0]} "
            f"after {st.attempt} rejected attempts"
        )
        st.agent, st.attempt = candidates[0], 1
        return _again(state, workflows, st)
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
        ids = {s.id for s in subtasks}
        plan = {s.id: SubtaskState(spec=s, agent=s.agent) for s in subtasks}
        for st in plan.values():
            deps = _deps(st.spec, ids)
            st.waiting_on = len(deps)
            for dep in sorted(deps):
                plan[dep].dependents.append(st.spec.id)
        for sid, st in plan.items():
            state.subtasks[sid] = st
        state.n_subtasks, state.n_accepted = len(plan), 0
        state.phase = "executing"
        state.note(f"planned {len(subtasks)} subtasks")
        ready = [_subtask_task(state, workflows, st) for st in plan.values() if st.waiting_on == 0]
        return Decision(state=state, assign=ready)
    if slot.role == "aggregate":
        return Decision(state=complete(state, ev.outputs))
    st = state.subtasks[slot.key]
    if slot.role == "subtask":
        st.outputs = dict(ev.outputs)
        if not wf.reviewer:
            return _accept(state, wf, workflows, st)
        st.status = "reviewing"
        task = new_task(
            state,
            workflows,
            task_id=review_task_id(state.run_id, st.spec.id, st.agent, st.attempt),
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
        decision = _accept(state, wf, workflows, st)
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
            state.note(f"subtask {st.spec.id} attempt {st.attempt} failed, retrying: {ev.error}")
            st.attempt += 1
            return _again(state, workflows, st, retry=True)  # after the retry policy's backoff
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
