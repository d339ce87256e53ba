"""`make chaos`: many runs while workers, the supervisor and MinIO are killed and restarted at random.

Prints: submitted, completed, failed-with-reason, lost (must be 0), done twice (must be 0), p50/p99 run
time. Servers are its own (Redis and MinIO on free ports, data in a temporary folder); every process it
starts is stopped by PID. Usage: python scripts/chaos.py [--runs 1000] [--workers 3] [--rate 40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from baton import servers  # noqa: E402
from baton.client import init_workspace  # noqa: E402
from baton.dev import Stack, local_env, settings_kwargs  # noqa: E402
from shared import streams  # noqa: E402
from shared.broker import DATA_FIELD, encode  # noqa: E402
from shared.events import ObjectRef, RunSubmitted  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.storage import Storage  # noqa: E402

WORKFLOWS = """
agents:
  outliner: {handler: "examples.content:outline", reads: [inputs/], writes: [drafts/]}
  writer: {handler: "examples.content:draft", reads: [inputs/, drafts/], writes: [drafts/]}
  seo: {handler: "examples.content:seo", reads: [inputs/, drafts/], writes: [published/]}
workflows:
  content-factory:
    pattern: sequential
    stages: [outliner, writer, seo]
    max_attempts: 6
    retry_backoff: 1.0
    retry_max_delay: 8
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


async def chaos(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="baton-chaos-"))
    (tmp / "workflows.yaml").write_text(WORKFLOWS)
    port, token = servers.free_port(), secrets.token_hex(8)
    redis_server = servers.start_redis(tmp / "redis", appendonly=True)
    minio_port = servers.free_port()
    webhook = f"http://127.0.0.1:{port}/minio/events"
    servers_up = {"minio": servers.start_minio(tmp / "minio", webhook, token, port=minio_port)}
    env = local_env(redis_server.url, servers_up["minio"].url, tmp / "workflows.yaml", port, token)
    env.update(
        BATON_CWD=str(ROOT),
        BATON_RECLAIM_IDLE_MS="2000",
        BATON_MAX_DELIVERIES="10",
        BATON_LOG_LEVEL="WARNING",
    )
    settings = Settings(**settings_kwargs(env))
    stack = Stack(tmp / "stack", env)
    result = None
    try:
        result = await _run(args, tmp, settings, stack, webhook, token, minio_port, servers_up)
        return result
    finally:
        if args.keep and result and (result["lost"] or result["tasks_done_twice"]):
            print(f"kept for inspection: {tmp} (REDIS_URL={settings.redis_url}); stop its processes by PID")
            return result  # noqa: B012
        stack.stop_all()
        for server in (servers_up["minio"], redis_server):  # the MinIO running now: it is restarted
            server.stop()


