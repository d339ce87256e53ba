"""A run's durable state: a Redis hash per run, read and written a field at a time.

Layout of `baton:{<run_id>}:state` (every key of one run shares the `{<run_id>}` hash tag, so an atomic
step on a run touches one hash slot and the same code runs on a Redis Cluster):

- `rev`: the revision, +1 per commit (the compare in compare-and-set);
- `core`: `RunState` without its tasks and subtasks (JSON), whose size does not grow with a plan's;
- `t:<task_id>`: one outstanding task (`TaskSlot`, JSON);
- `s:<subtask_id>`: one subtask of a hierarchical plan (`SubtaskState`, JSON);
- `c:<event_id>`: what the commit caused by that event sends outside the run's slot (`Effects`, JSON),
  until it is sent: a redelivery of the event sends it again.

A hop reads `core`, `rev` and the few fields its decision touches, and writes back only what changed, so
its cost does not grow with the run. A decision that touches a field it did not load raises `Need`; the
supervisor loads it and decides again (decisions are pure functions of the state).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from . import streams
from .events import ObjectRef, TaskAssigned, Usage, utcnow

RunStatus = Literal["running", "waiting_for_human", "completed", "failed", "cancelled"]
ACTIVE = ("running", "waiting_for_human")
HISTORY_KEPT = 50  # a run's history notes: the newest are kept, so the core stays small
WAITING = streams.RUNS_WAITING

TASK, SUBTASK, CAUSE = "t:", "s:", "c:"


class TaskSlot(BaseModel):
    """A task the run is waiting on. Kept whole so a crash between commit and send can re-send it."""

    task: TaskAssigned
    role: str = Field("stage", description="stage, planner, subtask, review, aggregate, turn, route")
    key: str = Field("", description="What the task is for: a stage index, subtask id, ...")
    since: datetime = Field(default_factory=utcnow, description="When the slot was created.")
    not_before: datetime | None = Field(None, description="A retry's backoff: not sent before this.")
    usage_counted: bool = Field(False, description="A model classifier's usage for it is in the run's.")
    question: str | None = Field(None, description="Its agent asked a person this; waits for the answer.")
    resume: dict[str, str] = Field(default_factory=dict, description="What the agent needs to go on.")
    answers: int = Field(0, description="Attempts that carried an answer (not counted as retries).")


class HumanWait(BaseModel):
    """What a paused run asked of a person."""

    task_id: str
    question: str
    request: ObjectRef
    key: str = ""
    on_reject: str = "fail"
    agent: str | None = Field(None, description="The agent that asked (its task gets the answer), if any.")


class Subtask(BaseModel):
    """One subtask of a hierarchical plan, as the planner wrote it (validated)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    agent: str
    instruction: str = ""
    inputs: list[str] = Field(default_factory=list, description="Run input names or ids of other subtasks.")
    depends_on: list[str] = Field(default_factory=list)
    acceptance_criteria: str | None = None


def subtask_task_id(run_id: str, subtask: str, agent: str) -> str:
    """The task that does plan subtask `subtask` with `agent` (deterministic: a redelivered assignment is
    the same task)."""
    return f"{run_id}.sub.{subtask}.{agent}"


def review_task_id(run_id: str, subtask: str, agent: str, attempt: int) -> str:
    """The review of `agent`'s attempt `attempt` at plan subtask `subtask`."""
    return f"{run_id}.review.{subtask}.{agent}.{attempt}"


def subtask_of(task: TaskAssigned) -> str | None:
    """The plan subtask `task` does or reviews, or None (a plan, an aggregation, a stage of another
    pattern). A subtask id has no dot (`Subtask.id`), so it is the part after the kind."""
    for kind in ("sub", "review"):
        prefix = f"{task.run_id}.{kind}."
        if task.task_id.startswith(prefix):
            return task.task_id[len(prefix) :].split(".", 1)[0]
    return None


class SubtaskState(BaseModel):
    spec: Subtask
    status: Literal["pending", "running", "reviewing", "accepted", "failed"] = "pending"
    agent: str
    attempt: int = 1  # attempts with the current agent
    total_attempts: int = 0
    tried: list[str] = Field(default_factory=list, description="Agents that gave up or were rejected.")
    outputs: dict[str, ObjectRef] = Field(default_factory=dict)
    feedback: ObjectRef | None = None
    rejections: list[str] = Field(default_factory=list)
    dependents: list[str] = Field(default_factory=list, description="Subtasks that wait for this one.")
    waiting_on: int = Field(0, description="Dependencies not accepted yet.")


