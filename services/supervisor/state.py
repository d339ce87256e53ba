"""The supervisor's durable run state: one JSON document per run in Redis, updated optimistically.

Nothing about a run lives in a supervisor's memory, so any replica (or a restarted one) can carry on.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

import redis.asyncio as aioredis
from pydantic import BaseModel, Field
from redis.exceptions import WatchError

from shared import streams
from shared.events import ObjectRef, Usage, utcnow

RunStatus = Literal["running", "completed", "failed"]


class RunState(BaseModel):
    run_id: str
    workflow: str
    pattern: str
    status: RunStatus = "running"
    trace_id: str
    inputs: dict[str, ObjectRef] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    stage: int = 0
    task_id: str | None = None
    attempt: int = 1
    dispatched: bool = Field(False, description="Whether the current task was published.")
    outputs: dict[str, ObjectRef] = Field(default_factory=dict, description="All outputs so far, by name.")
    final: dict[str, ObjectRef] = Field(default_factory=dict, description="The run's result.")
    usage: Usage = Field(default_factory=Usage)
    trigger: ObjectRef | None = None
    reason: str | None = None
    history: list[str] = Field(default_factory=list)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


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
