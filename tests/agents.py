"""Agents that exist to test the runtime: slow, flaky, and ones that misbehave on purpose."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import resource
import tempfile
import time

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


async def stream_copy(ctx: AgentContext) -> None:
    """Copy the input `data` to work/copy.bin a chunk at a time, through a file on disk (`ctx.open`, then
    `ctx.write` of that file), and write its SHA-256 and how much this process' peak memory grew meanwhile."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    digest = hashlib.sha256()
    with tempfile.TemporaryFile() as spool:
        async with ctx.open("data") as source:
            async for chunk in source.chunks():
                digest.update(chunk)
                spool.write(chunk)
        spool.seek(0)
        await ctx.write("work/copy.bin", spool, name="copy")
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    report = {"sha256": digest.hexdigest(), "peak_growth_kb": grew}
    await ctx.write("work/copy.json", json.dumps(report), name="report")


async def echo(ctx: AgentContext) -> None:
    """Copy every input to work/, reading each through its ref."""
    for name in ctx.inputs:
        await ctx.write(f"work/{name}.txt", await ctx.read(name), name=name)


# --- router ------------------------------------------------------------------------------------------
def keyword_classifier(request):
    """A deterministic classifier: a few words decide, `maybe` is unsure, `explode` crashes it."""
    text = request.text.lower()
    if "explode" in text:
        raise RuntimeError("classifier blew up")
    if "maybe" in text:
        return {"label": "billing", "confidence": 0.3}
    for word, label in (("invoice", "billing"), ("laptop", "it"), ("weather", "smalltalk")):
        if word in text:
            return {"label": label, "confidence": 0.9}
    return {"label": "unknown", "confidence": 0.0}


def fickle_classifier(request):
    """A classifier that answers differently in different processes (as a sampled model may): the label
    is whatever `BATON_TEST_LABEL` says in the router that asks."""
    return {"label": os.environ.get("BATON_TEST_LABEL", "billing"), "confidence": 0.9}


_classifying = 0  # serial_classifier's calls in flight in this router process


async def serial_classifier(request):
    """Sure of `billing` only while it is the one call in flight: an overlapping call (a router that
    ignores the agent's `concurrency: 1`) answers 0.2, below the workflow's bar: to the fallback."""
    global _classifying
    _classifying += 1
    try:
        alone = _classifying == 1
        await asyncio.sleep(0.05)  # a model's answer takes a while
        return {"label": "billing", "confidence": 0.9 if alone and _classifying == 1 else 0.2}
    finally:
        _classifying -= 1


async def answer(ctx: AgentContext) -> None:
    """A specialist: says who handled the request."""
    await ctx.write("work/answer.txt", f"handled by {ctx.agent}\n", name="answer")


# --- hierarchical ------------------------------------------------------------------------------------
async def planner(ctx: AgentContext) -> None:
    """Writes the plan given in the run's `plan` parameter (a JSON list of subtasks), followed by `pad`
    spaces if the run asks (still valid JSON: a runaway planner's output)."""
    plan = json.dumps({"subtasks": ctx.params["plan"]}) + " " * int(ctx.params.get("pad", 0))
    await ctx.write("plans/plan.json", plan, name="plan")


async def maker(ctx: AgentContext) -> None:
    """Does a subtask: sleeps if the instruction says `sleep=<s>`, writes who did it on which attempt."""
    match = re.search(r"sleep=([\d.]+)", ctx.instruction)
    if match:
        await asyncio.sleep(float(match.group(1)))
    feedback = (await ctx.read_text("feedback")).strip() if "feedback" in ctx.inputs else ""
    body = f"subtask={ctx.subtask} by={ctx.agent} attempt={ctx.task.attempt} feedback={bool(feedback)}\n"
    await ctx.write(f"work/{ctx.subtask}.txt", body, name="result")


async def checker(ctx: AgentContext) -> None:
    """A reviewer: `accept`, `accept-after:N` (attempt >= N), `accept-by:AGENT`, or `never`."""
    text = (await ctx.read_text("result")) if "result" in ctx.inputs else ""
    rule = ctx.task.acceptance_criteria or "accept"
    attempt = int(re.search(r"attempt=(\d+)", text).group(1))
    by = re.search(r"by=(\S+)", text).group(1)
    if rule == "accept":
        ok = True
    elif rule.startswith("accept-after:"):
        ok = attempt >= int(rule.split(":")[1])
    elif rule.startswith("accept-by:"):
        ok = by == rule.split(":")[1]
    else:
        ok = False
    verdict = {
        "accepted": ok,
        "feedback": "" if ok else f"not good enough ({rule}; got {by} attempt {attempt})",
    }
    await ctx.write(
        f"reviews/{ctx.subtask}-{ctx.params['worker']}-{attempt}.json",
        json.dumps(verdict),
        name="verdict",
    )


async def joiner(ctx: AgentContext) -> None:
    """The aggregator: concatenates every accepted result, in name order."""
    parts = [await ctx.read_text(name) for name in sorted(ctx.inputs)]
    await ctx.write("work/final.txt", "".join(parts), name="final")


# --- bidirectional -----------------------------------------------------------------------------------
async def grow(ctx: AgentContext) -> None:
    """Adds a line per turn until the document has 4 lines, then writes it back unchanged (converged)."""

    def change(old: bytes) -> bytes:
        lines = old.decode().splitlines()
        if len(lines) < 4:
            lines.append(f"{ctx.agent} turn {ctx.params['turn']}")
        return ("\n".join(lines) + "\n").encode()

    await ctx.update("document", change)


