"""The supervisor's one way to change a run: load a few fields, decide, commit, then send.

1. Load `rev`, `core` and the fields the event names (`shared/runs.py`); a decision that touches more
   raises `Need` and the field is loaded before deciding again.
2. Decide with a pattern's pure function.
3. Before the commit, write what must exist when the new state is visible: a human request file, a ref
   manifest for a task too big for one event, a triggered run's published outputs.
4. Commit (`Store.commit`): the changed fields and what the run's own streams get (notes, assignments,
   the end), in one script, if no other handler committed meanwhile. On one Redis server the same script
   also writes what the commit sends elsewhere: the tasks to their agents' streams (or timers for retries
   in backoff) and the run's indexes (`Engine.fold`), so a hop is one atomic step. On a cluster the
   script stays in the run's hash slot, and with it goes `c:<event_id>`: the tasks, indexes and copies
   the commit caused.
5. After the commit, what is left outside the script: on a cluster the tasks and indexes; everywhere the
   waiting index and create-only copies. The handler returns (and its event is acknowledged) only after
   they are written, so a supervisor that dies in between leaves the event pending; its redelivery finds
   `c:<event_id>` and sends the same effects again.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from redis.asyncio.cluster import RedisCluster

from shared import faults, manifests, metrics, streams, telemetry
from shared.events import (
    BaseEvent,
    HumanInputRequested,
    RunCancelled,
    RunCompleted,
    RunFailed,
    TaskAssigned,
    utcnow,
)
from shared.runs import CAUSE, TASK, Effects, HumanWait, Need, RunState, sync_waiting
from shared.settings import Settings
from shared.workflow import BidirectionalWorkflow, WorkflowFile
from shared.workspace import run_prefix

from . import bidirectional, hierarchical, routed, sequential
from .decisions import Decision, backoff, fail, published_key
from .store import Loaded, Op, Store, append, expire, set_with_ttl

PATTERNS = {
    "sequential": sequential,
    "router": routed,
    "hierarchical": hierarchical,
    "bidirectional": bidirectional,
}
FIELDS_ONE_BY_ONE = 4  # fields a decision may ask for one at a time before all of their kind are read
MAX_NEEDS = 20  # a guard: past FIELDS_ONE_BY_ONE, a decision can ask for at most one read per kind


def human_request_key(run_id: str, task_id: str) -> str:
    return f"{run_prefix(run_id)}human/requests/{task_id}.json"


def manifest_key(task: TaskAssigned) -> str:
    return f"{run_prefix(task.run_id)}manifests/{task.task_id}.{task.attempt}.json"


@dataclass
class Outcome:
    """What `Engine.decide` did: the committed state (None if nothing changed) and the decision."""

    state: RunState | None
    decision: Decision | None
    loaded: Loaded


class Engine:
    """The resources and the commit path every supervisor handler shares."""

    def __init__(self, settings: Settings, workflows: WorkflowFile, log, sender: str) -> None:
        self.settings, self.workflows, self.log, self.sender = settings, workflows, log, sender
        self.storage = None
        self.redis = None  # plain client: timers and the waiting index
        self.db = None  # the Outbox: every handler's commands, group-committed
        self.store: Store | None = None
        self.retention_s = int(settings.retention_days * 86400)
        self.any_deadlines = any(wf.task_timeout for wf in workflows.workflows.values())
        # The only files in a run's workspace that can move it (objects.may_move_a_run), gathered once: a
        # collaboration's shared documents and its approval prefixes.
        collaborations = [wf for wf in workflows.workflows.values() if isinstance(wf, BidirectionalWorkflow)]
        self.documents = frozenset(wf.document for wf in collaborations)
        self.approvals = tuple(wf.approval for wf in collaborations)
        self.on_waiting = None  # async (engine, state): a run just started waiting for a person

    def bind(self, storage, redis, outbox) -> None:
        self.storage, self.redis, self.db = storage, redis, outbox
        self.store = Store(outbox, keep=self.settings.state_cache)
        # One server: a commit also writes the tasks and indexes it causes (one script, nothing owed after
        # it). A cluster's commit stays in the run's hash slot: those go through the outbox, owed in `c:`.
        self.one_server = not (isinstance(outbox.redis, RedisCluster) or self.settings.redis_one_slot)

    # --- helpers -------------------------------------------------------------------------------------
    def pattern_of(self, state: RunState):
        wf = self.workflows.workflows[state.workflow]
        return wf, PATTERNS[wf.pattern]

    def dispatch_stream(self, task: TaskAssigned) -> str:
        """A task for a known agent goes straight to its stream; one that needs a route to the router."""
        return streams.agent_stream(task.agent) if task.agent in self.workflows.agents else streams.ROUTE

    async def record(self, event: BaseEvent) -> None:
        await self.db.send(streams.run_events(event.run_id), event)

    def end_event(self, state: RunState) -> BaseEvent:
        common = dict(run_id=state.run_id, trace_id=state.trace_id, sender=self.sender)
        if state.status == "completed":
            return RunCompleted(**common, outputs=state.final, usage=state.usage, ended_by=state.ended_by)
        if state.status == "failed":
            return RunFailed(**common, reason=state.reason or "failed")
        return RunCancelled(**common, reason=state.reason or "cancelled")

    def publishes(self, state: RunState) -> dict[str, str]:
        """Where a triggered run's outputs are published when it completes (before run.completed)."""
        wf = self.workflows.workflows.get(state.workflow)
        if state.status != "completed" or not (wf and wf.trigger and wf.trigger.publish_to and state.trigger):
            return {}
        return published_key(wf.trigger.publish_to, state.trigger.key, state.final)

    # --- the commit path -----------------------------------------------------------------------------
    @telemetry.spanned(
        "supervisor decide",
        lambda self, run_id, choose, *, cause, **_: {"baton__run_id": run_id, "baton__cause": cause},
        lambda out: {
            "baton__run__status": out.state.status if out.state is not None else None,
            "baton__tasks_assigned": len(out.decision.assign) if out.decision is not None else 0,
            "baton__ignored": out.decision.ignored if out.decision is not None else None,
        },
    )
    async def decide(
        self,
        run_id: str,
        choose: Callable[[RunState], Decision],
        *,
        cause: str,
        loaded: Loaded | None = None,
        want: tuple[str, ...] = (),
        first: RunState | None = None,
        record: BaseEvent | None = None,
    ) -> Outcome:
        """Apply `choose(state) -> Decision` atomically (retried on a conflict), then carry it out.

        `cause`: the id of the event being handled; `loaded`: what the caller already read; `record`: an
        event for the run's stream, appended by the commit (or on its own if nothing is committed)."""
        if loaded is None:
            loaded = await self.store.load(run_id, *want, CAUSE + cause, cached=True)
        needs = 0
        while True:
            if not loaded.exists:
                if record is not None:
                    await self.record(record)
                return Outcome(None, None, loaded)
            state, first = first or loaded.view(), None  # (`first`: the caller's unchanged view of `loaded`)
            was_waiting = state.status == "waiting_for_human"
            old_status = state.status
            try:
                decision = choose(state)
            except Need as need:
                needs += 1
                if needs > MAX_NEEDS:
                    raise RuntimeError(f"decision for run {run_id} kept asking for more fields") from None
                # A few fields one by one (a subtask's dependents); past that, all of the kind at once
                field = need.field if needs <= FIELDS_ONE_BY_ONE else need.field[:2]
                await self.store.load_more(loaded, field)
                continue
            if decision.ignored or decision.state is None:
                if loaded.cached:  # (a redelivery? what its commit owes is in `c:`, not read: read it all)
                    loaded = await self.store.load(run_id, *self._read(loaded), CAUSE + cause)
                    continue
                if record is not None:
                    await self.record(record)
                await self.redo(loaded, cause)
                if decision.ignored:
                    self.log.info("event_ignored", reason=decision.ignored)
                return Outcome(None, decision, loaded)
            new = decision.state
            ops, effects = await self.prepare(new, decision, was_waiting)
            if record is not None:
                ops.insert(0, append(streams.run_events(run_id), record))
            faults.point("supervisor.before_commit")  # the decision's files written, nothing committed
            if loaded.rev is None:  # a new run: listed in the run index once committed
                effects.created = new.created_at.timestamp()
                effects.moved = ""
            elif old_status != new.status:
                effects.moved = old_status
            owed = self.fold(new, decision, effects, ops)
            stored = await self.store.commit(loaded, new, ops, (cause, owed) if owed.owed else None)
            if stored is not None:
                break
            # Another handler or replica committed meanwhile: read what we had read again, decide again.
            loaded = await self.store.load(run_id, *self._read(loaded), CAUSE + cause)
        faults.point("supervisor.after_commit")  # committed; on a cluster nothing sent: a redelivery sends it
        metrics.run_committed(new.status, effects.created is not None, was_waiting, retried=decision.retry)
        await self.after_commit(new, decision, owed, was_waiting, cause)
        faults.point("supervisor.after_send")  # sent, not acknowledged: a redelivery may send it again
        self.store.put(stored, new)  # (only now: a handler that failed before leaves nothing kept)
        return Outcome(new, decision, loaded)

    @staticmethod
    def _read(loaded: Loaded) -> list[str]:
        """The fields `loaded` holds, to read them again (`rev` and `core` always are)."""
        return [f for f in loaded.fields if f not in ("rev", "core")]

    async def prepare(self, new: RunState, d: Decision, was_waiting: bool):
        """The decision's writes before its commit, and the operations that go with it."""
        now = utcnow()
        wf = self.workflows.workflows.get(new.workflow)
        if d.retry and wf is not None:
            for task in d.assign:
                policy = wf.retry_policy(self.workflows.agents.get(task.agent or ""))
                wait = backoff(policy.backoff, policy.max_delay, task.attempt, random.random())
                new.tasks[task.task_id].not_before = now + timedelta(seconds=wait)
        events = streams.run_events(new.run_id)
        ops = [append(events, note) for note in d.notes]
        effects = Effects(
            copies=list(d.copies), index=was_waiting or d.human is not None, ask=d.human is not None
        )
        sendable = []
        for task in d.assign:
            try:
                sendable.append(await self.fit(task))  # (a new event: decisions make each task anew)
            except ValueError as exc:  # never send what a consumer would refuse: the run fails instead
                self.log.warning("task_not_sendable", task=task.task_id, error=str(exc))
                fail(new, str(exc))
                d.assign, d.human, d.copies, sendable = [], None, [], []
                effects = Effects(index=was_waiting)
                break
        d.assign = [task for task, _data in sendable]
        d.encoded = {task.task_id: data for task, data in sendable}
        for task, data in sendable:
            slot = new.tasks.get(task.task_id)
            if slot is not None and slot.task.attempt == task.attempt:
                slot.task = task
            effects.tasks.append(task.task_id)
            if slot is None or slot.not_before is None:
                ops.append(("x", events, data))  # recorded first: a watcher sees it before its start
        if d.human and new.active:
            await self.ask(new, d)
            ops.append(append(events, d.human_event))
            # Listed before the request is visible: whoever sees `human.requested` finds the run in
            # `baton runs --waiting` (the index is advisory: readers check each run's status).
            await sync_waiting(self.redis, new)
        if not new.active:
            for name, key in self.publishes(new).items():
                await self.storage.copy(new.final[name], key)
            ops.append(append(events, self.end_event(new)))
            if new.status == "cancelled":  # workers drop the run's queued tasks
                reason = new.reason or "cancelled"
                ops.append(set_with_ttl(streams.run_cancelled(new.run_id), reason, self.retention_s))
            for key in (streams.run_state(new.run_id), events):
                ops.append(expire(key, self.retention_s))
            effects.ended = True  # the done-marks (in the results partition's slot) expire after the commit
        return ops, effects

    def fold(self, new: RunState, d: Decision, effects: Effects, ops: list[Op]) -> Effects:
        """What the commit will owe after it is written: on one server, the tasks it sends and the indexes
        it moves go in its own script (`ops`), and only the rest is owed; on a cluster, all of `effects`."""
        if not self.one_server:
            return effects
        ops += self.index_commands(new, effects)
        ops += self.task_commands(new, d.assign, d.encoded)
        return effects.model_copy(update={"tasks": [], "created": None, "moved": None, "ended": False})

    async def fit(self, task: TaskAssigned) -> tuple[TaskAssigned, str]:
        """The task as it can be sent, and its JSON: inputs too many for one event go in a manifest object
        (the worker reads it into `ctx.inputs`); a task still too big is refused with the reason."""
        limit = self.settings.max_event_bytes
        data = task.model_dump_json()
        if len(data) <= limit:
            return task, data
        if task.inputs:
            body = manifests.encode(task.inputs)
            ref = await self.storage.put(manifest_key(task), body, content_type="application/json")
            task = task.model_copy(update={"inputs": {}, "inputs_manifest": ref})
            data = task.model_dump_json()
            if len(data) <= limit:
                return task, data
        raise ValueError(
            f"task {task.task_id} for {task.agent or 'the router'} is {len(data)} bytes, over the "
            f"{limit}-byte event limit even with its inputs in a manifest: shorten its instruction or params"
        )

    async def ask(self, state: RunState, d: Decision) -> None:
        """Write the request file a person answers, before the run is seen waiting."""
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
        ref = await self.storage.put(
            key, json.dumps(body, indent=2).encode(), content_type="application/json"
        )
        state.status = "waiting_for_human"
        state.waiting = HumanWait(
            task_id=h.task_id,
            question=h.question,
            key=h.key,
            on_reject=h.on_reject,
            request=ref,
            agent=h.agent,
        )
        d.human_event = HumanInputRequested(
            run_id=state.run_id,
            task_id=h.task_id,
            question=h.question,
            request=ref,
            inputs=h.inputs,
            trace_id=state.trace_id,
            sender=self.sender,
        )

    async def after_commit(
        self, state: RunState, d: Decision, effects: Effects, was_waiting: bool, cause: str
    ) -> None:
        """What the commit left to do: what `effects` says it owes (`fold` took out what it wrote itself)."""
        sends = (lambda: self.task_writes(state, d.assign, d.encoded)) if effects.tasks else None
        await self.update_indexes(state, effects, sends)
        await self.copy_once(state, effects.copies)
        if state.status == "completed":
            self.log.info("run_completed", outputs=sorted(state.final), ended_by=state.ended_by)
        elif state.status == "failed":
            self.log.warning("run_failed", reason=state.reason)
        elif state.status == "cancelled":
            self.log.info("run_cancelled", reason=state.reason)
        elif state.status == "waiting_for_human" and not was_waiting:
            self.log.info("waiting_for_human", question=state.waiting.question if state.waiting else None)
        if effects.ask:
            await self.asked(state)
        if effects.owed:  # done: what a redelivery would re-send is no longer needed
            self.db.call("HDEL", streams.run_state(state.run_id), CAUSE + cause)

    async def update_indexes(self, state: RunState, effects: Effects, then=None) -> None:
        """The indexes a commit moves (the waiting index first), then `then()`'s writes (the tasks it sends)
        queued with the others: one round trip for all of them."""
        if effects.index:
            await sync_waiting(self.redis, state)
        writes = [*self.index_writes(state, effects), *(then() if then else ())]
        if writes:
            await asyncio.gather(*writes)

    def index_writes(self, state: RunState, effects: Effects) -> list[asyncio.Future]:
        """`index_commands`, queued on the outbox; the waiting index is `sync_waiting`'s."""
        return [self.db.call(*command) for command in self.index_commands(state, effects)]

    def index_commands(self, state: RunState, effects: Effects) -> list[Op]:
        """The run index, the status indexes and the done-marks' expiry (keys outside the run's slot)."""
        commands: list[Op] = []
        if effects.created is not None:
            commands.append(
                ("ZADD", streams.run_workflow_index(state.workflow), effects.created, state.run_id)
            )
            commands.append(("ZADD", streams.RUN_INDEX, effects.created, state.run_id))
        if effects.moved is not None:  # the status indexes (the console's filters) follow the run
            if effects.moved:
                commands.append(("ZREM", streams.run_status_index(effects.moved), state.run_id))
            score = state.created_at.timestamp()
            commands.append(("ZADD", streams.run_status_index(state.status), score, state.run_id))
        if effects.ended:
            # (the hash may not exist yet: a late outcome would create it without a TTL)
            done = streams.run_done(state.run_id, self.settings.result_partitions)
            commands.append(("HSETNX", done, ".ended", state.status))
            commands.append(("EXPIRE", done, self.retention_s))
        return commands

    async def asked(self, state: RunState) -> None:
        """A run started waiting for a person: a response already in the bucket answers it."""
        if self.on_waiting is not None and state.status == "waiting_for_human":
            await self.on_waiting(self, state)

    async def send(self, state: RunState, tasks: list[TaskAssigned], encoded: dict | None = None) -> None:
        """Append tasks to their streams, or time them if their retry waits out a backoff."""
        await asyncio.gather(*self.task_writes(state, tasks, encoded))

    def task_writes(
        self, state: RunState, tasks: list[TaskAssigned], encoded: dict | None = None
    ) -> list[asyncio.Future]:
        """`task_commands`, queued on the outbox (a task's entry with the other entries of its stream)."""
        return [
            self.db.send(c[1], None, data=c[2].encode()) if c[0] == "x" else self.db.call(*c)
            for c in self.task_commands(state, tasks, encoded)
        ]

    def task_commands(
        self, state: RunState, tasks: list[TaskAssigned], encoded: dict | None = None
    ) -> list[Op]:
        """`send`'s writes: a task's entry on its stream, or a timer for one whose retry waits out a
        backoff (`encoded`: the tasks' JSON, if made already)."""
        commands: list[Op] = []
        now = utcnow() if tasks else None
        for task in tasks:
            slot = state.tasks.get(task.task_id)
            if slot is not None and slot.not_before is not None and slot.not_before > now:
                commands.append(self.timer(slot.not_before.timestamp(), "dispatch", task))
            else:
                data = (encoded or {}).get(task.task_id) or task.model_dump_json()
                commands.append(("x", self.dispatch_stream(task), data))
        return commands

    async def copy_once(self, state: RunState, copies) -> None:
        """Create-only copies (a redone copy makes no second version), then what the run's pattern does
        with each new object (`on_copied`): it does not wait for the object's notification, which a
        MinIO restart can lose; the notification then finds the version seen."""
        wf, module = self.pattern_of(state) if copies else (None, None)
        for source, key in copies:
            # (a redo may run while the commit that owes the copy is still making it: create-only)
            ref = await self.storage.copy_new(source, key)
            if hasattr(module, "on_copied"):

                def choose(s: RunState, ref=ref) -> Decision:
                    if not s.active:
                        return Decision.ignore(f"run is {s.status}")
                    return module.on_copied(s, wf, self.workflows, ref)

                await self.decide(state.run_id, choose, cause=f"copied:{key}@{ref.version_id}")

    async def redo(self, loaded: Loaded, cause: str) -> None:
        """The event was handled before: send again what its commit caused (if it is still owed), and
        what any other commit of the run still owes. Those are commits made while this event was handled,
        under causes of their own (a response applied when the run asked, an object copied): if sending
        their effects failed, the failure ended this event's handling, and no redelivery of theirs exists.
        (Sending a task twice is harmless: one entry owns an attempt.)"""
        owed = {cause: effects} if (effects := loaded.effects(cause)) is not None else {}
        owed.update(await self.owed_elsewhere(loaded.run_id, cause))
        for owner, effects in owed.items():
            await self.update_indexes(loaded.view(), effects)
            missing = [TASK + t for t in effects.tasks if TASK + t not in loaded.fields]
            for name in missing:
                await self.store.load_more(loaded, name)
            state = loaded.view()
            tasks = [state.tasks[t].task for t in effects.tasks if dict.get(state.tasks, t) is not None]
            if state.active:
                # (info, not a warning: besides a redelivery after a crash, a response file arrives twice by
                # design, announced and notified, and the second may come while the first is still sending)
                self.log.info(
                    "resending", tasks=[t.task_id for t in tasks], copies=len(effects.copies), cause=owner
                )
                await self.send(state, tasks)
                await self.copy_once(state, effects.copies)
                if effects.ask:
                    await self.asked(state)
            self.db.call("HDEL", streams.run_state(state.run_id), CAUSE + owner)

    async def owed_elsewhere(self, run_id: str, cause: str) -> dict[str, Effects]:
        """Effects other commits of the run still owe (`c:` fields other than `cause`'s)."""
        out: dict[str, Effects] = {}
        cursor = b"0"
        while True:
            cursor, pairs = await self.db.call(
                "HSCAN", streams.run_state(run_id), cursor, "MATCH", CAUSE + "*", "COUNT", 1000
            )
            for name, raw in zip(pairs[::2], pairs[1::2], strict=True):
                owner = (name.decode() if isinstance(name, bytes) else name)[len(CAUSE) :]
                if owner != cause:
                    out[owner] = Effects.model_validate_json(raw)
            if cursor in (b"0", 0, "0"):
                return out

    def schedule(self, when: float, kind: str, task: TaskAssigned) -> asyncio.Future:
        """Time `task` (queued on the outbox: await the result)."""
        return self.db.call(*self.timer(when, kind, task))

    @staticmethod
    def timer(when: float, kind: str, task: TaskAssigned) -> Op:
        member = json.dumps(
            {"kind": kind, "run_id": task.run_id, "task_id": task.task_id, "attempt": task.attempt}
        )
        return ("ZADD", streams.TIMERS, "NX", when, member)
