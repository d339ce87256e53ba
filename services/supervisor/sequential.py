"""Decisions of the sequential pattern: plain functions from (state, event) to what happens next."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from shared.events import TaskAssigned, TaskCompleted, TaskFailed
from shared.workflow import SequentialWorkflow, WorkflowFile
from shared.workspace import run_prefix

from .state import RunState


@dataclass
class Decision:
    """What to do with an event: a new state and the task to send, or nothing (with why)."""

    state: RunState | None = None
    assign: TaskAssigned | None = None
    ignored: str | None = None

    @property
    def finished(self) -> bool:
        return self.state is not None and self.state.status != "running"


def stage_agent(wf: SequentialWorkflow, workflows: WorkflowFile, stage: int) -> str:
    spec = wf.stages[stage]
    return spec.agent or workflows.routes[spec.intent]


def stage_task(state: RunState, wf: SequentialWorkflow, workflows: WorkflowFile) -> TaskAssigned:
    """The task for the run's current stage: the run's inputs plus everything produced so far, as far
    as the agent may read it."""
    stage = wf.stages[state.stage]
    agent = stage_agent(wf, workflows, state.stage)
    spec = workflows.agents[agent]
    prefix = run_prefix(state.run_id)
    available = {**state.inputs, **state.outputs}
    if spec.reads is not None:
        available = {
            n: r for n, r in available.items() if any(r.key.startswith(prefix + p) for p in spec.reads)
        }
    return TaskAssigned(
        run_id=state.run_id,
        task_id=task_id(state.run_id, state.stage, agent),
        attempt=state.attempt,
        trace_id=state.trace_id,
        sender="supervisor",
        workflow=state.workflow,
        stage=state.stage,
        agent=stage.agent,
        intent=stage.intent,
        instruction=stage.instruction,
        inputs=available,
        output_prefix=prefix + spec.writes[0],
        params=state.params,
    )


def task_id(run_id: str, stage: int, agent: str) -> str:
    # Deterministic: a redelivered assignment is the same task and writes the same keys.
    return f"{run_id}.{stage}.{agent}"


def _current(state: RunState, event) -> str | None:
    if state.status != "running":
        return f"run is already {state.status}"
    if event.task_id != state.task_id or event.attempt != state.attempt:
        return f"stale or duplicate outcome (current task {state.task_id} attempt {state.attempt})"
    return None


def on_completed(
    state: RunState, wf: SequentialWorkflow, workflows: WorkflowFile, ev: TaskCompleted
) -> Decision:
    if why := _current(state, ev):
        return Decision(ignored=why)
    new = state.model_copy(deep=True)
    new.outputs.update(ev.outputs)
    new.usage = new.usage + ev.usage
    new.history.append(f"stage {state.stage} ({ev.agent}) completed on attempt {ev.attempt}")
    if state.stage + 1 < len(wf.stages):
        new.stage, new.attempt, new.dispatched = state.stage + 1, 1, False
        task = stage_task(new, wf, workflows)
        new.task_id = task.task_id
        return Decision(state=new, assign=task)
    new.status, new.final, new.task_id = "completed", dict(ev.outputs), None
    return Decision(state=new)


def on_failed(state: RunState, wf: SequentialWorkflow, workflows: WorkflowFile, ev: TaskFailed) -> Decision:
    if why := _current(state, ev):
        return Decision(ignored=why)
    new = state.model_copy(deep=True)
    agent = stage_agent(wf, workflows, state.stage)
    new.history.append(f"stage {state.stage} ({agent}) attempt {ev.attempt} failed: {ev.error}")
    if ev.retryable and state.attempt < wf.max_attempts:
        new.attempt, new.dispatched = state.attempt + 1, False
        return Decision(state=new, assign=stage_task(new, wf, workflows))
    tries = f"{state.attempt} attempt{'s' if state.attempt > 1 else ''}"
    new.status = "failed"
    new.reason = f"stage {state.stage} ({agent}) failed after {tries}: {ev.error}"
    return Decision(state=new)


def published_key(publish_to: str, trigger_key: str, outputs: dict) -> dict[str, str]:
    """Where a triggered run's outputs are copied: `briefs/topic.md` -> `published/topic.md`."""
    stem = posixpath.splitext(posixpath.basename(trigger_key))[0]
    if len(outputs) == 1:
        ((name, ref),) = outputs.items()
        return {name: f"{publish_to}{stem}{posixpath.splitext(ref.key)[1]}"}
    return {name: f"{publish_to}{stem}/{posixpath.basename(ref.key)}" for name, ref in outputs.items()}
