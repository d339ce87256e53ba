"""What an agent handler sees: its instruction, its input refs, and a workspace it may write to.

A handler never sees the run's history: only the slice it was handed.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import mimetypes
import posixpath
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import BinaryIO

from shared import manifests
from shared.errors import CancelledError, KeyValidationError, PreconditionFailedError
from shared.events import HumanAnswer, ObjectRef, TaskAssigned, TaskProgress, Usage
from shared.runs import subtask_of
from shared.storage import Reader, Storage
from shared.workflow import AgentSpec
from shared.workspace import check_in_workspace, run_prefix, workspace_key


class AgentContext:
    """The handle an agent handler gets. Reads exact versions; writes only under the agent's prefixes."""

    def __init__(
        self,
        task: TaskAssigned,
        agent: str,
        spec: AgentSpec,
        storage: Storage,
        report: Callable[[TaskProgress], Awaitable[None]] | None = None,
        cancelled: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self.task = task
        self.agent = agent
        self.spec = spec
        self.storage = storage
        self.outputs: dict[str, ObjectRef] = {}
        self._inputs: dict[str, ObjectRef] = dict(task.inputs)
        self.usage = Usage()  # model tokens/cost this task spent; the worker adds the seconds
        self._report = report
        self._cancelled = cancelled
        self._loop: asyncio.AbstractEventLoop | None = None  # set while a sync handler runs in a thread
        self._stopped: str | None = None  # why the worker stopped this task (its time limit)

    def stop(self, reason: str) -> None:
        """The task is over for the worker: whatever the handler still tries (a sync handler's thread
        cannot be interrupted) is refused at its next read, write or progress report."""
        self._stopped = reason

    def sync(self, awaitable: Awaitable):
        """From a plain `def` handler (which the worker runs in a thread): run one of this context's async
        methods on the worker's event loop and return its result, e.g. `ctx.sync(ctx.write(key, text))`."""
        if self._loop is None:
            raise RuntimeError("ctx.sync is for sync handlers (run in a thread); an async handler awaits")
        return asyncio.run_coroutine_threadsafe(awaitable, self._loop).result()

    async def checkpoint(self) -> None:
        """Stop here if the run was cancelled (called by read, write, update and progress)."""
        if self._stopped:
            raise CancelledError(self._stopped)
        if self._cancelled is not None and await self._cancelled():
            raise CancelledError(f"run {self.task.run_id} was cancelled")

    def record_usage(self, usage: Usage) -> None:
        """Add model usage (tokens, cost) to this task's `TaskCompleted.usage`."""
        self.usage = self.usage + usage

    @property
    def instruction(self) -> str:
        return self.task.instruction

    @property
    def params(self) -> dict:
        return self.task.params

    @property
    def subtask(self) -> str | None:
        """In a hierarchical run, the id of the plan subtask this task does or reviews (as the planner named
        it); None for the plan, the aggregation and the other patterns' tasks. A reviewer also finds whose
        attempt it reviews in `params["worker"]` and `params["worker_attempt"]`."""
        return subtask_of(self.task)

    @property
    def answer(self) -> HumanAnswer | None:
        """A person's answer to the question this agent asked (`raise InputRequired(question, resume)`)."""
        return self.task.answer

    @property
    def resume(self) -> dict[str, str]:
        """What this agent kept when it asked (the `resume` of its `InputRequired`)."""
        return self.task.resume

    @property
    def inputs(self) -> dict[str, ObjectRef]:
        return self._inputs

    async def load_inputs(self) -> None:
        """Read the task's input manifest, if it has one, then check every input."""
        manifest = self.task.inputs_manifest
        if manifest is not None:
            under = f"{run_prefix(self.task.run_id)}manifests/"
            try:
                listed = await manifests.read(self.storage, manifest, "the input manifest", under=under)
            except ValueError as exc:
                raise KeyValidationError(str(exc)) from exc
            self._inputs = {**listed, **self.task.inputs}
        self.check_inputs()

    def check_inputs(self) -> None:
        """Every input must lie in the run's workspace and in the agent's read prefixes."""
        for name, ref in self._inputs.items():
            try:
                check_in_workspace(self.task.run_id, ref.key, self.spec.reads)
            except KeyValidationError as exc:
                raise KeyValidationError(f"input {name!r}: {exc}") from exc
            if ref.bucket != self.storage.bucket:
                raise KeyValidationError(f"input {name!r} is in bucket {ref.bucket!r}, not the workspace")

    async def read(self, name: str) -> bytes:
        """The input `name`, its exact version, whole (`open` reads a large one a chunk at a time)."""
        await self.checkpoint()
        return await self.storage.get(self._ref(name))

    @contextlib.asynccontextmanager
    async def open(self, name: str) -> AsyncIterator[Reader]:
        """The input `name` (its exact version) open for reading a chunk at a time, for inputs too large to
        hold in memory: `async with ctx.open("data") as f: async for chunk in f.chunks(): ...`; `f.size` is
        its length. Write a large result from a file the same way: `ctx.write(path, open(file, "rb"))`."""
        await self.checkpoint()
        async with self.storage.open(self._ref(name)) as reader:
            yield reader

    def _ref(self, name: str) -> ObjectRef:
        try:
            return self._inputs[name]
        except KeyError:
            raise KeyError(f"no input named {name!r}; this task has {sorted(self._inputs)}") from None

    async def read_text(self, name: str) -> str:
        return (await self.read(name)).decode("utf-8")

    def input_stem(self, name: str) -> str:
        """File name of an input without its extension (e.g. `topic` for `inputs/topic.md`)."""
        return posixpath.splitext(posixpath.basename(self._inputs[name].key))[0]

    async def write(
        self,
        path: str,
        data: bytes | str | BinaryIO,
        *,
        name: str | None = None,
        content_type: str | None = None,
    ) -> ObjectRef:
        """Write `path` (relative to the run's workspace, inside this agent's `writes` prefixes). `data`:
        text, bytes, or a binary file, sent from where it stands a chunk at a time (up to 5 GiB)."""
        await self.checkpoint()
        key = workspace_key(self.task.run_id, path, self.spec.writes)
        if isinstance(data, str):
            data = data.encode("utf-8")
            content_type = content_type or _guess(path, "text/plain; charset=utf-8")
        ref = await self.storage.put(key, data, content_type=content_type or _guess(path))
        self.outputs[name or posixpath.splitext(posixpath.basename(path))[0]] = ref
        return ref

    async def update(
        self, name: str, change, *, tries: int = 5, content_type: str | None = None
    ) -> ObjectRef:
        """Rewrite the input `name` in place without losing anyone's work.

        `change(old: bytes) -> str | bytes` is applied to the version handed over and written with
        If-Match on its etag; if someone else wrote in between, it is applied again to the newest version.
        """
        await self.checkpoint()
        ref = self._inputs[name]
        relative = self.workspace_path(ref)
        workspace_key(self.task.run_id, relative, self.spec.writes)  # may this agent write it at all?
        current, data = ref, await self.storage.get(ref)
        for _ in range(tries):
            new = change(data)
            if inspect.isawaitable(new):
                new = await new
            if isinstance(new, str):
                new = new.encode("utf-8")
            try:
                out = await self.storage.put(
                    ref.key,
                    new,
                    if_match=current.etag,
                    content_type=content_type or ref.content_type or _guess(ref.key),
                )
            except PreconditionFailedError:
                current = await self.storage.head(ref.key)
                if current is None:
                    raise
                data = await self.storage.get(current)
                continue
            self.outputs[name] = out
            return out
        raise PreconditionFailedError(f"{ref.key!r} kept changing: gave up after {tries} tries")

    async def approve(self, note: str = "") -> ObjectRef:
        """Write this agent's approval file (ends a bidirectional collaboration)."""
        prefix = self.task.params.get("approval", "approvals/")
        return await self.write(f"{prefix}{self.agent}.txt", note or "approved\n", name="approval")

    async def progress(self, message: str, percent: float | None = None) -> None:
        await self.checkpoint()
        if self._report:
            await self._report(
                TaskProgress(
                    run_id=self.task.run_id,
                    task_id=self.task.task_id,
                    attempt=self.task.attempt,
                    agent=self.agent,
                    message=message,
                    percent=percent,
                    trace_id=self.task.trace_id,
                )
            )

    def workspace_path(self, ref: ObjectRef) -> str:
        return ref.key[len(run_prefix(self.task.run_id)) :]


def _guess(path: str, default: str = "application/octet-stream") -> str:
    guessed, _ = mimetypes.guess_type(path)
    if path.endswith(".md"):
        return "text/markdown; charset=utf-8"
    return guessed or default
