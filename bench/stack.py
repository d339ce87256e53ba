"""Scenarios 3 and 4, on the full stack: notifier, supervisor, router and two workers as separate processes
(`baton.dev.Stack`, the same commands as `baton dev up`), with the bench workflow file.

3. Handoff latency: runs of a 3-stage sequential workflow of no-op agents, submitted at a fixed rate. Every
   event's `created_at` is stamped by the process that made it (one machine, one clock), so each hop's added
   latency is read from the run's own event stream: stage i assigned -> stage i+1 assigned (the last stage:
   -> run completed), split into route+pickup (assigned -> started), run (started -> completed) and
   decide (completed -> next assigned). End to end: RunSubmitted -> RunCompleted.
4. By reference vs inline: a 10 MB artifact handed to two agents in turn, once as an `ObjectRef` (uploaded
   to MinIO, each agent reads it from there) and once stuffed into the run's params (so into every task
   message). Measured: the size of each handoff event as it sits in the agent's stream, all bytes in and
   out of Redis during the run (INFO stats), and the time from the client's first byte to RunCompleted.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import statistics
import time
from datetime import datetime
from pathlib import Path

import redis

from baton import servers
from baton.client import init_workspace
from baton.dev import Stack, local_env, settings_kwargs
from bench.common import ROOT, percentile
from shared import streams
from shared.broker import DATA_FIELD, encode
from shared.events import TERMINAL_RUN_EVENTS, RunSubmitted, parse_event
from shared.settings import Settings
from shared.storage import Storage

WORKFLOWS = Path(__file__).resolve().parent / "workflows.yaml"


def stack_env(
    redis_url: str,
    s3_url: str,
    notifier_port: int,
    token: str,
    workflows: Path = WORKFLOWS,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """The services' environment in a benchmark's stack (and the settings a client of it uses)."""
    env = local_env(redis_url, s3_url, workflows, notifier_port, token)
    env["BATON_CWD"] = str(ROOT)
    env.update(extra or {})
    return env


def start_stack(
    root: Path,
    redis_url: str,
    s3_url: str,
    notifier_port: int,
    token: str,
    workers: int = 2,
    extra: dict[str, str] | None = None,
    supervisors: int = 1,
    workflows: Path = WORKFLOWS,
) -> Stack:
    """The services as `baton dev up` starts them; replicas of a service share its group under their own
    consumer names (the handle, e.g. `supervisor-2`)."""
    env = stack_env(redis_url, s3_url, notifier_port, token, workflows, extra)
    asyncio.run(init_workspace(Settings(**settings_kwargs(env))))
    stack = Stack(root, env)
    try:
        for name in ("notifier", *["supervisor"] * supervisors, "router", *["worker"] * workers):
            stack.start(name)
    except BaseException:
        stack.stop_all()
        raise
    return stack


def _ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def _events(client: redis.Redis, run_id: str) -> list[dict]:
    return [json.loads(f[DATA_FIELD.encode()]) for _i, f in client.xrange(streams.run_events(run_id))]


def _wait_all(client: redis.Redis, run_ids: list[str], timeout: float) -> list[str]:
    """Wait until every run has ended; returns the ones that did not."""
    deadline = time.time() + timeout
    waiting = list(run_ids)
    while waiting and time.time() < deadline:
        still = []
        for run_id in waiting:
            last = client.xrevrange(streams.run_events(run_id), count=1)
            kind = json.loads(last[0][1][DATA_FIELD.encode()]).get("type") if last else None
            if kind not in TERMINAL_RUN_EVENTS:
                still.append(run_id)
        waiting = still
        if waiting:
            time.sleep(0.05)
    return waiting


def _ms(values: list[float]) -> dict:
    return {
        "p50_ms": round(percentile(values, 50) * 1000, 2) if values else None,
        "p99_ms": round(percentile(values, 99) * 1000, 2) if values else None,
        "max_ms": round(max(values) * 1000, 2) if values else None,
        "count": len(values),
    }


def _commands(client: redis.Redis) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in client.info("commandstats").items()}


def latency(stack: Stack, rate: float, seconds: float) -> dict:
    """Submit `relay` runs at `rate` per second for `seconds`; per-hop and end-to-end latency."""
    client = redis.Redis.from_url(stack.env["REDIS_URL"])
    total = max(1, int(rate * seconds))
    tag = secrets.token_hex(3)
    run_ids, submitted = [], {}
    commands_before = _commands(client)
    begin = time.perf_counter()
    for i in range(total):
        delay = begin + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        run_id = f"lat-{tag}-{i:05d}"
        event = RunSubmitted(run_id=run_id, workflow="relay", sender="bench")
        client.xadd(streams.RUNS, encode(event))
        run_ids.append(run_id)
        submitted[run_id] = event.created_at.timestamp()
    achieved = total / (time.perf_counter() - begin)
    unfinished = _wait_all(client, run_ids, timeout=60)
    elapsed = time.perf_counter() - begin
    commands = {k: v - commands_before.get(k, 0) for k, v in _commands(client).items()}
    # Not the services': this function's XADDs, its polling (XREVRANGE) and INFO.
    commands["xadd"] = commands.get("xadd", 0) - total
    for own in ("xrevrange", "info"):
        commands.pop(own, None)
    segments: dict[str, list[float]] = {k: [] for k in ("hop", "route", "pickup", "run", "decide", "e2e")}
    failed = 0
    for run_id in run_ids:
        events = _events(client, run_id)
        end = next((e for e in events if e["type"] in TERMINAL_RUN_EVENTS), None)
        if end is None or end["type"] != "run.completed":
            failed += end is not None
            continue
        assigned: dict[int, float] = {}
        stage_of: dict[str, int] = {}
        seen: dict[str, dict[str, float]] = {"route.decided": {}, "task.started": {}, "task.completed": {}}
        for e in events:
            if e["type"] == "task.assigned":
                assigned.setdefault(e["stage"], _ts(e["created_at"]))
                stage_of.setdefault(e["task_id"], e["stage"])
            elif e["type"] in seen:
                seen[e["type"]].setdefault(e["task_id"], _ts(e["created_at"]))
        finished = _ts(end["created_at"])
        stages = sorted(assigned)
        for k, stage in enumerate(stages):
            nxt = assigned[stages[k + 1]] if k + 1 < len(stages) else finished
            segments["hop"].append(nxt - assigned[stage])
        for task_id, stage in stage_of.items():
            # A task for a known agent goes straight to its stream; one that needs a route is routed first.
            routed = seen["route.decided"].get(task_id)
            started = seen["task.started"].get(task_id)
            completed = seen["task.completed"].get(task_id)
            if started is None or completed is None:
                continue
            if routed is not None:
                segments["route"].append(routed - assigned[stage])
            segments["pickup"].append(started - (routed or assigned[stage]))
            segments["run"].append(completed - started)
            segments["decide"].append(assigned.get(stage + 1, finished) - completed)
        segments["e2e"].append(finished - submitted[run_id])
    client.close()
    done = len(segments["e2e"]) or 1
    return {
        "ok": not unfinished and not failed,
        "runs": total,
        "stages": 3,
        "target_rate_runs_per_s": rate,
        "achieved_rate_runs_per_s": round(achieved, 1),
        "tasks_per_s": round(achieved * 3, 1),
        "unfinished": len(unfinished),
        "failed": failed,
        "per_hop": _ms(segments["hop"]),
        "assigned_to_routed": _ms(segments["route"]),
        "to_started": _ms(segments["pickup"]),
        "agent_run": _ms(segments["run"]),
        "completed_to_next_assigned": _ms(segments["decide"]),
        "end_to_end": _ms(segments["e2e"]),
        "workers": sum(1 for h in stack.procs if h.startswith("worker")),
        "redis_commands_per_run": {
            k: round(v / done, 1) for k, v in sorted(commands.items(), key=lambda kv: -kv[1]) if v > 0
        },
        "redis_commands_per_run_total": round(sum(v for v in commands.values() if v > 0) / done, 1),
        "seconds": round(elapsed, 1),
    }


def _net_bytes(client: redis.Redis) -> int:
    info = client.info("stats")
    return int(info["total_net_input_bytes"]) + int(info["total_net_output_bytes"])


def _handoff_sizes(client: redis.Redis, agent: str, run_id: str, since_ms: int) -> list[int]:
    sizes = []
    for _i, fields in client.xrange(streams.agent_stream(agent), min=f"{since_ms}-0"):
        raw = fields[DATA_FIELD.encode()]
        if f'"run_id":"{run_id}"'.encode() in raw:
            sizes.append(len(raw))
    return sizes


async def _upload(settings: Settings, key: str, data: bytes):
    async with Storage.connect(settings) as storage:
        return await storage.put(key, data, content_type="text/plain")


def handoff(stack: Stack, size: int, repeats: int) -> dict:
    """The same artifact handed to two agents in turn, by reference and inline."""
    client = redis.Redis.from_url(stack.env["REDIS_URL"])
    settings = Settings(**settings_kwargs(stack.env))
    artifact = (b"0123456789abcdef" * (size // 16 + 1))[:size]
    out = {}
    for variant in ("by-ref", "inline"):
        runs = []
        for i in range(repeats):
            run_id = f"{variant}-{secrets.token_hex(3)}-{i}"
            since_ms = int(time.time() * 1000) - 1
            before = _net_bytes(client)
            t0 = time.time()
            if variant == "by-ref":
                ref = asyncio.run(_upload(settings, f"runs/{run_id}/inputs/artifact.txt", artifact))
                event = RunSubmitted(
                    run_id=run_id, workflow="by-ref", inputs={"artifact": ref}, sender="bench"
                )
                agent = "read-inputs"
            else:
                event = RunSubmitted(
                    run_id=run_id,
                    workflow="inline",
                    params={"artifact": artifact.decode(), "artifact_size": size},
                    sender="bench",
                )
                agent = "read-param"
            client.xadd(streams.RUNS, encode(event))
            if _wait_all(client, [run_id], timeout=120):
                return {"ok": False, "error": f"{variant} run {run_id} did not end in 120 s"}
            t1 = time.time()
            end = parse_event(
                client.xrevrange(streams.run_events(run_id), count=1)[0][1][DATA_FIELD.encode()]
            )
            if end.type != "run.completed":
                return {"ok": False, "error": f"{variant} run {run_id} failed: {getattr(end, 'reason', end)}"}
            time.sleep(0.3)  # let the trailing reads of the run's own stream settle
            runs.append(
                {
                    "seconds": t1 - t0,
                    "broker_bytes": _net_bytes(client) - before,
                    "handoff_event_bytes": _handoff_sizes(client, agent, run_id, since_ms),
                }
            )
        handoffs = [s for r in runs for s in r["handoff_event_bytes"]]
        out[variant] = {
            "runs": repeats,
            "handoffs_per_run": 2,
            "median_seconds": round(statistics.median(r["seconds"] for r in runs), 3),
            "median_broker_bytes_per_run": int(statistics.median(r["broker_bytes"] for r in runs)),
            "max_handoff_event_bytes": max(handoffs) if handoffs else None,
        }
    client.close()
    ref, inline = out["by-ref"], out["inline"]
    return {
        "ok": True,
        "artifact_bytes": size,
        **out,
        "inline_over_ref": {
            "seconds": round(inline["median_seconds"] / ref["median_seconds"], 1),
            "broker_bytes": round(
                inline["median_broker_bytes_per_run"] / ref["median_broker_bytes_per_run"], 1
            ),
        },
    }


def new_token() -> str:
    return secrets.token_hex(16)


def minio(root: Path, notifier_port: int, token: str) -> servers.Server:
    return servers.start_minio(root / "minio", f"http://127.0.0.1:{notifier_port}/minio/events", token)
