"""Scenario `approvals`: people answering at 10x and 100x.

The happy path has one reviewer approving one draft. A team that puts a person in front of every agent's
output sees a queue of runs waiting, and a reviewer (or a script on their behalf, or the console's inbox
used by many people) answering them in a burst. N runs of `approve-then` (a `human` step, then one no-op
stage) are published and left to wait for a person (each run's state says so); then N answers are written
at once, `CONCURRENCY` at a time, through the path `baton respond`, the console and MCP share
(`baton.client.write_response`: a response file in the bucket, announced to the supervisor, its bucket
notification arriving too and applied once). Measured per burst: how long until every run waited, how
fast the answers were written (the writer is this process, on the same 2 cores), when each run ended after
the first answer (p50, p90, the last), runs resumed and completed a second, and the supervisor's, the
notifier's and the workers' CPU per run over the answering phase.
"""

from __future__ import annotations

import asyncio
import os
import time

import redis

from baton.client import write_response
from baton.dev import settings_kwargs
from bench import runs as whole_runs
from shared import streams
from shared.settings import Settings
from shared.storage import Storage

WORKFLOW = "approve-then"
CONCURRENCY = 32  # answers written at once


def scenario(srv: whole_runs.Servers, sizes: list[int], workers: int) -> dict:
    out: dict = {"workflow": WORKFLOW, "workers": workers, "concurrency": CONCURRENCY, "bursts": []}
    for n in sizes:
        print(f"- approvals: {n:,} runs waiting for a person, then {n:,} answers at once", flush=True)
        row = whole_runs._attempt(lambda n=n: _burst(srv, n, workers))
        row["runs"] = n
        out["bursts"].append(row)
    out["ok"] = all(b.get("ok") for b in out["bursts"])
    return out


def _burst(srv: whole_runs.Servers, n: int, workers: int) -> dict:
    client = srv.clean()
    stack = srv.stack(f"approvals-{n}", workers=workers)
    timeout = 60 + n / 20
    try:
        settings = Settings(**settings_kwargs(stack.env))
        runs = whole_runs._runs("ask", n, workflow=WORKFLOW)
        t0 = time.time()
        whole_runs._submit_all(client, list(runs.values()))
        waited_s = _until_waiting(client, n, t0 + timeout) - t0
        watch = whole_runs.RunWatch(client, list(runs), stages=1)
        before = watch.ended_count()
        services = ("supervisor", "notifier", "worker")
        pids = {s: whole_runs._pids(stack, s) for s in services}
        cpu0 = {s: whole_runs._cpu(p) for s, p in pids.items()}
        mine0 = sum(os.times()[:2])
        t1 = time.time()
        written_s = asyncio.run(_answer(settings, list(runs))) - t1
        writer_cpu = sum(os.times()[:2]) - mine0
        finished = watch.wait_counted(timeout, before)
        cpu = {s: whole_runs._cpu(pids[s]) - cpu0[s] for s in services}
        problems = whole_runs._log_problems(stack, "supervisor")
    finally:
        stack.stop_all()
    done = [t for kind, t in watch.ended.values() if kind == "run.completed"]
    end = max(done) if done else time.time()
    per_run = max(len(done), 1)
    return {
        "ok": finished and len(done) == n,
        "completed": len(done),
        "failed": len(watch.ended) - len(done),
        "unfinished": len(watch.pending),
        "all_waiting_s": round(waited_s, 2),
        "answers_written_s": round(written_s, 2),
        "answers_per_s": round(n / max(written_s, 1e-6), 1),
        "writer_cpu_ms_per_answer": round(writer_cpu / n * 1000, 2),
        "run_end_after_first_answer": whole_runs._summary([t - t1 for t in done]),
        "resumed_runs_per_s": round(len(done) / max(end - t1, 1e-6), 1),
        **{f"{s}_cpu_ms_per_run": round(cpu[s] / per_run * 1000, 3) for s in services},
        "supervisor_log": problems,
    }


def _until_waiting(client: redis.Redis, n: int, deadline: float) -> float:
    """When all `n` runs waited for a person (the supervisor's index of waiting runs)."""
    while client.zcard(streams.RUNS_WAITING) < n:
        if time.time() > deadline:
            have = client.zcard(streams.RUNS_WAITING)
            raise RuntimeError(f"only {have} of {n} runs waited for a person by the deadline")
        time.sleep(0.05)
    return time.time()


async def _answer(settings: Settings, run_ids: list[str]) -> float:
    """Approve every run, `CONCURRENCY` at a time, as `baton respond` does (without its per-run check that
    the run waits: every one does); when the last answer was written."""
    gate = asyncio.Semaphore(CONCURRENCY)
    r = redis.asyncio.Redis.from_url(settings.redis_url, max_connections=CONCURRENCY)
    try:
        async with Storage.connect(settings) as storage:

            async def one(run_id: str) -> None:
                async with gate:
                    body = {"decision": "approve", "text": "looks right"}
                    await write_response(storage, settings, run_id, body, sender="bench", redis=r)

            await asyncio.gather(*(one(run_id) for run_id in run_ids))
    finally:
        await r.aclose()
    return time.time()


def table(results: dict) -> list[str]:
    r = results.get("approvals")
    if not r:
        return []
    lines = [
        "",
        f"People answering: N runs of '{WORKFLOW}' (a person's approval, then one no-op stage) waiting, "
        f"then N answers written {r['concurrency']} at a time; {r['workers']} workers",
        f"{'runs':>7} {'all waiting':>12} {'answers/s':>10} {'p50 end s':>10} {'last end s':>11} "
        f"{'resumed/s':>10} {'sup ms/run':>11} {'notifier ms':>12}",
    ]
    for b in r["bursts"]:
        if not b.get("completed"):
            lines.append(f"{b['runs']:>7,} failed: {b.get('error')}")
            continue
        ends = b["run_end_after_first_answer"]
        lines.append(
            f"{b['runs']:>7,} {b['all_waiting_s']:>11.1f}s {b['answers_per_s']:>10,.0f} "
            f"{ends['p50_s']:>10.2f} {ends['max_s']:>11.2f} {b['resumed_runs_per_s']:>10,.0f} "
            f"{b['supervisor_cpu_ms_per_run']:>11.2f} {b['notifier_cpu_ms_per_run']:>12.2f}"
            + ("" if b.get("ok") else "  NOT OK")
        )
    return lines
