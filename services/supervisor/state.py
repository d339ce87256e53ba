"""The supervisor's durable run state: one JSON document per run in Redis, updated optimistically.

Nothing about a run lives in a supervisor's memory, so any replica (or a restarted one) can carry on.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field

from shared import streams
from shared.events import ObjectRef, TaskAssigned, Usage, utcnow

RunStatus = Literal["running", "waiting_for_human", "completed", "failed", "cancelled"]


class TaskSlot(BaseModel):
    """A task the run is waiting on. Kept whole so a crash between commit and publish can re-send it."""

    task: TaskAssigned
    role: str = Field("stage", description="stage, planner, subtask, review, aggregate, turn, route")
    key: str = Field("", description="What the task is for: a stage index, subtask id, ...")
    dispatched: bool = False
    since: datetime = Field(default_factory=utcnow, description="When the slot was created.")
    not_before: datetime | None = Field(None, description="A retry's backoff: not published before this.")
    usage_counted: bool = Field(False, description="A model classifier's usage for it is in the run's.")


class HumanWait(BaseModel):
    """What a paused run asked of a person."""

    task_id: str
    question: str
    request: ObjectRef
    key: str = ""
    on_reject: str = "fail"


class Subtask(BaseModel):
    """One subtask of a hierarchical plan, as the planner wrote it (validated)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    agent: str
    instruction: str = ""
    inputs: list[str] = Field(default_factory=list, description="Run input names or ids of other subtasks.")
    depends_on: list[str] = Field(default_factory=list)
    acceptance_criteria: str | None = None


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


class RunState(BaseModel):
    run_id: str
    workflow: str
    pattern: str
    status: RunStatus = "running"
    trace_id: str
    inputs: dict[str, ObjectRef] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    tasks: dict[str, TaskSlot] = Field(default_factory=dict, description="Outstanding tasks, by task id.")
    waiting: HumanWait | None = None
    # sequential
    stage: int = 0
    outputs: dict[str, ObjectRef] = Field(default_factory=dict, description="All outputs so far, by name.")
    # hierarchical
    phase: str = "start"
    subtasks: dict[str, SubtaskState] = Field(default_factory=dict)
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
    history: list[str] = Field(default_factory=list)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)

    @property
    def active(self) -> bool:
        return self.status in ("running", "waiting_for_human")


# Compare-and-set of one run's state, together with what its decision sends: a supervisor dying at any
# instruction leaves either the old state and nothing sent, or the new state and everything sent.
# KEYS[1]: the state; KEYS[2..]: the other keys. ARGV[1]: the state as it was read, ARGV[2]: the new
# state, then per operation: `x` (append an entry, the value is its `__data__`) or `e` (expire the key in
# the value's seconds), the key's index in KEYS, the value. Returns 0 if the state changed since it was
# read (nothing written), else 1.
CAS = """
local current = redis.call('GET', KEYS[1])
if current ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
for i = 3, #ARGV, 3 do
  local key = KEYS[tonumber(ARGV[i + 1])]
  if ARGV[i] == 'x' then redis.call('XADD', key, '*', '__data__', ARGV[i + 2])
  else redis.call('EXPIRE', key, ARGV[i + 2]) end
end
return 1
"""


def append(stream: str, event: BaseModel) -> tuple[str, str, str]:
    """An operation for `RunStore.update`: append `event` to `stream`."""
    return ("x", stream, event.model_dump_json())


def expire(key: str, seconds: int) -> tuple[str, str, str]:
    """An operation for `RunStore.update`: expire `key`."""
    return ("e", key, str(seconds))


class RunStore:
    """Reads and writes run states; `update` is optimistic (compare-and-set, retried on a conflict)."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis

    async def get(self, run_id: str) -> RunState | None:
        raw = await self.redis.get(streams.run_state(run_id))
        return RunState.model_validate_json(raw) if raw else None

    async def create(self, state: RunState) -> bool:
        """Store a new run; False if a run with this id already exists (a duplicate submission)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(streams.run_state(state.run_id), state.model_dump_json(), nx=True)
            pipe.zadd(streams.RUN_INDEX, {state.run_id: state.created_at.timestamp()})
            created, _ = await pipe.execute()
        return bool(created)

    async def update(
        self,
        run_id: str,
        change: Callable[[RunState], RunState | None],
        known: tuple[bytes, RunState] | None = None,
        ops: Callable[[RunState], list[tuple[str, str, str]]] | None = None,
    ) -> RunState | None:
        """Apply `change` atomically; it returns the new state, or None to leave the run as it is.

        `known`: the state's raw value as the caller just read it, and that value parsed (saves a read and
        a parse; `change` may modify it; if it is stale, the compare fails and the state is read again).
        `ops(new)`: `append` and `expire` operations done in the same atomic step as the new state (it may
        mark the new state accordingly before it is written).
        """
        key = streams.run_state(run_id)
        raw, state = known or (None, None)
        while True:
            if raw is None:
                raw = await self.redis.get(key)
                if raw is None:
                    return None
            new = change(state if state is not None else RunState.model_validate_json(raw))
            state = None  # a retry parses what it read
            if new is None:
                return None
            new.updated_at = utcnow()
            keys: dict[str, int] = {key: 1}
            args: list = []
            for op, target, value in ops(new) if ops else ():
                args += [op, keys.setdefault(target, len(keys) + 1), value]
            if await self.redis.eval(CAS, len(keys), *keys, raw, new.model_dump_json(), *args):
                return new
            raw = None  # changed meanwhile (another handler or replica): read it again, decide again


WAITING = "baton:runs:waiting"  # advisory index of runs waiting for a person (checked against the state)


async def sync_waiting(redis: aioredis.Redis, state: RunState) -> None:
    if state.status == "waiting_for_human":
        await redis.sadd(WAITING, state.run_id)
    else:
        await redis.srem(WAITING, state.run_id)
