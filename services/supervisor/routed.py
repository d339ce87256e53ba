"""The router pattern: one request, one specialist chosen by the router service (or the fallback)."""

from __future__ import annotations

from shared.events import ObjectRef, RouteDecided, TaskCompleted, TaskFailed
from shared.runs import RunState, TaskSlot
from shared.workflow import HUMAN, RouterWorkflow, WorkflowFile

from .decisions import Decision, HumanRequest, add_task, complete, fail, new_task, retry_or_fail, take


def start(state: RunState, wf: RouterWorkflow, workflows: WorkflowFile) -> Decision:
    state.phase = "routing"
    task = new_task(
        state,
        workflows,
        task_id=f"{state.run_id}.route",
        agent=None,
        inputs=state.inputs,
        instruction=wf.description,
    )
    add_task(state, task, "route")
    return Decision(state=state, assign=[task])


def on_route(state: RunState, wf: RouterWorkflow, workflows: WorkflowFile, ev: RouteDecided) -> Decision:
    """A decision for `human` pauses the run. One for an agent (which got the task from the router
    directly) only brings the model classifier's usage, counted once per attempt."""
    if ev.agent != HUMAN:
        slot = state.tasks[ev.task_id]
        if ev.usage is None or slot.usage_counted:
            return Decision.ignore("routed to an agent")
        slot.usage_counted = True
        state.usage = state.usage + ev.usage
        return Decision(state=state)
    take(state, ev)
    question = f"This request needs a person ({ev.reason or 'routed to human'}). Handle it and respond."
    return Decision(
        state=state,
        human=HumanRequest(task_id=ev.task_id, question=question, inputs=state.inputs, key="fallback"),
    )


def on_completed(
    state: RunState, wf: RouterWorkflow, workflows: WorkflowFile, ev: TaskCompleted, docs: dict | None = None
) -> Decision:
    take(state, ev)
    state.note(f"handled by {ev.agent}")
    return Decision(state=complete(state, ev.outputs))


def on_failed(
    state: RunState, wf: RouterWorkflow, workflows: WorkflowFile, ev: TaskFailed, slot: TaskSlot
) -> Decision:
    take(state, ev)
    return retry_or_fail(state, slot, ev, wf, workflows, f"request ({ev.agent or 'router'})")


def on_human(
    state: RunState,
    wf: RouterWorkflow,
    workflows: WorkflowFile,
    approved: bool,
    text: str,
    response: ObjectRef,
) -> Decision:
    state.waiting, state.status = None, "running"
    if not approved:
        return Decision(state=fail(state, f"the person declined the request: {text or '(no text)'}"))
    return Decision(state=complete(state, {"response": response}))
