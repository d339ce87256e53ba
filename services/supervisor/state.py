"""The supervisor's durable run state: one JSON document per run in Redis, updated optimistically.

Nothing about a run lives in a supervisor's memory, so any replica (or a restarted one) can carry on.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import WatchError

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


class RunStore:
    """Reads and writes run states; `update` retries on concurrent modification (WATCH/MULTI)."""

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

    async def update(self, run_id: str, change: Callable[[RunState], RunState | None]) -> RunState | None:
        """Apply `change` atomically; it returns the new state, or None to leave the run as it is."""
        key = streams.run_state(run_id)
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    if raw is None:
                        return None
                    new = change(RunState.model_validate_json(raw))
                    if new is None:
                        return None
                    new.updated_at = utcnow()
                    pipe.multi()
                    pipe.set(key, new.model_dump_json())
                    await pipe.execute()
                    return new
                except WatchError:
                    continue


WAITING = "baton:runs:waiting"  # advisory index of runs waiting for a person (checked against the state)


async def sync_waiting(redis: aioredis.Redis, state: RunState) -> None:
    if state.status == "waiting_for_human":
        await redis.sadd(WAITING, state.run_id)
    else:
        await redis.srem(WAITING, state.run_id)
