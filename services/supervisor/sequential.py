"""The sequential pattern: each stage gets the run's inputs and everything produced before it."""

from __future__ import annotations

from shared.events import ObjectRef, TaskCompleted, TaskFailed
from shared.runs import RunState, TaskSlot
from shared.workflow import HUMAN, SequentialWorkflow, WorkflowFile

from .decisions import (
    Decision,
    HumanRequest,
    add_task,
    complete,
    fail,
    new_task,
    readable,
    retry_or_fail,
    take,
)


def stage_agent(wf: SequentialWorkflow, workflows: WorkflowFile, stage: int) -> str:
    spec = wf.stages[stage]
    return spec.agent or workflows.routes[spec.intent]


def task_id(run_id: str, stage: int, agent: str, loop: int = 0) -> str:
    # Deterministic: a redelivered assignment is the same task and writes the same keys.
    return f"{run_id}.{stage}.{agent}" + (f".r{loop}" if loop else "")


def enter(state: RunState, wf: SequentialWorkflow, workflows: WorkflowFile, stage: int) -> Decision:
    state.stage = stage
    spec = wf.stages[stage]
    available = {**state.inputs, **state.outputs}
    loop = state.loops.get(str(stage), 0)
    if spec.agent == HUMAN:
        question = spec.instruction or f"Stage {stage + 1} of {state.workflow}: approve or reject?"
        return Decision(
            state=state,
            human=HumanRequest(
                task_id=task_id(state.run_id, stage, HUMAN, loop),
                question=question,
                inputs=available,
                key=str(stage),
                on_reject=spec.on_reject,
            ),
        )
    agent = stage_agent(wf, workflows, stage)
    task = new_task(
        state,
        workflows,
        task_id=task_id(state.run_id, stage, agent, loop),
        agent=spec.agent,
        intent=spec.intent,
        instruction=spec.instruction,
        stage=stage,
        inputs=readable(state, available, workflows.agents.get(agent)),
    )
    add_task(state, task, "stage", str(stage))
    return Decision(state=state, assign=[task])


def start(state: RunState, wf: SequentialWorkflow, workflows: WorkflowFile) -> Decision:
    state.phase = "stages"
    return enter(state, wf, workflows, 0)


def _advance(state: RunState, wf: SequentialWorkflow, workflows: WorkflowFile, outputs: dict) -> Decision:
    state.outputs.update(outputs)
    state.final = dict(outputs)
    if state.stage + 1 < len(wf.stages):
        return enter(state, wf, workflows, state.stage + 1)
    return Decision(state=complete(state, state.final))


def on_completed(
    state: RunState,
    wf: SequentialWorkflow,
    workflows: WorkflowFile,
    ev: TaskCompleted,
    docs: dict | None = None,
) -> Decision:
    take(state, ev)
    state.note(f"stage {state.stage} ({ev.agent}) completed on attempt {ev.attempt}")
    return _advance(state, wf, workflows, ev.outputs)


def on_failed(
    state: RunState, wf: SequentialWorkflow, workflows: WorkflowFile, ev: TaskFailed, slot: TaskSlot
) -> Decision:
    take(state, ev)
    agent = stage_agent(wf, workflows, state.stage)
    return retry_or_fail(state, slot, ev, wf, workflows, f"stage {state.stage} ({agent})")


def on_human(
    state: RunState,
    wf: SequentialWorkflow,
    workflows: WorkflowFile,
    approved: bool,
    text: str,
    response: ObjectRef,
) -> Decision:
    stage = int(state.waiting.key)
    on_reject = state.waiting.on_reject
    state.waiting, state.status = None, "running"
    if approved:
        state.note(f"stage {stage} approved by a person")
        return _advance(state, wf, workflows, {**state.final, "response": response})
    if on_reject == "fail":
        return Decision(
            state=fail(state, f"rejected by a person at stage {stage + 1}: {text or '(no text)'}")
        )
    back = max(i for i in range(stage) if wf.stages[i].agent == on_reject)
    state.outputs["feedback"] = response
    state.loops[str(back)] = state.loops.get(str(back), 0) + 1
    state.note(f"back to stage {back} ({on_reject}): rejected at stage {stage}: {text}")
    return enter(state, wf, workflows, back)
