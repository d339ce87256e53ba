"""Submissions and cancellations (`baton:runs`)."""

from __future__ import annotations

import hashlib
import posixpath

from shared import manifests
from shared.errors import ObjectMissingError, ObjectTooLargeError
from shared.events import ObjectRef, RunCancelRequested, RunRequest, RunStarted, RunSubmitted
from shared.runs import CAUSE, RunState
from shared.workflow import SequentialWorkflow
from shared.workspace import run_prefix

from . import sequential
from .decisions import Decision
from .engine import PATTERNS, Engine
from .store import Loaded


def trigger_run_id(bucket: str, key: str, version: str | None) -> str:
    # The same landed version always maps to the same run: a duplicate notification starts nothing new.
    digest = hashlib.sha256(f"{bucket}/{key}@{version}".encode()).hexdigest()[:20]
    return f"t-{digest}"


async def on_runs(eng: Engine, event: RunRequest) -> None:
    """A run submitted or a cancellation requested."""
    if isinstance(event, RunCancelRequested):
        await on_cancel(eng, event)
    else:
        await on_run(eng, event)


async def on_cancel(eng: Engine, event: RunCancelRequested) -> None:
    def cancel(s: RunState) -> Decision:
        if not s.active:
            return Decision.ignore(f"run is already {s.status}")
        s.status, s.reason, s.waiting = "cancelled", event.reason, None
        s.tasks.clear()
        return Decision(state=s)

    out = await eng.decide(event.run_id, cancel, cause=event.event_id)
    if not out.loaded.exists:
        eng.log.warning("cancel_for_unknown_run")


async def on_run(eng: Engine, event: RunSubmitted) -> None:
    """Start a run: bring its inputs into the workspace, then store its state and its first step in one
    commit (a crash leaves either no run, or a started one)."""
    prefix = run_prefix(event.run_id)
    try:
        submitted, problem = await submitted_inputs(eng, event), None
    except (ObjectMissingError, ObjectTooLargeError, ValueError) as exc:
        submitted, problem = {}, str(exc)
    if any(not ref.key.startswith(prefix) for ref in submitted.values()):
        loaded = await eng.store.load(event.run_id, CAUSE + event.event_id)
    else:  # nothing to copy in: the commit itself checks that the run is new (else it reads and redoes)
        loaded = Loaded(event.run_id, fields={CAUSE + event.event_id: None})
    if loaded.exists:  # a redelivery, or the same run id submitted twice (copies made before it again)
        eng.log.info("duplicate_run_submitted", status=loaded.view().status)
        await eng.redo(loaded, event.event_id)
        return
    base = dict(run_id=event.run_id, workflow=event.workflow, trace_id=event.trace_id, params=event.params)
    wf = eng.workflows.workflows.get(event.workflow)
    if wf is None:
        reason = f"unknown workflow {event.workflow!r}; known: {sorted(eng.workflows.workflows)}"
        await create(
            eng, loaded, RunState(**base, pattern="?", status="failed", reason=reason), event.event_id
        )
        return
    if problem is not None:
        failed = RunState(**base, pattern=wf.pattern, status="failed", reason=problem)
        await create(eng, loaded, failed, event.event_id)
        return
    try:
        inputs = await adopt_inputs(eng, event.run_id, submitted)
    except ObjectMissingError as exc:
        failed = RunState(**base, pattern=wf.pattern, status="failed", reason=f"input missing: {exc}")
        await create(eng, loaded, failed, event.event_id)
        return
    trigger = event.params.get("trigger")
    state = RunState(
        **base,
        pattern=wf.pattern,
        inputs=inputs,
        trigger=submitted.get(trigger) if isinstance(trigger, str) else None,
    )
    stages = (
        wf.agents_used()
        if not isinstance(wf, SequentialWorkflow)
        else [sequential.stage_agent(wf, eng.workflows, i) for i in range(len(wf.stages))]
    )
    started = RunStarted(
        run_id=event.run_id,
        workflow=event.workflow,
        pattern=wf.pattern,
        stages=stages,
        trace_id=event.trace_id,
        sender=eng.sender,
    )
    module = PATTERNS[wf.pattern]

    def start(s: RunState) -> Decision:
        if s.phase != "start" or not s.active:
            return Decision.ignore("already started")
        decision = module.start(s, wf, eng.workflows)
        decision.notes.insert(0, started)
        return decision

    out = await create(eng, loaded, state, event.event_id, start)
    if out is not None:
        eng.log.info("run_started", workflow=event.workflow, pattern=wf.pattern)


async def create(eng: Engine, loaded: Loaded, state: RunState, cause: str, start=None):
    """Commit a new run (`start` takes its first step in the same commit; without it, the run has
    already ended, e.g. failed)."""
    loaded.fields["core"] = state.model_dump_json().encode()
    loaded.all_tasks = loaded.all_subtasks = True  # a new run has nothing else
    loaded.state = state  # (the decision starts from it: no need to parse what was just written)

    def ended(s: RunState) -> Decision:  # (a state another replica stored meanwhile is not ours to end)
        return Decision(state=s) if s.created_at == state.created_at else Decision.ignore("stored already")

    out = await eng.decide(state.run_id, start or ended, cause=cause, loaded=loaded)
    return out.state


async def submitted_inputs(eng: Engine, event: RunSubmitted) -> dict[str, ObjectRef]:
    """The run's inputs as submitted: the event's, with those of its manifest read in (`inputs_manifest`,
    for more than one event holds; the event's own win on a name). A manifest missing, too large, outside
    the run's workspace or not a JSON object of refs fails the run, by name."""
    manifest = event.inputs_manifest
    if manifest is None:
        return dict(event.inputs)
    listed = await manifests.read(
        eng.storage, manifest, "the inputs manifest", under=run_prefix(event.run_id)
    )
    return {**listed, **event.inputs}


async def adopt_inputs(eng: Engine, run_id: str, submitted: dict[str, ObjectRef]) -> dict:
    """Inputs outside the run's workspace are copied in (exact version), so agents stay inside it."""
    prefix = run_prefix(run_id)
    inputs = {}
    for name, ref in submitted.items():
        if ref.bucket != eng.settings.bucket:
            raise ObjectMissingError(
                f"input {name!r} is in bucket {ref.bucket!r}, not {eng.settings.bucket!r}"
            )
        if ref.key.startswith(prefix):
            inputs[name] = ref  # already in the workspace; the worker checks it exists on read
            continue
        try:  # (the copy itself says if the object or its version is missing: no HEAD first)
            inputs[name] = await eng.storage.copy(ref, f"{prefix}inputs/{posixpath.basename(ref.key)}")
        except ObjectMissingError as exc:  # missing object or version; other errors (MinIO away): retried
            raise ObjectMissingError(f"input {name!r}: cannot copy {ref.uri()}: {exc}") from exc
    return inputs
