"""The bidirectional pattern: participants take turns on one document, driven by file-change events.

Each new version of the document (an `ObjectChanged` event) gives the next participant the turn, with
that exact version. The loop ends on an approval file, on convergence (a turn changed nothing), on
oscillation (a version repeats the one two turns back: A -> B -> A), or after `max_rounds` turns.
"""

from __future__ import annotations

from shared.events import ObjectChanged, ObjectRef, TaskCompleted, TaskFailed
from shared.runs import RunState, TaskSlot
from shared.workflow import BidirectionalWorkflow, WorkflowFile
from shared.workspace import run_prefix

from .decisions import Decision, add_task, complete, fail, new_task, retry_or_fail, take


def doc_key(state: RunState, wf: BidirectionalWorkflow) -> str:
    return run_prefix(state.run_id) + wf.document


def start(state: RunState, wf: BidirectionalWorkflow, workflows: WorkflowFile) -> Decision:
    """Seed the document from the input; its creation event starts the first turn."""
    source = state.inputs.get(wf.input)
    if source is None:
        return Decision(state=fail(state, f"bidirectional workflow needs an input named {wf.input!r}"))
    state.phase = "seeding"
    return Decision(state=state, copies=[(source, doc_key(state, wf))])


def _end(state: RunState, why: str) -> Decision:
    state.note(f"collaboration ended: {why}")
    return Decision(
        state=complete(state, {"document": state.document} if state.document else {}, ended_by=why)
    )


def on_object(
    state: RunState, wf: BidirectionalWorkflow, workflows: WorkflowFile, ev: ObjectChanged
) -> Decision:
    if not ev.created:
        return Decision.ignore("not a creation")
    if ev.key.startswith(run_prefix(state.run_id) + wf.approval):
        return _end(state, "approved") if state.document else Decision.ignore("approval before any version")
    if ev.key != doc_key(state, wf):
        return Decision.ignore("not the shared document")
    return _new_version(state, wf, workflows, ev.ref())


def on_copied(
    state: RunState, wf: BidirectionalWorkflow, workflows: WorkflowFile, ref: ObjectRef
) -> Decision:
    """The seed the supervisor copied: the first version, without waiting for its notification."""
    if ref.key != doc_key(state, wf):
        return Decision.ignore("not the shared document")
    return _new_version(state, wf, workflows, ref)


def _new_version(
    state: RunState, wf: BidirectionalWorkflow, workflows: WorkflowFile, ref: ObjectRef
) -> Decision:
    """A version of the document, seen once (from its notification or from the turn that wrote it,
    whichever comes first): the next turn, or the end."""
    seen = [v.split("|", 1)[0] for v in state.versions]
    if ref.version_id in seen:
        return Decision.ignore(f"version {ref.version_id} already seen")
    etags = [v.split("|", 1)[1] for v in state.versions]
    state.versions.append(f"{ref.version_id}|{ref.etag}")
    state.document = ref
    for task_id in [t for t, slot in state.tasks.items() if slot.role == "turn"]:
        state.tasks.pop(task_id)  # the turn's write landed; its completion event is now informational
    if etags:
        if ref.etag == etags[-1]:
            return _end(state, "converged")
        if len(etags) >= 2 and ref.etag == etags[-2]:
            return _end(state, "oscillation")
    if state.turns >= wf.max_rounds:
        return _end(state, "max_rounds")
    return _turn(state, wf, workflows)


def _turn(state: RunState, wf: BidirectionalWorkflow, workflows: WorkflowFile) -> Decision:
    agent = wf.participants[state.turns % len(wf.participants)]
    state.turns += 1
    state.phase = "collaborating"
    task = new_task(
        state,
        workflows,
        task_id=f"{state.run_id}.turn.{state.turns}",
        agent=agent,
        inputs={"document": state.document},
        instruction=wf.description,
        params={"turn": state.turns, "participants": wf.participants, "approval": wf.approval},
    )
    add_task(state, task, "turn", str(state.turns))
    return Decision(state=state, assign=[task])


def on_completed(
    state: RunState,
    wf: BidirectionalWorkflow,
    workflows: WorkflowFile,
    ev: TaskCompleted,
    docs: dict | None = None,
) -> Decision:
    take(state, ev)
    # The turn's outputs name the version it wrote: act on it now rather than wait for its notification
    # (which then finds the version seen), so a notification lost around a MinIO restart stalls nothing.
    written = [r for r in ev.outputs.values() if r.key == doc_key(state, wf) and r.version_id]
    if written:
        return _new_version(state, wf, workflows, written[-1])
    if any(r.key.startswith(run_prefix(state.run_id) + wf.approval) for r in ev.outputs.values()):
        return _end(state, "approved") if state.document else Decision(state=state)
    if any(r.key == doc_key(state, wf) for r in ev.outputs.values()):
        return Decision(state=state)  # a version without an id: its notification gives the next turn
    return _end(state, "converged")  # a turn that wrote nothing changed nothing


def on_failed(
    state: RunState, wf: BidirectionalWorkflow, workflows: WorkflowFile, ev: TaskFailed, slot: TaskSlot
) -> Decision:
    take(state, ev)
    return retry_or_fail(state, slot, ev, wf, workflows, f"turn {slot.key} ({ev.agent})")


def on_human(state, wf, workflows, approved, text, response: ObjectRef) -> Decision:
    return Decision.ignore("bidirectional workflows do not wait for people")