async def _run(args, tmp, settings, stack, webhook, token, minio_port, servers_up: dict) -> dict:
    await init_workspace(settings)
    for name in ["notifier", "supervisor", "router", *["worker"] * args.workers]:
        stack.start(name)
    async with Storage.connect(settings) as storage:
        brief = await storage.put("incoming/brief.md", (ROOT / "examples/briefs/topic.md").read_bytes())
    r = aioredis.Redis.from_url(settings.redis_url)
    kills: Counter = Counter()
    stop = asyncio.Event()

    async def killer():
        rng = random.Random(args.seed)
        next_supervisor, next_minio = time.monotonic() + 8, time.monotonic() + 15
        while not stop.is_set():
            await asyncio.sleep(rng.uniform(1.5, 3.5))
            workers = [h for h in stack.procs if h.startswith("worker")]
            victim = rng.choice(workers)
            stack.kill(victim, hard=True)
            kills["worker"] += 1
            stack.start("worker", wait=False)
            if time.monotonic() > next_supervisor:
                sup = next(h for h in stack.procs if h.startswith("supervisor"))
                stack.kill(sup, hard=True)
                kills["supervisor"] += 1
                await asyncio.sleep(0.5)
                stack.start("supervisor", wait=False)
                next_supervisor = time.monotonic() + rng.uniform(8, 14)
            if time.monotonic() > next_minio and kills["minio"] < args.minio_restarts:
                servers_up["minio"].stop()
                kills["minio"] += 1
                await asyncio.sleep(1.0)
                servers_up["minio"] = await asyncio.to_thread(
                    servers.start_minio, tmp / "minio", webhook, token, minio_port
                )
                next_minio = time.monotonic() + 20

    submitted: dict[str, float] = {}
    killer_task = asyncio.create_task(killer())
    started = time.monotonic()
    try:
        for i in range(args.runs):
            run_id = f"chaos-{i:05d}"
            event = RunSubmitted(
                run_id=run_id,
                workflow="content-factory",
                inputs={
                    "brief": ObjectRef(bucket=settings.bucket, key=brief.key, version_id=brief.version_id)
                },
            )
            await r.xadd(streams.RUNS, encode(event))
            submitted[run_id] = time.time()
            await asyncio.sleep(1 / args.rate)
            if i and i % 200 == 0:
                log(f"submitted {i}; kills so far {dict(kills)}")
        deadline = time.monotonic() + args.timeout
        ended: dict[str, tuple[str, float, str]] = {}
        while time.monotonic() < deadline and len(ended) < len(submitted):
            for run_id in [x for x in submitted if x not in ended]:
                raw = await r.hget(streams.run_state(run_id), "core")
                status = json.loads(raw)["status"] if raw else None
                if status in ("completed", "failed"):
                    ended[run_id] = status
            log(f"ended {len(ended)}/{len(submitted)}")
            if len(ended) < len(submitted):
                await asyncio.sleep(2)
    finally:
        stop.set()
        killer_task.cancel()
        try:
            await killer_task
        except asyncio.CancelledError:
            pass
    elapsed = time.monotonic() - started
    # The end event may not be the newest one (a late, ignored result can follow): scan whole streams.
    twice = runs_completed_twice = 0
    doubles: list[dict] = []
    durations, reasons = [], Counter()
    completed = failed = 0
    for run_id in submitted:
        entries = await r.xrange(streams.run_events(run_id))
        events = [json.loads(f[DATA_FIELD.encode()]) for _i, f in entries]
        # Distinct events: a supervisor that dies before acknowledging re-records the same event (same
        # event id) in the run's stream; that is a duplicate log line, not work done twice.
        completions = {e["event_id"]: e for e in events if e["type"] == "task.completed"}
        done = Counter((e["task_id"], e["attempt"]) for e in completions.values())
        for (task_id, attempt), n in done.items():
            if n > 1:
                twice += 1
                who = [
                    (e["sender"], e["created_at"])
                    for e in events
                    if e["type"] in ("task.started", "task.completed") and e["task_id"] == task_id
                ]
                doubles.append({"task_id": task_id, "attempt": attempt, "by": who})
        ends = [
            (e, i)
            for e, (i, _f) in zip(events, entries, strict=True)
            if e["type"] in ("run.completed", "run.failed")
        ]
        runs_completed_twice += sum(1 for e, _i in ends if e["type"] == "run.completed") > 1
        if ends:
            e, entry_id = ends[0]
            completed += e["type"] == "run.completed"
            if e["type"] == "run.failed":
                failed += 1
                reasons[e["reason"][:80]] += 1
            durations.append(int(entry_id.decode().split("-")[0]) / 1000 - submitted[run_id])
    lost = len(submitted) - completed - failed
    for double in doubles:  # how many entries carried the task to its agent (a double dispatch?)
        agent = double["task_id"].rsplit(".", 1)[-1]
        copies = [
            i.decode()
            for i, f in await r.xrange(streams.agent_stream(agent))
            if json.loads(f[DATA_FIELD.encode()]).get("task_id") == double["task_id"]
        ]
        double["agent_stream_entries"] = copies
    await r.aclose()
    durations.sort()
    return {
        "submitted": len(submitted),
        "completed": completed,
        "failed_with_reason": failed,
        "lost": lost,
        "tasks_done_twice": twice,
        "runs_completed_twice": runs_completed_twice,
        "p50_s": round(statistics.median(durations), 2) if durations else None,
        "p99_s": round(durations[int(0.99 * (len(durations) - 1))], 2) if durations else None,
        "elapsed_s": round(elapsed, 1),
        "kills": dict(kills),
        "failure_reasons": dict(reasons),
        "workers": args.workers,
        "rate_per_s": args.rate,
        "done_twice": doubles,
    }


def _interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt


def main() -> None:
    # SIGTERM (timeout, kill PID) unwinds like Ctrl-C, so the servers and services it started are stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--rate", type=float, default=40.0, help="Runs submitted per second.")
    parser.add_argument("--timeout", type=float, default=600.0, help="Seconds to wait for the last run.")
    parser.add_argument("--minio-restarts", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--keep", action="store_true", help="Leave everything running if a run is lost or a task done twice."
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "chaos.json")
    args = parser.parse_args()
    result = asyncio.run(chaos(args))
    rows = [
        ("submitted", result["submitted"]),
        ("completed", result["completed"]),
        ("failed with reason", result["failed_with_reason"]),
        ("lost (must be 0)", result["lost"]),
        ("tasks done twice (must be 0)", result["tasks_done_twice"]),
        ("runs completed twice (must be 0)", result["runs_completed_twice"]),
        ("p50 run time (s)", result["p50_s"]),
        ("p99 run time (s)", result["p99_s"]),
        ("kills", result["kills"]),
        ("elapsed (s)", result["elapsed_s"]),
    ]
    width = max(len(k) for k, _v in rows)
    print()
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    for reason, n in result["failure_reasons"].items():
        print(f"  failed x{n}: {reason}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    sys.exit(0 if result["lost"] == 0 and result["runs_completed_twice"] == 0 else 1)


if __name__ == "__main__":
    main()
