"""Agents that exist to test the runtime: slow, flaky, and ones that misbehave on purpose."""

from __future__ import annotations

import asyncio

from services.worker.runtime import AgentContext


async def slow(ctx: AgentContext) -> None:
    """Sleep `params.sleep` seconds (default 1), then write a note."""
    await asyncio.sleep(float(ctx.params.get("sleep", 1)))
    await ctx.write(
        f"work/{ctx.task.stage}-slow.txt", f"slept in stage {ctx.task.stage}\n", name=f"slow{ctx.task.stage}"
    )


async def flaky(ctx: AgentContext) -> None:
    """Fail (retryably) on the first attempt, succeed on the next."""
    if ctx.task.attempt == 1:
        raise ConnectionError("simulated transient fault on attempt 1")
    await ctx.write("work/flaky.txt", f"succeeded on attempt {ctx.task.attempt}\n", name="flaky")


async def escape(ctx: AgentContext) -> None:
    """Try to write outside the workspace."""
    await ctx.write("work/../../../etc/evil.txt", "nope")


async def trespass(ctx: AgentContext) -> None:
    """Try to write inside the workspace but outside its `writes` prefixes."""
    await ctx.write("published/not-mine.txt", "nope")


async def echo(ctx: AgentContext) -> None:
    """Copy every input to work/, reading each through its ref."""
    for name in ctx.inputs:
        await ctx.write(f"work/{name}.txt", await ctx.read(name), name=name)
