"""Agents for the benchmarks: they do (almost) nothing, so what is measured is Baton itself."""

from __future__ import annotations

import asyncio
import json

from services.worker.runtime import AgentContext
from shared.errors import RetryableError


async def noop(ctx: AgentContext) -> None:
    """Do nothing: a task's whole cost is the runtime's."""


async def fail_once(ctx: AgentContext) -> None:
    """Fail the first attempt with a retryable error (an overloaded model endpoint's answer), then do
    nothing: every run's retry is a timer, and a burst of runs makes them all come due at once."""
    if ctx.task.attempt == 1:
        raise RetryableError("the model endpoint is overloaded (bench)")


async def write_one(ctx: AgentContext) -> None:
    """Write one small output (as most real agents do): a PUT to the bucket, and its notification."""
    await ctx.write(f"work/{ctx.task.task_id}.txt", b"a small output\n", name="out")


async def append_line(ctx: AgentContext) -> None:
    """A collaborator's turn (the bidirectional burst): one line appended to the shared document, with
    If-Match on the version it was handed."""
    line = f"{ctx.agent}: {ctx.task.task_id}\n".encode()
    await ctx.update("document", lambda old: old + line)


async def read_inputs(ctx: AgentContext) -> None:
    """Read every input through its reference (exact version, from the bucket) and check its size."""
    for name, ref in ctx.inputs.items():
        data = await ctx.read(name)
        if ref.size is not None and len(data) != ref.size:
            raise ValueError(f"input {name!r}: read {len(data)} bytes, the ref says {ref.size}")


async def read_write(ctx: AgentContext) -> None:
    """What a real stage does: read what it was given (every earlier stage's output), write its own."""
    await read_inputs(ctx)
    await write_one(ctx)


async def read_param(ctx: AgentContext) -> None:
    """Take the artifact from the task itself (context stuffing) and check its size."""
    data = ctx.params.get("artifact", "")
    expected = ctx.params.get("artifact_size")
    if expected is not None and len(data) != expected:
        raise ValueError(f"artifact param has {len(data)} characters, expected {expected}")


async def fanout_plan(ctx: AgentContext) -> None:
    """A plan of `width` independent no-op subtasks (param `width`), all for the agent `noop`."""
    width = int(ctx.params["width"])
    subtasks = [{"id": f"s{i}", "agent": "noop"} for i in range(width)]
    await ctx.write("plans/plan.json", json.dumps({"subtasks": subtasks}), name="plan")


async def accept(ctx: AgentContext) -> None:
    """A reviewer that accepts every subtask: one small verdict file (the supervisor reads it)."""
    await ctx.write(f"reviews/{ctx.task.task_id}.json", b'{"accepted": true}', name="verdict")


async def tick(ctx: AgentContext) -> None:
    """Report progress every `interval` seconds (param, default 0.1) until the run is cancelled (the
    progress report itself raises then): a long stage whose page gets a steady stream of live events."""
    interval = float(ctx.params.get("interval", 0.1))
    n = 0
    while True:
        n += 1
        await ctx.progress(f"tick {n}")
        await asyncio.sleep(interval)


async def wait(ctx: AgentContext) -> None:
    """Sleep `sleep` seconds (param, default 1), then write a note: a stage that takes a while without
    using a core (the A2A scenario's tasks stay in flight that long)."""
    await asyncio.sleep(float(ctx.params.get("sleep", 1)))
    await ctx.write("work/waited.txt", f"{ctx.task.agent} waited\n", name="waited")
