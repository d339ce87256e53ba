"""The supervisor: starts runs, keeps their state in Redis, decides every next step.

Consumes `baton:runs`, `baton:results` and `baton:objects`; publishes tasks to `baton:agent:<name>` (or
to `baton:route` when a task needs a route) and every step of a run to that run's own stream
`baton:{<run_id>}:events`. The decisions themselves are plain functions, one module per pattern.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import posixpath
import random
from datetime import timedelta

from shared import streams
from shared.batch import Batched, InOrder
from shared.broker import DATA_FIELD, encode, make_broker, subscribe
from shared.errors import ObjectMissingError
from shared.events import (
    TERMINAL_RUN_EVENTS,
    BaseEvent,
    Event,
    HumanInputReceived,
    HumanInputRequested,
    ObjectChanged,
    ObjectRef,
    RouteDecided,
    RunCancelled,
    RunCancelRequested,
    RunCompleted,
    RunFailed,
    RunRequest,
    RunStarted,
    RunSubmitted,
    TaskAssigned,
    TaskCompleted,
    TaskFailed,
    TaskResult,
    TaskStarted,
    new_id,
    utcnow,
)
from shared.logging import configure_logging
from shared.service import Resources, build_app
from shared.settings import Settings
from shared.workflow import SequentialWorkflow, load_workflows
from shared.workspace import run_of_key, run_prefix

from . import bidirectional, hierarchical, routed, sequential
from .decisions import Decision, backoff, outstanding, published_key
from .state import HumanWait, RunState, RunStore, TaskSlot, append, expire, sync_waiting

SERVICE = "supervisor"
DONE_TTL = 7 * 86400  # an ended run's cancellation mark and workers' done-marks are kept a week
PATTERNS = {
    "sequential": sequential,
    "router": routed,
    "hierarchical": hierarchical,
    "bidirectional": bidirectional,
}


def trigger_run_id(bucket: str, key: str, version: str | None) -> str:
    # The same landed version always maps to the same run: a duplicate notification starts nothing new.
    digest = hashlib.sha256(f"{bucket}/{key}@{version}".encode()).hexdigest()[:20]
    return f"t-{digest}"


def human_request_key(run_id: str, task_id: str) -> str:
    return f"{run_prefix(run_id)}human/requests/{task_id}.json"


def parse_response(raw: bytes) -> tuple[bool, str]:
    """A response file: JSON `{"decision": "approve"|"reject", "text": ...}`, or plain text (approval,
    unless its first word is `reject`)."""
    text = raw.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        decision = str(data.get("decision", "approve")).lower()
        return decision not in ("reject", "rejected", "no"), str(data.get("text", ""))
    return not text.lower().startswith("reject"), text


def create_app(settings: Settings | None = None):
    settings = settings or Settings()
    log = configure_logging(SERVICE, settings.log_format, settings.log_level)
    workflows = load_workflows(settings.workflows)
    broker = make_broker(settings, SERVICE)
    res = Resources(settings)
    sender = f"{SERVICE}:{settings.consumer}"

    # Declared for the AsyncAPI document; tasks are written with the run's state (RunStore.update).
    broker.publisher(
        stream=streams.ROUTE,
        title="route",
        schema=TaskAssigned,
        description="Tasks that need a route (an intent, or a router workflow's request).",
    )
    broker.publisher(
        stream=streams.agent_stream("{agent}"),
        title="agent-tasks",
        schema=TaskAssigned,
        description="Tasks for a known agent, straight to its stream.",
    )
    results = broker.publisher(
        stream=streams.RESULTS,
        title="deadlines",
        schema=TaskFailed,
        description="Tasks past their deadline, failed as retryable.",
    )
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

    # Batch mode (the default), as in the worker: runs and results are read `batch` at a time
    batched = Batched(settings, SERVICE) if settings.batch else None
    any_deadlines = any(wf.task_timeout for wf in workflows.workflows.values())

    def store() -> RunStore:
        return RunStore(res.redis)

    async def record(event: BaseEvent) -> None:
        await res.redis.xadd(streams.run_events(event.run_id), encode(event))

    def dispatch_stream(task: TaskAssigned) -> str:
        """A task for a known agent goes straight to that agent's stream; one that needs a route (an
        intent, or a router workflow's request) goes to the router."""
        return streams.agent_stream(task.agent) if task.agent in workflows.agents else streams.ROUTE

    def backing_off(slot: TaskSlot | None, now) -> bool:
        """A retry still waiting its backoff: it is sent by its timer, not now."""
        return slot is not None and slot.not_before is not None and slot.not_before > now

    def sending(task: TaskAssigned, now) -> TaskAssigned:
        """The task as sent now: a new event (own id, its real send time)."""
        return task.model_copy(update={"created_at": now, "event_id": new_id()})

    def pattern_of(state: RunState):
        wf = workflows.workflows[state.workflow]
        return wf, PATTERNS[wf.pattern]

    async def decide(
        run_id: str, choose, known: tuple[bytes, RunState] | None = None
    ) -> tuple[RunState | None, Decision | None]:
        """Apply `choose(state) -> Decision` atomically, then carry the decision out.

        The decision's tasks and notes are appended in the same atomic step as the new state (unless it
        must first copy objects or ask a person), so the common step costs one round trip to Redis, and
        a crash cannot separate the state from what it sent."""
        holder: dict = {}

        def change(state: RunState) -> RunState | None:
            holder["was_waiting"] = state.status == "waiting_for_human"
            decision = choose(state)
            holder["d"] = decision
            if decision.ignored or decision.state is None:
                return None
            if decision.retry:
                wf = workflows.workflows[decision.state.workflow]
                for task in decision.assign:
                    policy = wf.retry_policy(workflows.agents.get(task.agent or ""))
                    wait = backoff(policy.backoff, policy.max_delay, task.attempt, random.random())
                    decision.state.tasks[task.task_id].not_before = utcnow() + timedelta(seconds=wait)
            if decision.human:
                h = decision.human
                decision.state.status = "waiting_for_human"
                decision.state.waiting = HumanWait(
                    task_id=h.task_id,
                    question=h.question,
                    key=h.key,
                    on_reject=h.on_reject,
                    request=ObjectRef(bucket=settings.bucket, key=human_request_key(run_id, h.task_id)),
                )
            return decision.state

        def ops(new: RunState) -> list[tuple[str, str, str]]:
            d: Decision = holder["d"]
            holder["sent"], holder["notes_sent"], holder["end_sent"] = set(), False, False
            if d.copies or d.human:  # objects to write before anything is sent: the general path
                return []
            now = utcnow()
            events = streams.run_events(run_id)
            out = [append(events, note) for note in d.notes]
            holder["notes_sent"] = True
            for task in d.assign:
                slot = new.tasks.get(task.task_id)
                if backing_off(slot, now):
                    continue  # carry_out sets its timer
                task = sending(task, now)
                # recorded first, so a watcher sees the assignment before the agent's first event
                out += [append(events, task), append(dispatch_stream(task), task)]
                if slot is not None and slot.task.attempt == task.attempt:
                    slot.dispatched = True
                holder["sent"].add(task.task_id)
            if new.status in ("completed", "failed") and not publishes(new):
                # The end with the state: whoever reads `completed` finds run.completed in the stream.
                out += [append(events, end_event(new)), expire(streams.run_done(run_id), DONE_TTL)]
                holder["end_sent"] = True
            return out

        new = await store().update(run_id, change, known=known, ops=ops)
        decision = holder.get("d")
        if new is None:
            if decision is not None and decision.ignored:
                log.info("event_ignored", reason=decision.ignored)
            current = await store().get(run_id)
            if current is not None:
                await resend_undispatched(current)
                await ensure_end_recorded(current)
            return None, decision
        await carry_out(
            new,
            decision,
            sent=holder["sent"],
            notes_sent=holder["notes_sent"],
            end_sent=holder["end_sent"],
            waiting_changed=holder["was_waiting"] or new.status == "waiting_for_human",
        )
        return new, decision

    async def carry_out(
        state: RunState,
        d: Decision,
        sent: set[str] = frozenset(),
        notes_sent: bool = False,
        end_sent: bool = False,
        waiting_changed: bool = True,
    ) -> None:
        """What a committed decision still has to do (what `decide` sent with the state is skipped)."""
        if waiting_changed:  # first: whoever sees the run's next event finds the index up to date
            await sync_waiting(res.redis, state)
        for source, key in d.copies:
            await res.storage.copy(source, key)
        if not notes_sent:
            for note in d.notes:
                await record(note)
        if d.human:
            await ask_human(state, d)
        dispatched = {}
        for task in d.assign:
            if task.task_id in sent:
                continue
            slot = state.tasks.get(task.task_id)
            if backing_off(slot, utcnow()):
                await schedule(slot.not_before.timestamp(), "dispatch", task)
                continue
            task = sending(task, utcnow())
            await record(task)  # first, so a watcher sees the assignment before the agent's first event
            await res.redis.xadd(dispatch_stream(task), encode(task))
            dispatched[task.task_id] = task.attempt
        if dispatched:

            def mark(s: RunState) -> RunState | None:
                changed = False
                for tid, slot in s.tasks.items():
                    if dispatched.get(tid) == slot.task.attempt and not slot.dispatched:
                        slot.dispatched = changed = True
                return s if changed else None

            await store().update(state.run_id, mark)
        if state.status == "cancelled":  # first, so workers drop the run's queued tasks
            await res.redis.set(
                streams.run_cancelled(state.run_id), state.reason or "cancelled", ex=DONE_TTL
            )
        if not state.active and not end_sent:
            if state.status == "completed":
                await publish_outputs(state)
            await record(end_event(state))
            # the workers' done-marks of an ended run are kept a week, then go
            await res.redis.expire(streams.run_done(state.run_id), DONE_TTL)
        if state.status == "completed":
            log.info("run_completed", outputs=sorted(state.final), ended_by=state.ended_by)
        elif state.status == "failed":
            log.warning("run_failed", reason=state.reason)
        elif state.status == "cancelled":
            log.info("run_cancelled", reason=state.reason)

    def end_event(state: RunState) -> BaseEvent:
        common = dict(run_id=state.run_id, trace_id=state.trace_id, sender=sender)
        if state.status == "completed":
            return RunCompleted(
                **common, outputs=state.final, usage=state.usage, ended_by=state.ended_by
            )
        if state.status == "failed":
            return RunFailed(**common, reason=state.reason or "failed")
        return RunCancelled(**common, reason=state.reason or "cancelled")

    def publishes(state: RunState) -> dict[str, str]:
        """Where a triggered run's outputs are published when it completes (before run.completed)."""
        wf = workflows.workflows[state.workflow]
        if state.status != "completed" or not (wf.trigger and wf.trigger.publish_to and state.trigger):
            return {}
        return published_key(wf.trigger.publish_to, state.trigger.key, state.final)

    async def publish_outputs(state: RunState) -> None:
        for name, key in publishes(state).items():
            await res.storage.copy(state.final[name], key)

    async def ask_human(state: RunState, d: Decision) -> None:
        h = d.human
        key = human_request_key(state.run_id, h.task_id)
        body = {
            "run_id": state.run_id,
            "workflow": state.workflow,
            "task_id": h.task_id,
            "question": h.question,
            "inputs": {n: r.uri() for n, r in h.inputs.items()},
            "respond": f'write JSON {{"decision": "approve"|"reject", "text": ...}} under '
            f"{run_prefix(state.run_id)}human/responses/ (or: baton respond {state.run_id} --approve)",
        }
        ref = await res.storage.put(key, json.dumps(body, indent=2).encode(), content_type="application/json")
        await record(
            HumanInputRequested(
                run_id=state.run_id,
                task_id=h.task_id,
                question=h.question,
                request=ref,
                inputs=h.inputs,
                trace_id=state.trace_id,
                sender=sender,
            )
        )
        log.info("waiting_for_human", question=h.question)

    async def ensure_end_recorded(state: RunState) -> None:
        """A supervisor killed between committing a run's end and recording it: record it now."""
        if state.active:
            return
        entries = await res.redis.xrevrange(streams.run_events(state.run_id), count=50)
        if any(json.loads(f[DATA_FIELD.encode()])["type"] in TERMINAL_RUN_EVENTS for _i, f in entries):
            return
        log.warning("recording_missing_end", status=state.status)
        await carry_out(state, Decision(state=state))

    async def resend_undispatched(state: RunState) -> None:
        """A crash between committing a decision and publishing its tasks: publish them now."""
        if not state.active:
            return
        # Only slots old enough that their own handler is surely done with them: a younger one is
        # being published right now by a concurrent handler of this or another replica.
        now = utcnow()
        cutoff = now - timedelta(milliseconds=settings.reclaim_idle_ms)
        pending = [
            slot.task
            for slot in state.tasks.values()
            if not slot.dispatched
            and slot.since < cutoff
            and not backing_off(slot, now)
        ]
        if pending:
            log.warning("resending_undispatched", tasks=[t.task_id for t in pending])
            await carry_out(state, Decision(state=state, assign=pending))

    async def on_runs(event: RunRequest) -> None:
        """A run submitted or a cancellation requested."""
        if isinstance(event, RunCancelRequested):
            await on_cancel(event)
        else:
            await on_run(event)

    async def on_cancel(event: RunCancelRequested) -> None:
        def cancel(s: RunState) -> Decision:
            if not s.active:
                return Decision.ignore(f"run is already {s.status}")
            s.status, s.reason, s.waiting = "cancelled", event.reason, None
            s.tasks.clear()
            return Decision(state=s)

        new, _ = await decide(event.run_id, cancel)
        if new is None and await store().get(event.run_id) is None:
            log.warning("cancel_for_unknown_run")

    async def schedule(when: float, kind: str, task: TaskAssigned) -> None:
        member = json.dumps(
            {"kind": kind, "run_id": task.run_id, "task_id": task.task_id, "attempt": task.attempt}
        )
        await res.redis.zadd(streams.TIMERS, {member: when}, nx=True)

    async def timers() -> None:
        """Due retries are published and overdue tasks failed (retryable) by whichever replica pops them."""
        while True:
            try:
                await fire_due_timers()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - Redis briefly away: next round
                log.warning("timers_failed", exc_info=True)
            await asyncio.sleep(0.2)

    async def fire_due_timers() -> None:
        due = await res.redis.zrangebyscore(streams.TIMERS, "-inf", utcnow().timestamp(), start=0, num=100)
        for member in due:
            # Act first, remove after: a supervisor killed in between leaves the timer for another (or
            # for itself after a restart). Two replicas may both act on one timer; both actions are
            # idempotent (a duplicate dispatch is the same task, a duplicate deadline a stale failure).
            await fire(json.loads(member))
            await res.redis.zrem(streams.TIMERS, member)

    async def fire(timer: dict) -> None:
        state = await store().get(timer["run_id"])
        slot = state.tasks.get(timer["task_id"]) if state is not None and state.active else None
        if slot is None or slot.task.attempt != timer["attempt"]:
            return  # the task finished (or moved on) in time
        if timer["kind"] == "dispatch" and not slot.dispatched:
            await carry_out(state, Decision(state=state, assign=[slot.task]))
        elif timer["kind"] == "deadline":
            wf = workflows.workflows[state.workflow]
            await results.publish(
                TaskFailed(
                    run_id=state.run_id,
                    task_id=slot.task.task_id,
                    attempt=slot.task.attempt,
                    agent=slot.task.agent,
                    retryable=True,
                    trace_id=state.trace_id,
                    sender=sender,
                    error=f"deadline: still running after task_timeout={wf.task_timeout}s; re-assigned",
                )
            )

    async def on_run(event: RunSubmitted) -> None:
        """Start a run: bring its inputs into the workspace, store its state, start its pattern."""
        existing = await store().get(event.run_id)
        if existing is not None:
            # A redelivery: the run may have been stored by a supervisor that died before starting it.
            log.info("duplicate_run_submitted", status=existing.status)
            if existing.pattern in PATTERNS:  # (a run already started: `decide` re-sends what was not)
                await begin(existing.run_id, workflows.workflows[existing.workflow])
            return
        base = dict(
            run_id=event.run_id, workflow=event.workflow, trace_id=event.trace_id, params=event.params
        )
        wf = workflows.workflows.get(event.workflow)
        if wf is None:
            reason = f"unknown workflow {event.workflow!r}; known: {sorted(workflows.workflows)}"
            await start_failed(RunState(**base, pattern="?", status="failed", reason=reason))
            return
        try:
            inputs = await adopt_inputs(event)
        except ObjectMissingError as exc:
            await start_failed(
                RunState(**base, pattern=wf.pattern, status="failed", reason=f"input missing: {exc}")
            )
            return
        trigger = event.params.get("trigger")
        state = RunState(
            **base,
            pattern=wf.pattern,
            inputs=inputs,
            trigger=event.inputs.get(trigger) if isinstance(trigger, str) else None,
        )
        if not await store().create(state):
            return
        stages = (
            wf.agents_used()
            if not isinstance(wf, SequentialWorkflow)
            else [sequential.stage_agent(wf, workflows, i) for i in range(len(wf.stages))]
        )
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
        log.info("run_started", workflow=event.workflow, pattern=wf.pattern)
        await begin(event.run_id, wf)

    async def begin(run_id: str, wf) -> None:
        """Take a stored run's first step, unless some supervisor already did."""
        module = PATTERNS[wf.pattern]

        def start(s: RunState) -> Decision:
            fresh = s.status == "running" and s.phase == "start" and not s.tasks and not s.history
            return module.start(s, wf, workflows) if fresh else Decision.ignore("already started")

        await decide(run_id, start)

    async def start_failed(state: RunState) -> None:
        if await store().create(state):
            log.warning("run_failed", reason=state.reason)
            await record(
                RunFailed(run_id=state.run_id, reason=state.reason, trace_id=state.trace_id, sender=sender)
            )

    async def adopt_inputs(event: RunSubmitted) -> dict:
        """Inputs outside the run's workspace are copied in (exact version), so agents stay inside it."""
        prefix = run_prefix(event.run_id)
        inputs = {}
        for name, ref in event.inputs.items():
            if ref.bucket != settings.bucket:
                raise ObjectMissingError(
                    f"input {name!r} is in bucket {ref.bucket!r}, not {settings.bucket!r}"
                )
            if ref.key.startswith(prefix):
                inputs[name] = ref  # already in the workspace; the worker checks it exists on read
                continue
            if await res.storage.head(ref.key) is None:
                raise ObjectMissingError(f"input {name!r}: object {ref.uri()} does not exist")
            try:
                inputs[name] = await res.storage.copy(ref, f"{prefix}inputs/{posixpath.basename(ref.key)}")
            except ObjectMissingError as exc:  # a missing version; other errors (MinIO away) are retried
                raise ObjectMissingError(f"input {name!r}: cannot copy {ref.uri()}: {exc}") from exc
        return inputs

    async def on_result(event: TaskResult) -> None:
        """Record a task's progress; on an outcome, decide the run's next step."""
        if isinstance(event, TaskStarted):
            await record(event)
            if not any_deadlines:  # the common case: a start needs no state read at all
                return
            state = await store().get(event.run_id)
            timeout = state and state.active and workflows.workflows[state.workflow].task_timeout
            if timeout and event.task_id in state.tasks:
                task = state.tasks[event.task_id].task.model_copy(update={"attempt": event.attempt})
                await schedule(utcnow().timestamp() + timeout, "deadline", task)
            return
        if not isinstance(event, TaskCompleted | TaskFailed | RouteDecided):
            await record(event)
            return
        async with res.redis.pipeline(transaction=False) as pipe:  # one round trip for both
            pipe.xadd(streams.run_events(event.run_id), encode(event))
            pipe.get(streams.run_state(event.run_id))
            _, raw = await pipe.execute()
        state = RunState.model_validate_json(raw) if raw else None
        if state is None:
            log.warning("result_for_unknown_run")
            return
        wf, module = pattern_of(state)
        slot = outstanding(state, event)
        docs = {}
        if isinstance(event, TaskCompleted) and not isinstance(slot, str):
            wanted = getattr(module, "DOCS", {}).get(slot.role)
            if wanted and wanted in event.outputs:
                docs[wanted] = await res.storage.get(event.outputs[wanted])

        def choose(s: RunState) -> Decision:
            slot = outstanding(s, event)
            if isinstance(slot, str):
                return Decision.ignore(slot)
            if isinstance(event, RouteDecided):
                return module.on_route(s, wf, workflows, event)
            if isinstance(event, TaskCompleted):
                return module.on_completed(s, wf, workflows, event, docs)
            return module.on_failed(s, wf, workflows, event, slot)

        await decide(event.run_id, choose, known=(raw, state))

    async def on_object(event: ObjectChanged) -> None:
        """A file changed in the bucket: a trigger, a person's response, or a turn in a collaboration."""
        if event.bucket != settings.bucket:
            return
        run_id = run_of_key(event.key)
        if run_id is None:
            await maybe_trigger(event)
            return
        state = await store().get(run_id)
        if state is None or not state.active:
            return
        if event.key.startswith(f"{run_prefix(run_id)}human/responses/") and event.created:
            await on_response(state, event)
            return
        wf, module = pattern_of(state)
        if hasattr(module, "on_object"):
            await decide(
                run_id,
                lambda s: (
                    module.on_object(s, wf, workflows, event)
                    if s.active
                    else Decision.ignore(f"run is {s.status}")
                ),
            )

    async def on_response(state: RunState, event: ObjectChanged) -> None:
        if state.status != "waiting_for_human" or state.waiting is None:
            log.info("response_ignored", reason=f"run is {state.status}", key=event.key)
            return
        approved, text = parse_response(await res.storage.get(event.ref()))
        task_id = state.waiting.task_id
        wf, module = pattern_of(state)

        def choose(s: RunState) -> Decision:
            if s.status != "waiting_for_human" or s.waiting is None or s.waiting.task_id != task_id:
                return Decision.ignore("no longer waiting for this response")
            return module.on_human(s, wf, workflows, approved, text, event.ref())

        new, _ = await decide(state.run_id, choose)
        if new is not None:
            await record(
                HumanInputReceived(
                    run_id=state.run_id,
                    task_id=task_id,
                    approved=approved,
                    text=text,
                    response=event.ref(),
                    trace_id=state.trace_id,
                    sender=sender,
                )
            )

    async def maybe_trigger(event: ObjectChanged) -> None:
        if not event.created:
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

    if batched:
        # Up to `batch` events read at once and handled concurrently, one run's events in stream order.
        in_order = InOrder()

        async def on_runs_in_order(event: RunRequest) -> None:
            await in_order.run(event.run_id, lambda: on_runs(event))

        async def on_result_in_order(event: TaskResult) -> None:
            await in_order.run(event.run_id, lambda: on_result(event))

        group = streams.SUPERVISOR_GROUP
        batched.subscribe(broker, streams.RUNS, group, RunRequest, on_runs_in_order)
        batched.subscribe(broker, streams.RESULTS, group, TaskResult, on_result_in_order)
    else:
        subscribe(
            broker,
            streams.RUNS,
            streams.SUPERVISOR_GROUP,
            settings,
            on_runs,
            title="runs",
            description="Submitted runs and cancellations.",
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
    app = build_app(broker, res, log, service=SERVICE, redis=True, consumer=settings.consumer)
    if batched:
        batched.attach(app)
    loops: list[asyncio.Task] = []

    @app.after_startup
    async def _start_timers() -> None:
        loops.append(asyncio.create_task(timers()))

    @app.on_shutdown
    async def _stop_timers() -> None:
        for task in loops:
            task.cancel()

    return app


def main() -> None:
    asyncio.run(create_app().run())