class Effects(BaseModel):
    """What one commit sent outside the run's slot, so a redelivery of its event can send it again."""

    tasks: list[str] = Field(default_factory=list, description="Task ids assigned (sent or timed).")
    copies: list[tuple[ObjectRef, str]] = Field(default_factory=list, description="Create-only copies.")
    index: bool = Field(False, description="The waiting index follows the new status.")
    created: float | None = Field(None, description="A new run: its place in the run index.")
    ask: bool = Field(False, description="The run started waiting: apply a response already there.")
    ended: bool = Field(False, description="The run ended: its workers' done-marks expire with it.")
    moved: str | None = Field(
        None, description="The status the run left ('' for a new run): the status indexes follow it."
    )

    @property
    def owed(self) -> bool:
        return bool(
            self.tasks
            or self.copies
            or self.index
            or self.ask
            or self.ended
            or self.created is not None
            or self.moved is not None
        )


class Need(Exception):  # noqa: N818 - a request, not a failure
    """A decision touched a part of the run that was not loaded: load `field` (or all of a kind) and
    decide again."""

    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


class Partial(dict):
    """A run's tasks or subtasks as far as they were loaded. Reading a key that was not loaded (and may
    exist) raises `Need`, and so does iterating before everything is loaded."""

    def __init__(self, prefix: str, items: dict, complete: bool = False, absent: set | None = None) -> None:
        super().__init__(items)
        self.prefix, self.complete, self.absent = prefix, complete, set(absent or ())
        self.cleared = False

    def _load(self, key) -> None:
        if not self.complete and key not in self.absent and not dict.__contains__(self, key):
            raise Need(self.prefix + key)

    def _all(self) -> None:
        if not self.complete:
            raise Need(self.prefix)

    def __missing__(self, key):
        self._load(key)
        raise KeyError(key)

    def __contains__(self, key) -> bool:
        self._load(key)
        return dict.__contains__(self, key)

    def get(self, key, default=None):
        self._load(key)
        return dict.get(self, key, default)

    def pop(self, key, *default):
        self._load(key)
        return dict.pop(self, key, *default)

    def __iter__(self):
        self._all()
        return dict.__iter__(self)

    def __len__(self) -> int:
        self._all()
        return dict.__len__(self)

    def keys(self):
        self._all()
        return dict.keys(self)

    def values(self):
        self._all()
        return dict.values(self)

    def items(self):
        self._all()
        return dict.items(self)

    def clear(self) -> None:
        """Drop them all, loaded or not (a run that ended)."""
        dict.clear(self)
        self.cleared = True


class RunState(BaseModel):
    run_id: str
    workflow: str
    pattern: str
    status: RunStatus = "running"
    trace_id: str
    inputs: dict[str, ObjectRef] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    waiting: HumanWait | None = None
    responses_used: list[str] = Field(default_factory=list, description="Response files already applied.")
    asks: list[str] = Field(
        default_factory=list, description="Tasks whose agents' questions wait for the current one's answer."
    )
    # sequential
    stage: int = 0
    loops: dict[str, int] = Field(default_factory=dict, description="Times a stage was re-entered.")
    outputs: dict[str, ObjectRef] = Field(default_factory=dict, description="All outputs so far, by name.")
    # hierarchical
    phase: str = "start"
    n_subtasks: int = 0
    n_accepted: int = 0
    # bidirectional
    turns: int = 0
    versions: list[str] = Field(default_factory=list, description="Document versions seen (etags), in order.")
    document: ObjectRef | None = None
    # results
    final: dict[str, ObjectRef] = Field(default_factory=dict, description="The run's result.")
    ended_by: str | None = None
    usage: Usage = Field(default_factory=Usage)
    trigger: ObjectRef | None = None
    reason: str | None = None
    history: list[str] = Field(default_factory=list, description=f"Notes, the newest {HISTORY_KEPT}.")
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    # stored one field each, not in the core (see the module's docstring)
    tasks: dict[str, TaskSlot] = Field(default_factory=dict, exclude=True, description="Outstanding tasks.")
    subtasks: dict[str, SubtaskState] = Field(default_factory=dict, exclude=True)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def note(self, text: str) -> None:
        self.history.append(text)
        del self.history[:-HISTORY_KEPT]


