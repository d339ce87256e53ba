"""The gateway's A2A tasks, kept in Redis so that a restarted gateway still answers `tasks/get`.

A task's run id is derived from its task id (`run_of_task`), and the task (a protobuf `Task`) is stored
in the run's hash slot (`baton:{<run_id>}:a2a`), expiring with the run's retention. A task stored in a
state that is not final may be stale: the gateway that followed its run may have stopped. Unless this
process follows it now, `get` brings it up to date from the run itself (its status, outputs and question),
so what `tasks/get` answers is the run's truth, not the last thing a dead gateway saw.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from a2a.server.context import ServerCallContext
from a2a.server.tasks import InMemoryTaskStore, TaskStore
from a2a.types import Artifact, ListTasksRequest, ListTasksResponse, Message, Part, Role, Task, TaskState
from google.protobuf.timestamp_pb2 import Timestamp

from baton import client
from shared import streams
from shared.errors import BatonError
from shared.events import ObjectRef, new_id

RUN_KEY = "baton_run_id"
ASKED_KEY = "baton_request_event"  # on an input-required status: the human.requested it stands for
FINAL = (
    TaskState.TASK_STATE_COMPLETED,
    TaskState.TASK_STATE_FAILED,
    TaskState.TASK_STATE_CANCELED,
    TaskState.TASK_STATE_REJECTED,
)
LISTED = 1000  # tasks/list reads at most this many of a workflow's newest tasks


def agent_message(task: Task, text: str) -> Message:
    """A status message from the agent on `task`: one text part."""
    return Message(
        role=Role.ROLE_AGENT,
        message_id=new_id(),
        task_id=task.id,
        context_id=task.context_id,
        parts=[Part(text=text)],
    )


def run_of_task(task_id: str) -> str:
    """The run an A2A task starts: one per task, named after it."""
    return f"a2a-{task_id}"


class RunTaskStore(TaskStore):
    """One workflow's A2A tasks in Redis; tasks no gateway follows are brought up to date from their run."""

    def __init__(
        self,
        redis: aioredis.Redis,
        settings,
        workflow: str,
        live: set[str],
        part: Callable[[ObjectRef], Awaitable[Part]],
        cancelled_here: set[str],
    ) -> None:
        self.redis, self.settings, self.workflow, self.live, self.part = redis, settings, workflow, live, part
        self.cancelled_here = cancelled_here  # tasks the executor's `cancel` cancelled the run of
        self.ttl = max(int(settings.retention_days * 86400), 1)

    async def save(self, task: Task, context: ServerCallContext | None = None) -> None:
        run_id = run_of_task(task.id)
        now = Timestamp()
        now.GetCurrentTime()
        async with self.redis.pipeline(transaction=False) as pipe:  # one round trip (two slots: no MULTI)
            pipe.set(streams.a2a_task(run_id), task.SerializeToString(), ex=self.ttl)
            pipe.zadd(streams.a2a_tasks(self.workflow), {task.id: now.ToNanoseconds() / 1e9})
            await pipe.execute()
        if task.status.state != TaskState.TASK_STATE_CANCELED:
            return
        asked = task.id in self.cancelled_here  # by this process's executor (`cancel`): asked once is enough
        self.cancelled_here.discard(task.id)
        if not asked and task.id not in self.live:
            # Cancelled through a gateway that does not follow it (another replica does, or none): a2a-sdk
            # only records that, so its run is cancelled here; the gateway following it, if any, ends the
            # task as the run ends. (For a run cancelled already, the supervisor ignores the request.)
            await client.cancel(
                self.settings, run_id, reason="cancelled by an A2A client", sender="gateway", redis=self.redis
            )

    async def stored(self, task_id: str) -> Task | None:
        raw = await self.redis.get(streams.a2a_task(run_of_task(task_id)))
        return Task.FromString(raw) if raw is not None else None

    async def get(self, task_id: str, context: ServerCallContext | None = None) -> Task | None:
        task = await self.stored(task_id)
        if task is None or task.status.state in FINAL or task.id in self.live:
            return task
        updated = await self.from_run(task)
        if updated.status.state in FINAL:
            await self.save(updated, context)
        return updated

    async def from_run(self, task: Task) -> Task:
        """The task as its run stands now (the stored one if the run is gone)."""
        run_id = task.metadata[RUN_KEY] if RUN_KEY in task.metadata else run_of_task(task.id)
        try:
            run = await client.run_status(self.settings, run_id, last=50, redis=self.redis)
        except BatonError:
            return task
        new = Task()
        new.CopyFrom(task)
        status = run["status"]
        say = f"run {run_id} {status}"
        meta: dict = {}
        if status == "completed":
            state = TaskState.TASK_STATE_COMPLETED
            if not new.artifacts:
                for name, ref in run["outputs"].items():
                    part = await self.part(ref)
                    new.artifacts.append(Artifact(artifact_id=new_id(), name=name, parts=[part]))
        elif status == "failed":
            state, say = TaskState.TASK_STATE_FAILED, f"run {run_id} failed: {run['reason']}"
        elif status == "cancelled":
            state, say = TaskState.TASK_STATE_CANCELED, f"run {run_id} cancelled: {run['reason']}"
        elif status == "waiting_for_human":
            state = TaskState.TASK_STATE_INPUT_REQUIRED
            say = (run["waiting"] or {}).get("question") or "a person is asked to approve"
            asked = [e for e in run["events"] if e.get("type") == "human.requested"]
            meta = {RUN_KEY: run_id, ASKED_KEY: asked[-1]["event_id"] if asked else ""}
        else:
            state = TaskState.TASK_STATE_WORKING
        if state != new.status.state:
            new.status.Clear()
            new.status.state = state
            new.status.timestamp.GetCurrentTime()
            message = agent_message(new, say)
            message.metadata.update(meta)
            new.status.message.CopyFrom(message)
        return new

    async def list(self, params: ListTasksRequest, context: ServerCallContext) -> ListTasksResponse:
        """Filtered and paged as a2a-sdk's in-memory store does it, over this workflow's newest tasks."""
        index = streams.a2a_tasks(self.workflow)
        now = Timestamp()
        now.GetCurrentTime()
        await self.redis.zremrangebyscore(index, "-inf", now.ToNanoseconds() / 1e9 - self.ttl)  # expired
        ids = await self.redis.zrevrange(index, 0, LISTED - 1)
        view = InMemoryTaskStore(owner_resolver=lambda _context: "")
        for task_id in ids:
            task = await self.get(task_id.decode(), context)
            if task is not None:
                await view.save(task, context)
        return await view.list(params, context)

    async def delete(self, task_id: str, context: ServerCallContext | None = None) -> None:
        await self.redis.delete(streams.a2a_task(run_of_task(task_id)))
        await self.redis.zrem(streams.a2a_tasks(self.workflow), task_id)
