"""Task outcomes and progress (`baton:{r<N>}:results`): record them, and decide a run's next step."""

from __future__ import annotations

from shared import manifests, streams
from shared.errors import ObjectMissingError, ObjectTooLargeError
from shared.events import (
    RouteDecided,
    TaskCompleted,
    TaskFailed,
    TaskInputRequired,
    TaskResult,
    TaskStarted,
    utcnow,
)
from shared.runs import CAUSE, TASK
from shared.workspace import run_prefix

from .decisions import Decision, agent_asks, fail, outstanding
from .engine import Engine

DOC_MAX_BYTES = 64 * 2**20  # the most of a document (a plan, a verdict) the supervisor reads to decide


async def with_outputs(eng: Engine, event: TaskResult) -> TaskResult:
    """A completed task with the outputs of its manifest read in (`outputs_manifest`: more than one event
    holds); one whose manifest cannot be read as one fails instead, naming it (nothing hangs)."""
    if not isinstance(event, TaskCompleted) or event.outputs_manifest is None:
        return event
    manifest = event.outputs_manifest
    try:
        under = f"{run_prefix(event.run_id)}manifests/"
        listed = await manifests.read(eng.storage, manifest, "the outputs manifest", under=under)
    except (ObjectMissingError, ObjectTooLargeError, ValueError) as exc:
        kept = event.model_dump(exclude={"type", "outputs", "outputs_manifest", "usage"})
        return TaskFailed(**kept, error=f"{event.agent}'s outputs: {exc}")
    return event.model_copy(update={"outputs": {**listed, **event.outputs}, "outputs_manifest": None})


async def on_result(eng: Engine, event: TaskResult) -> None:
    """Record a task's progress; on an outcome, decide the run's next step."""
    event = await with_outputs(eng, event)
    if not isinstance(event, TaskCompleted | TaskFailed | TaskInputRequired | RouteDecided):
        recorded = eng.db.send(streams.run_events(event.run_id), event)
        if isinstance(event, TaskStarted) and eng.any_deadlines:
            await schedule_deadline(eng, event)
        await recorded
        return
    loaded = await eng.store.load(event.run_id, TASK + event.task_id, CAUSE + event.event_id, cached=True)
    if not loaded.exists:
        eng.log.warning("result_for_unknown_run")
        await eng.record(event)
        return
    state = loaded.view()
    wf, module = eng.pattern_of(state)
    slot = outstanding(state, event)
    docs, too_big = {}, None
    if isinstance(event, TaskCompleted) and not isinstance(slot, str):
        wanted = getattr(module, "DOCS", {}).get(slot.role)
        if wanted and wanted in event.outputs:
            try:  # (bounded: one agent's runaway output must not take the supervisor's memory)
                docs[wanted] = await eng.storage.get(event.outputs[wanted], max_bytes=DOC_MAX_BYTES)
            except ObjectTooLargeError as exc:
                too_big = (
                    f"the {wanted} from {event.agent} is {exc.size:,} bytes, more than the "
                    f"{DOC_MAX_BYTES:,} the supervisor reads"
                )

    def choose(s) -> Decision:
        slot = outstanding(s, event)
        if isinstance(slot, str):
            return Decision.ignore(slot)
        if too_big:
            return Decision(state=fail(s, too_big))
        if isinstance(event, RouteDecided):
            return module.on_route(s, wf, eng.workflows, event)
        if isinstance(event, TaskInputRequired):  # the same for every pattern: the run asks a person
            return agent_asks(s, slot, event)
        if isinstance(event, TaskCompleted):
            return module.on_completed(s, wf, eng.workflows, event, docs)
        return module.on_failed(s, wf, eng.workflows, event, slot)

    # the outcome is recorded in the run's stream by the commit it causes (or alone, if it causes none)
    await eng.decide(event.run_id, choose, cause=event.event_id, loaded=loaded, first=state, record=event)


async def schedule_deadline(eng: Engine, event: TaskStarted) -> None:
    loaded = await eng.store.load(event.run_id, TASK + event.task_id)
    if not loaded.exists:
        return
    state = loaded.view()
    wf = eng.workflows.workflows.get(state.workflow)
    slot = dict.get(state.tasks, event.task_id)
    if state.active and wf is not None and wf.task_timeout and slot is not None:
        task = slot.task.model_copy(update={"attempt": event.attempt})
        await eng.schedule(utcnow().timestamp() + wf.task_timeout, "deadline", task)