async def flip(ctx: AgentContext) -> None:
    """Each participant insists on its own version: A -> B -> A."""
    await ctx.update("document", lambda old: f"the {ctx.agent} way\n")


async def stamp(ctx: AgentContext) -> None:
    """Always changes something: never converges."""
    await ctx.update("document", lambda old: old + f"turn {ctx.params['turn']}\n".encode())


async def approver(ctx: AgentContext) -> None:
    """Approves what it was handed."""
    await ctx.approve(f"approved version {ctx.inputs['document'].version_id}\n")


# --- human in the loop -------------------------------------------------------------------------------
async def drafter(ctx: AgentContext) -> None:
    await ctx.write("drafts/draft.txt", f"draft {ctx.task.task_id}\n", name="draft")


async def finisher(ctx: AgentContext) -> None:
    await ctx.write("published/final.txt", (await ctx.read_text("draft")) + "final\n", name="final")


# --- reliability -------------------------------------------------------------------------------------
async def hang(ctx: AgentContext) -> None:
    """Hangs on the first attempt (past its agent's `time_limit`), answers at once on the next."""
    if ctx.task.attempt == 1:
        await asyncio.Event().wait()
    await ctx.write("work/hang.txt", f"attempt {ctx.task.attempt}\n", name="hang")


def burn(ctx: AgentContext) -> None:
    """CPU-bound and synchronous: spins for `params.burn` seconds without yielding, then writes."""
    deadline = time.thread_time() + float(ctx.params.get("burn", 2.5))  # CPU time: wall time is longer
    n = 0
    while time.thread_time() < deadline:
        n += 1
    ctx.sync(ctx.write("work/burn.txt", f"spun {n} times\n", name="burn"))


async def sleepy(ctx: AgentContext) -> None:
    """Hangs (4 s) on the first attempt, answers at once on the next: for deadlines."""
    if ctx.task.attempt == 1:
        await asyncio.sleep(4)
    await ctx.write("work/sleepy.txt", f"attempt {ctx.task.attempt}\n", name="sleepy")


# --- scale -------------------------------------------------------------------------------------------
async def noop(ctx: AgentContext) -> None:
    """Does nothing: a hop's cost is Baton's own."""


async def wide_planner(ctx: AgentContext) -> None:
    """A plan of `params.width` independent subtasks, each handed the run's `seed` input."""
    width = int(ctx.params["width"])
    plan = [{"id": f"s{i}", "agent": "passer", "inputs": ["seed"]} for i in range(width)]
    await ctx.write("plans/plan.json", json.dumps({"subtasks": plan}), name="plan")


async def passer(ctx: AgentContext) -> None:
    """A subtask that writes nothing: its output is the input it was handed (a ref, no bytes moved)."""
    ctx.outputs["result"] = ctx.inputs["seed"]


async def splitter(ctx: AgentContext) -> None:
    """Writes `params.parts` small outputs (more than one event's worth of refs)."""
    for i in range(int(ctx.params["parts"])):
        await ctx.write(f"work/part-{i:04d}.txt", f"part {i}\n", name=f"part-{i:04d}")


async def counter(ctx: AgentContext) -> None:
    """The aggregator of a wide plan: how many inputs it sees, and that each one reads."""
    names = sorted(ctx.inputs)
    first, last = await ctx.read(names[0]), await ctx.read(names[-1])
    await ctx.write("work/count.txt", f"{len(names)} inputs; {len(first) + len(last)} bytes\n", name="count")


# --- clients ------------------------------------------------------------------------------------------
async def silent(ctx: AgentContext) -> None:
    """Emits nothing for `params.sleep` seconds (default 60), then writes a note: a quiet stage for
    clients that wait on the run's events."""
    await asyncio.sleep(float(ctx.params.get("sleep", 60)))
    await ctx.write("work/silent.txt", "done after a long silence\n", name="silent")


# --- supervisor windows ------------------------------------------------------------------------------
async def slow_planner(ctx: AgentContext) -> None:
    """The planner, after `params.plan_sleep` seconds (default 2)."""
    await asyncio.sleep(float(ctx.params.get("plan_sleep", 2)))
    await planner(ctx)


async def broken(ctx: AgentContext) -> None:
    """Always fails, permanently (a ValueError is not retried)."""
    raise ValueError(f"{ctx.agent} cannot do {ctx.task.task_id}")


async def slow_grow(ctx: AgentContext) -> None:
    """`grow` after `params.turn_sleep` seconds (default 2), and returning 1.5 s after its write, so the
    new version's event is handled before the turn's completion."""
    await asyncio.sleep(float(ctx.params.get("turn_sleep", 2)))
    await grow(ctx)
    await asyncio.sleep(1.5)


async def two_step_plan(ctx: AgentContext) -> None:
    """The tracing tests' planner: the model agent summarises the brief, `flaky` fails once then works."""
    plan = [
        {"id": "summary", "agent": "summariser", "instruction": "Summarise the brief.", "inputs": ["brief"]},
        {"id": "retried", "agent": "flaky", "instruction": "Fail once, then succeed."},
    ]
    await ctx.write("plans/plan.json", json.dumps({"subtasks": plan}), name="plan")
