"""The supervisor: starts runs, keeps their state in Redis, decides every next step.

Consumes `baton:runs`, `baton:results` and `baton:objects`; publishes tasks to `baton:route` and every
step of a run to that run's own stream `baton:{<run_id>}:events`.
"""

from __future__ import annotations

import asyncio
import hashlib
import posixpath

from shared import streams
from shared.broker import make_broker, subscribe
from shared.errors import ObjectMissingError
from shared.events import (
    BaseEvent,
    Event,
    ObjectChanged,
    RunCompleted,
    RunFailed,
    RunStarted,
    RunSubmitted,
    TaskAssigned,
    TaskCompleted,
    TaskFailed,
    TaskResult,
)
from shared.logging import configure_logging
from shared.service import Resources, build_app
from shared.settings import Settings
from shared.workflow import load_workflows
from shared.workspace import run_prefix

from . import sequential
from .state import RunState, RunStore

SERVICE = "supervisor"


def trigger_run_id(bucket: str, key: str, version: str | None) -> str:
    # The same landed version always maps to the same run: a duplicate notification starts nothing new.
    digest = hashlib.sha256(f"{bucket}/{key}@{version}".encode()).hexdigest()[:20]
    return f"t-{digest}"


def create_app(settings: Settings | None = None):
    settings = settings or Settings()
    log = configure_logging(SERVICE, settings.log_format, settings.log_level)
    workflows = load_workflows(settings.workflows)
    broker = make_broker(settings, SERVICE)
    res = Resources(settings)
    sender = f"{SERVICE}:{settings.consumer}"

    route = broker.publisher(stream=streams.ROUTE, title="route", schema=TaskAssigned)
    runs = broker.publisher(
        stream=streams.RUNS,
        title="triggered-runs",
        schema=RunSubmitted,
        description="Runs started by triggers.",
    )
    broker.publisher(
        stream=streams.run_events("{run_id}"),
        title="run-events",
        schema=Event,
        description="Every step of one run, in order.",
    )

    def store() -> RunStore:
        return RunStore(res.redis)

    async def record(event: BaseEvent) -> None:
        await broker.publish(event, stream=streams.run_events(event.run_id))

    async def dispatch(state: RunState, task: TaskAssigned) -> None:
        """Send a task, then mark it sent: a crash in between re-sends it (same id), never loses it."""
        await record(task)  # first, so a watcher sees the assignment before the router's decision
        await route.publish(task)

        def mark(s: RunState) -> RunState | None:
            if s.task_id == task.task_id and s.attempt == task.attempt and not s.dispatched:
                s.dispatched = True
                return s
            return None

        await store().update(state.run_id, mark)

    async def fail_run(state: RunState | None, run_id: str, reason: str, trace_id: str) -> None:
        log.warning("run_failed", reason=reason)
        await record(RunFailed(run_id=run_id, reason=reason, trace_id=trace_id, sender=sender))

    async def resend_if_undispatched(state: RunState) -> None:
        if state.status == "running" and not state.dispatched and state.task_id:
            wf = workflows.workflows[state.workflow]
            await dispatch(state, sequential.stage_task(state, wf, workflows))

    async def on_run(event: RunSubmitted) -> None:
        """Start a run: bring its inputs into the workspace, store its state, assign the first stage."""
        existing = await store().get(event.run_id)
        if existing is not None:
            log.info("duplicate_run_submitted", status=existing.status)
            await resend_if_undispatched(existing)
            return
        wf = workflows.workflows.get(event.workflow)
        if wf is None:
            reason = f"unknown workflow {event.workflow!r}; known: {sorted(workflows.workflows)}"
            state = RunState(
                run_id=event.run_id,
                workflow=event.workflow,
                pattern="?",
                status="failed",
                trace_id=event.trace_id,
                reason=reason,
            )
            if await store().create(state):
                await fail_run(state, event.run_id, reason, event.trace_id)
            return
        try:
            inputs = await adopt_inputs(event)
        except ObjectMissingError as exc:
            state = RunState(
                run_id=event.run_id,
                workflow=event.workflow,
                pattern=wf.pattern,
                status="failed",
                trace_id=event.trace_id,
                reason=str(exc),
            )
            if await store().create(state):
                await fail_run(state, event.run_id, f"input missing: {exc}", event.trace_id)
            return
        trigger = event.params.get("trigger")
        state = RunState(
            run_id=event.run_id,
            workflow=event.workflow,
            pattern=wf.pattern,
            trace_id=event.trace_id,
            inputs=inputs,
            params=event.params,
            trigger=event.inputs.get(trigger) if isinstance(trigger, str) else None,
        )
        first = sequential.stage_task(state, wf, workflows)
        state.task_id = first.task_id
        if not await store().create(state):
            return
        stages = [sequential.stage_agent(wf, workflows, i) for i in range(len(wf.stages))]
        await record(
            RunStarted(
                run_id=event.run_id,
                workflow=event.workflow,
                pattern=wf.pattern,
                stages=stages,
                trace_id=event.trace_id,
                sender=sender,
            )
        )
        log.info("run_started", workflow=event.workflow, stages=stages)
        await dispatch(state, first)

    async def adopt_inputs(event: RunSubmitted) -> dict:
        """Inputs outside the run's workspace are copied in (exact version), so agents stay inside it."""
        prefix = run_prefix(event.run_id)
        inputs = {}
        for name, ref in event.inputs.items():
            if ref.key.startswith(prefix) and ref.bucket == settings.bucket:
                inputs[name] = ref  # already in the workspace; the worker checks it exists on read
                continue
            if ref.bucket != settings.bucket:
                raise ObjectMissingError(
                    f"input {name!r} is in bucket {ref.bucket!r}, not {settings.bucket!r}"
                )
            head = await res.storage.head(ref.key)
            if head is None:
                raise ObjectMissingError(f"input {name!r}: object {ref.uri()} does not exist")
            try:
                inputs[name] = await res.storage.copy(ref, f"{prefix}inputs/{posixpath.basename(ref.key)}")
            except Exception as exc:  # botocore ClientError on a missing version
                raise ObjectMissingError(f"input {name!r}: cannot copy {ref.uri()}: {exc}") from exc
        return inputs

    async def on_result(event: TaskResult) -> None:
        """Record a task's progress; on an outcome, decide the run's next step."""
        await record(event)
        if not isinstance(event, TaskCompleted | TaskFailed):
            return
        state = await store().get(event.run_id)
        if state is None:
            log.warning("result_for_unknown_run")
            return
        wf = workflows.workflows[state.workflow]
        decide = sequential.on_completed if isinstance(event, TaskCompleted) else sequential.on_failed
        decision = decide(state, wf, workflows, event)
        if decision.ignored:
            log.info("result_ignored", reason=decision.ignored)
            await resend_if_undispatched(state)
            return
        new = await store().update(event.run_id, lambda s: decide(s, wf, workflows, event).state)
        if new is None:
            return
        if decision.assign:
            await dispatch(new, decision.assign)
        elif new.status == "completed":
            await finish(new)
        elif new.status == "failed":
            await fail_run(new, new.run_id, new.reason or "failed", new.trace_id)

    async def finish(state: RunState) -> None:
        wf = workflows.workflows[state.workflow]
        if wf.trigger and wf.trigger.publish_to and state.trigger:
            keys = sequential.published_key(wf.trigger.publish_to, state.trigger.key, state.final)
            for name, key in keys.items():
                await res.storage.copy(state.final[name], key)
        await record(
            RunCompleted(
                run_id=state.run_id,
                outputs=state.final,
                usage=state.usage,
                trace_id=state.trace_id,
                sender=sender,
            )
        )
        log.info("run_completed", outputs=sorted(state.final), seconds=state.usage.seconds)

    async def on_object(event: ObjectChanged) -> None:
        """A file changed in the bucket: start the workflows whose trigger watches its prefix."""
        if not event.created or event.bucket != settings.bucket:
            return
        for name, wf in workflows.triggers():
            if event.key.startswith(wf.trigger.prefix):
                run_id = trigger_run_id(event.bucket, event.key, event.version_id or event.etag)
                await runs.publish(
                    RunSubmitted(
                        run_id=run_id,
                        workflow=name,
                        inputs={wf.trigger.input: event.ref()},
                        params={"trigger": wf.trigger.input},
                        sender=sender,
                    )
                )
                log.info("run_triggered", workflow=name, key=event.key, triggered_run=run_id)

    subscribe(
        broker,
        streams.RUNS,
        streams.SUPERVISOR_GROUP,
        settings,
        on_run,
        title="runs",
        description="Submitted runs.",
    )
    subscribe(
        broker,
        streams.RESULTS,
        streams.SUPERVISOR_GROUP,
        settings,
        on_result,
        title="results",
        description="Task outcomes from workers and the router.",
    )
    subscribe(
        broker,
        streams.OBJECTS,
        streams.SUPERVISOR_GROUP,
        settings,
        on_object,
        title="objects",
        description="Bucket changes from the notifier.",
    )
    return build_app(broker, res, log, redis=True, consumer=settings.consumer)


def main() -> None:
    asyncio.run(create_app().run())
