"""One workflow as an A2A agent: a message starts a run, the run's events become the task's updates.

Mapping (A2A task <-> Baton run `a2a-<task id>`, also kept in the task's metadata as `baton_run_id`; the
tasks themselves are kept in Redis, `tasks.py`):
  file parts        -> the run's inputs (uploaded to runs/<run_id>/inputs/, named by the part's
                       metadata `name` or the file's stem)
  text parts        -> params `text` (and `instruction`); a data part's object -> params
  task/stage events -> `working` status updates
  human.requested   -> `input-required` with the question; the next message on the task answers it
                       (a response file, as `baton respond` writes: `reject ...`/`no ...` rejects)
  run.completed     -> one artifact per output: bytes up to BATON_A2A_INLINE_BYTES, else a presigned URL
                       of the exact version; then `completed`
  run.failed        -> `failed` with the reason; run.cancelled / tasks/cancel -> `canceled` (baton cancel)
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import posixpath
from collections.abc import AsyncIterator

from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import Event, EventQueue
from a2a.server.tasks import TaskUpdater
from a2a.types import Message, Part, Task, TaskState, TaskStatus
from google.protobuf import json_format

from baton import client
from shared import streams
from shared.errors import BatonError, KeyValidationError, PreconditionFailedError
from shared.events import ObjectRef, utcnow
from shared.fetch import Fetcher, FetchError
from shared.live import Hub, run_events
from shared.storage import Storage
from shared.workspace import run_prefix

from .tasks import ASKED_KEY, RUN_KEY, run_of_task

SENDER = "gateway"
REJECT_WORDS = ("reject", "rejected", "no")


class GatewayError(BatonError):
    """A message the gateway cannot turn into a run (or an answer)."""


class WorkflowExecutor(AgentExecutor):
    """Runs one workflow per A2A task; holds its settings, the storage client, the process' pooled Redis
    client and its one live reader (`hub`: every task in flight follows its run there, not on a connection
    of its own), the ids of the tasks this process follows now (`live`: the task store leaves those to
    it), the gate new tasks pass one by one to start (`starting`, shared by every workflow), and where a
    file part's URL may be fetched from (`fetching`)."""

    def __init__(
        self,
        workflow: str,
        settings,
        storage: Storage,
        redis,
        hub: Hub,
        log,
        live: set[str],
        starting: asyncio.Semaphore,
        fetching: Fetcher,
        instance: str,
    ) -> None:
        self.workflow, self.settings, self.storage, self.log = workflow, settings, storage, log
        self.redis, self.hub, self.live, self.starting = redis, hub, live, starting
        self.fetching, self.instance = fetching, instance
        # Tasks whose run this process was asked to cancel (`cancel`): the task store, saving them as
        # `canceled` next, does not ask again.
        self.cancelled_here: set[str] = set()

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        self.live.add(context.task_id)
        try:
            await self.run(context, event_queue)
        finally:
            self.live.discard(context.task_id)

    async def run(self, context: RequestContext, event_queue: EventQueue) -> None:
        task = context.current_task
        if task is None:
            answered = None
            run_id = run_of_task(context.task_id)
            task = Task(
                id=context.task_id,
                context_id=context.context_id,
                status=TaskStatus(state=TaskState.TASK_STATE_SUBMITTED),
                history=[context.message],
                metadata={RUN_KEY: run_id, "baton_workflow": self.workflow},
            )
            # Until its run is published, the task is in the starting set under this gateway's name: one
            # that stops meanwhile (its lease lapses) leaves it to another's start-up (`resume_unstarted`).
            await self.redis.hset(streams.a2a_starting(self.workflow), task.id, self.instance)
            await event_queue.enqueue_event(task)  # the client learns its task id at once, `submitted`
            up = TaskUpdater(event_queue, task.id, task.context_id)
            # A burst of new tasks starts Settings.a2a_max_starting at a time; the rest wait here, in order.
            async with self.starting:
                try:
                    await self.start(run_id, context.message)
                except PreconditionFailedError as exc:
                    # its inputs were there already: refused, unless another gateway took the task over
                    # while this one seemed gone (it uploaded them, and starts the run: once, as a second
                    # RunSubmitted of a run is a duplicate to the supervisor)
                    if await self.mine(task.id):
                        await self.refuse(task.id, up, exc)
                        return
                except (GatewayError, FetchError, KeyValidationError) as exc:
                    await self.refuse(task.id, up, exc)
                    return
                await self.started(task.id)
                self.log.info("a2a_run_submitted", submitted_run=run_id, workflow=self.workflow, task=task.id)
                await up.update_status(
                    TaskState.TASK_STATE_WORKING, up.new_agent_message([Part(text=f"run {run_id} submitted")])
                )
        else:
            run_id = task.metadata[RUN_KEY]
            up = TaskUpdater(event_queue, task.id, task.context_id)
            answered = await self.answer(run_id, task, context.message)
        await self.follow(run_id, up, answered)

    async def mine(self, task_id: str) -> bool:
        """Whether this gateway still starts `task_id`: another one takes over the tasks of a gateway whose
        lease lapsed (`resume_unstarted`; one stalled that long is taken for stopped)."""
        owner = await self.redis.hget(streams.a2a_starting(self.workflow), task_id)
        return owner is not None and owner.decode() == self.instance

    async def refuse(self, task_id: str, up: TaskUpdater, exc: Exception) -> None:
        await self.started(task_id)
        await up.reject(up.new_agent_message([Part(text=str(exc))]))

    async def started(self, task_id: str) -> None:
        """Out of the starting set: its run is published, or it will never be (rejected, cancelled). A
        gateway stopped before this (killed, or shut down while the task waited its turn) leaves it in."""
        await self.redis.hdel(streams.a2a_starting(self.workflow), task_id)

    async def start(self, run_id: str, message: Message, *, again: bool = False) -> None:
        """Upload the message's files as the run's inputs, then publish the run. `again`: for a task a
        stopped gateway had told `submitted` (`resume_unstarted`), whose inputs and run may be there
        already: an input found in place is taken as it is, and a run published twice is started once (the
        supervisor takes a second RunSubmitted of a run id as a duplicate)."""
        inputs, params = await self.inputs(run_id, message, again=again)
        await client.publish_run(
            self.settings,
            run_id,
            self.workflow,
            inputs,
            params,
            sender=SENDER,
            redis=self.redis,
            storage=self.storage,
        )

    async def inputs(
        self, run_id: str, message: Message, *, again: bool = False
    ) -> tuple[dict[str, ObjectRef], dict]:
        refs: dict[str, ObjectRef] = {}
        params: dict = {}
        texts: list[str] = []
        for i, part in enumerate(message.parts):
            if part.HasField("text"):
                texts.append(part.text)
            elif part.HasField("data"):
                value = json_format.MessageToDict(part.data)
                if not isinstance(value, dict):
                    raise GatewayError(f"data part {i} is not an object: its fields become the run's params")
                params.update(value)
            elif part.HasField("raw") or part.HasField("url"):
                filename = posixpath.basename(part.filename or f"input-{i + 1}")
                name = _meta(part).get("name") or posixpath.splitext(filename)[0]
                if name in refs:
                    raise GatewayError(f"two file parts are named {name!r}: give each a metadata `name`")
                key = f"{run_prefix(run_id)}inputs/{filename}"
                async with contextlib.AsyncExitStack() as stack:
                    data = part.raw
                    if part.HasField("url"):
                        data = stack.enter_context(await self.fetching.fetch(part.url))
                    media = part.media_type or "application/octet-stream"
                    if again:  # a resubmission: what its first attempt wrote stands
                        refs[name] = await self.storage.put_once(key, data, content_type=media)
                    else:
                        refs[name] = await self.storage.put(key, data, content_type=media, if_none_match=True)
        if texts:
            text = "\n\n".join(texts)
            params.setdefault("text", text)
            params.setdefault("instruction", text)
        return refs, params

    async def answer(self, run_id: str, task: Task, message: Message) -> str | None:
        """The next message on an input-required task answers the run's question; returns the event id of
        the question answered (the events before it were already reported)."""
        if task.status.state != TaskState.TASK_STATE_INPUT_REQUIRED:
            raise GatewayError(f"task {task.id} does not wait for input (run {run_id})")
        text = " ".join(p.text for p in message.parts if p.HasField("text")).strip()
        decision = next(
            (json_format.MessageToDict(p.data).get("decision") for p in message.parts if p.HasField("data")),
            None,
        )
        if decision not in ("approve", "reject"):
            first = text.split(maxsplit=1)[0].strip(".,!:").lower() if text else ""
            decision = "reject" if first in REJECT_WORDS else "approve"
        await client.ensure_waiting(self.settings, run_id, redis=self.redis)
        body = {"decision": decision, "text": text, "sender": SENDER, "responded_at": utcnow().isoformat()}
        ref = await client.write_response(
            self.storage, self.settings, run_id, body, sender=SENDER, redis=self.redis
        )
        self.log.info("a2a_responded", responded_run=run_id, decision=decision, key=ref.key)
        asked = task.status.message.metadata[ASKED_KEY] if task.status.HasField("message") else None
        return asked or None

    async def follow(self, run_id: str, up: TaskUpdater, answered: str | None) -> None:
        """Turn the run's events into task updates until it ends or waits for a person."""
        skipping = answered is not None
        async with contextlib.aclosing(run_events(self.hub, run_id)) as events:
            async for event in events:
                if skipping:  # already reported before the question that was just answered
                    skipping = event.event_id != answered
                elif await self.report(run_id, up, event):
                    return

    async def tail(self, task: Task, after: str) -> AsyncIterator[Event]:
        """The task's updates from its run's events after entry `after`, as `follow` reports them, until
        its run ends or asks a person: for a resubscription on a gateway that does not follow the task
        (another replica does, or none since a restart). Nothing is stored: the follower stores them."""
        run_id = task.metadata[RUN_KEY] if RUN_KEY in task.metadata else run_of_task(task.id)
        updates = _Updates()
        up = TaskUpdater(updates, task.id, task.context_id)
        async with contextlib.aclosing(run_events(self.hub, run_id, after)) as events:
            async for event in events:
                ended = await self.report(run_id, up, event)
                while updates:
                    yield updates.popleft()
                if ended:
                    return

    async def newest_entry(self, task_id: str) -> str:
        """The id of the newest entry of the task's run stream ("0" if it has none yet)."""
        newest = await self.redis.xrevrange(streams.run_events(run_of_task(task_id)), count=1)
        return newest[0][0].decode() if newest else "0"

    async def report(self, run_id: str, up: TaskUpdater, event) -> bool:
        """One run event as the task's update; True when it ends the task's turn (an end or a question)."""
        kind = event.type
        say = lambda text: up.new_agent_message([Part(text=text)])  # noqa: E731
        if kind == "human.requested":
            message = say(event.question or "a person is asked to approve")
            message.metadata.update({ASKED_KEY: event.event_id, RUN_KEY: run_id})
            await up.requires_input(message)
            return True
        if kind == "run.completed":
            for name, ref in event.outputs.items():
                await up.add_artifact([await self.part(ref)], name=name)
            await up.complete(say(f"run {run_id} completed"))
            return True
        if kind == "run.failed":
            await up.failed(say(f"run {run_id} failed: {event.reason}"))
            return True
        if kind == "run.cancelled":
            await up.cancel(say(f"run {run_id} cancelled: {getattr(event, 'reason', '')}"))
            return True
        if kind in ("task.started", "task.progress", "task.completed", "task.failed"):
            agent = getattr(event, "agent", None) or "?"
            detail = getattr(event, "message", "") or getattr(event, "error", "") or kind.split(".", 1)[1]
            await up.update_status(TaskState.TASK_STATE_WORKING, say(f"{agent}: {detail}"))
        return False

    async def part(self, ref: ObjectRef) -> Part:
        filename = posixpath.basename(ref.key)
        media = (ref.content_type or "application/octet-stream").split(";")[0].strip()
        meta = {"key": ref.key, "version_id": ref.version_id or "", "size": ref.size or 0}
        if ref.size is not None and ref.size > self.settings.a2a_inline_bytes:
            link = await self.storage.presign(ref)
            return Part(url=link, filename=filename, media_type=media, metadata=meta)
        return Part(raw=await self.storage.get(ref), filename=filename, media_type=media, metadata=meta)

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        task = context.current_task
        if task is None:
            return
        run_id = task.metadata[RUN_KEY]
        await self.started(task.id)  # (if it waits its turn, a2a-sdk cancels its execution next)
        self.cancelled_here.add(task.id)
        await client.cancel(self.settings, run_id, reason="cancelled by an A2A client", redis=self.redis)
        self.log.info("a2a_run_cancelled", cancelled_run=run_id, task=task.id)
        up = TaskUpdater(event_queue, task.id, task.context_id)
        await up.cancel(up.new_agent_message([Part(text=f"run {run_id} cancelled")]))


class _Updates(collections.deque):
    """Where `tail`'s TaskUpdater puts its events (it only enqueues), to be yielded in order."""

    async def enqueue_event(self, event: Event) -> None:
        self.append(event)


def _meta(part: Part) -> dict:
    return json_format.MessageToDict(part.metadata) if part.HasField("metadata") else {}