def parse_fields(fields: dict[bytes | str, bytes | None]) -> RunState | None:
    """A whole run state from its hash fields (HGETALL), or None if there is no core."""
    text = {(k.decode() if isinstance(k, bytes) else k): v for k, v in fields.items() if v is not None}
    core = text.get("core")
    if core is None:
        return None
    state = RunState.model_validate_json(core)
    state.tasks = {k[2:]: TaskSlot.model_validate_json(v) for k, v in text.items() if k.startswith(TASK)}
    state.subtasks = {
        k[2:]: SubtaskState.model_validate_json(v) for k, v in text.items() if k.startswith(SUBTASK)
    }
    return state


async def get_run(redis, run_id: str) -> RunState | None:
    """The whole state of one run (for clients: it reads every field)."""
    return parse_fields(await redis.hgetall(streams.run_state(run_id)))


async def cores(redis, run_ids: list[str]) -> list[dict | None]:
    """Each run's `core` field, parsed, in one pipeline (None: the run has no state)."""
    async with redis.pipeline(transaction=False) as pipe:
        for run_id in run_ids:
            pipe.hget(streams.run_state(run_id), "core")
        raw = await pipe.execute()
    return [json.loads(core) if core is not None else None for core in raw]


@dataclass
class IndexPage:
    rows: list[tuple[str, dict]] = field(default_factory=list)  # (run id, its core), newest first
    next_cursor: int | None = None
    total: int = 0  # entries in the index (advisory: some may not match)
    scanned: int = 0


async def index_page(
    redis,
    index: str,
    *,
    cursor: int = 0,
    size: int = 50,
    status: str = "",
    workflow: str = "",
    chunk: int = 200,
    scan_limit: int = 5000,
) -> IndexPage:
    """One page of a run index (a sorted set by submission time: every run, a status, a workflow, the
    runs waiting for a person), newest first from `cursor`: each run's core, read `chunk` entries a round
    trip. An index is advisory, so each core is checked against `status` and `workflow`; a page looks at
    most `scan_limit` entries, so it stays bounded (a short page, with a cursor to go on)."""
    page = IndexPage(total=await redis.zcard(index))
    pos = cursor
    while len(page.rows) < size and page.scanned < scan_limit:
        ids = [i.decode() for i in await redis.zrevrange(index, pos, pos + chunk - 1)]
        if not ids:
            return page
        for run_id, core in zip(ids, await cores(redis, ids), strict=True):
            pos += 1
            page.scanned += 1
            if core is None:
                continue
            if (status and core.get("status") != status) or (workflow and core.get("workflow") != workflow):
                continue
            page.rows.append((run_id, core))
            if len(page.rows) >= size:
                break
    page.next_cursor = pos if pos < page.total else None
    return page


async def index_waiting(redis, chunk: int = 1000) -> int:
    """If the waiting index does not exist: list in it the runs that the status index has waiting for a
    person and whose state confirms it, by submission time, as `sync_waiting` would have. A supervisor does
    this at start: once after an upgrade from the unordered set of before 2026-12-01, otherwise nothing to
    do. How many it listed."""
    if await redis.exists(WAITING):
        return 0
    listed = await redis.zrange(streams.run_status_index("waiting_for_human"), 0, -1, withscores=True)
    added = 0
    for start in range(0, len(listed), chunk):
        part = listed[start : start + chunk]
        found = await cores(redis, [run_id.decode() for run_id, _score in part])
        waiting = {
            run_id: score
            for (run_id, score), core in zip(part, found, strict=True)
            if core is not None and core.get("status") == "waiting_for_human"
        }
        if waiting:
            added += await redis.zadd(WAITING, waiting)
    return added


async def sync_waiting(redis, state: RunState) -> None:
    """The waiting index follows the state (advisory: readers check each run's status). Ordered by the
    run's submission, so the inbox reads a page of it, not all of it."""
    if state.status == "waiting_for_human":
        await redis.zadd(WAITING, {state.run_id: state.created_at.timestamp()})
    else:
        await redis.zrem(WAITING, state.run_id)
