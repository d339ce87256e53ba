"""`make chaos`: runs of every pattern while processes and servers are killed, at random and at named windows.

The runs: a mix of scripts/chaos_workflows.yaml (sequential, sequential with a retry, router, hierarchical
with a review, bidirectional, and a sequential run with a person, answered by this script as `baton
respond` does once the run waits). Each completes when nothing is killed, so any run that fails under
chaos failed unexpectedly.

The stack: two supervisors (one group, two consumer names), a router, a notifier and N workers, with Redis
and MinIO of its own (free ports, data in a temporary folder). Meanwhile it
- kills a worker every 1.5-3.5 s, a supervisor every 6-12 s, the router and the notifier every 20-40 s;
- every 2-4 s restarts one process armed with `BATON_FAULTS=<point>=exit`, rotating through the named
  windows (supervisor.before_commit, .after_commit, .after_send, .timer_taken, router.after_decision,
  notifier.publish, handler), so it dies exactly there, and then starts it again unarmed;
- restarts MinIO, and SIGKILLs Redis and starts it again on its data: Redis runs with `appendonly yes` and
  `appendfsync always`, so a reply means the write is on disk and a SIGKILL loses nothing acknowledged;
- restarts any process that exited on its own, and reports it.

Schedules: steady (`--runs N` at `--rate` runs/s) or a burst (`--burst N`: N runs in one pipeline of XADDs).
Prints, per workflow: runs, completed, failed (reasons grouped), lost, tasks done twice, runs ended twice,
p50/p99 run time. Exits 1 on any lost, failed or cancelled run, any task done twice or run ended twice.
Every process it starts is stopped by PID.

Usage: python scripts/chaos.py [--runs 1000 | --burst 5000] [--workers 3] [--rate 40] [--seed 7]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from redis.exceptions import ClusterDownError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import chaos_report  # noqa: E402

from baton import client, servers  # noqa: E402
from baton import cluster as valkey_cluster  # noqa: E402
from baton.client import init_workspace  # noqa: E402
from baton.dev import Stack, local_env, settings_kwargs  # noqa: E402
from shared import streams  # noqa: E402
from shared.broker import encode  # noqa: E402
from shared.events import ObjectRef, RunSubmitted  # noqa: E402
from shared.redisconn import as_cluster_url, connect  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.storage import Storage  # noqa: E402
from shared.workflow import load_workflows  # noqa: E402

WORKFLOWS = Path(__file__).with_name("chaos_workflows.yaml")
MIX = {"content-factory": 3, "retry": 1, "support": 2, "build": 2, "co-write": 2, "approval": 2}
TEXTS = ["Where is my invoice?", "My laptop will not boot", "The parcel delivery is late", "hello there"]
PLAN = [  # b waits for a; its first attempt is rejected by the reviewer, the second accepted
    {"id": "a", "agent": "maker", "acceptance_criteria": "accept"},
    {"id": "b", "agent": "maker", "inputs": ["a"], "acceptance_criteria": "accept-after:2"},
]
# (service, point): one process of the service is restarted armed to exit at the point
FAULTS = [
    ("supervisor", "supervisor.before_commit"),
    ("supervisor", "supervisor.after_commit"),
    ("supervisor", "supervisor.after_send"),
    ("supervisor", "supervisor.timer_taken"),
    ("router", "router.after_decision"),
    ("notifier", "notifier.publish"),
    ("worker", "handler"),
    ("supervisor", "handler"),
]
# (on a cluster, also a slot whose master is failing over)
REDIS_DOWN = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    OSError,
    ClusterDownError,
    TryAgainError,
)
ENDED = ("completed", "failed", "cancelled")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Servers:
    """The chaos run's own Redis and MinIO, restarted on the same ports and data. With `cluster`, Redis is
    a Valkey cluster of 3 masters with a replica each, and a restart is a master's failover."""

    def __init__(self, tmp: Path, webhook: str, token: str, cluster: bool = False, seed: int = 7) -> None:
        self.tmp, self.webhook, self.token = tmp, webhook, token
        self.rng = random.Random(seed)
        self.cluster = None
        if cluster:
            self.cluster = valkey_cluster.start_local(tmp / "cluster")
            self.redis_url = as_cluster_url(self.cluster.url)
        else:
            self.redis = servers.start_redis(tmp / "redis", appendonly=True, appendfsync="always")
            self.redis_port = self.redis.extra["port"]
            self.redis_url = self.redis.url
        self.minio_port = servers.free_port()
        self.minio = servers.start_minio(tmp / "minio", webhook, token, port=self.minio_port)

    def restart_minio(self) -> None:
        self.minio.stop()
        time.sleep(1.0)
        self.minio = servers.start_minio(self.tmp / "minio", self.webhook, self.token, port=self.minio_port)

    def restart_redis(self) -> str:
        """SIGKILL, then start again on the same data (what an acknowledged write survives). On a cluster:
        SIGKILL a master, wait until its replica has taken over, start it again and wait until it is that
        replica's replica, in sync (what BATON_REDIS_WAIT_REPLICAS=1 makes lose nothing acknowledged)."""
        if self.cluster is None:
            self.redis.proc.kill()
            self.redis.proc.wait(10)
            time.sleep(1.0)
            self.redis = servers.start_redis(
                self.tmp / "redis", port=self.redis_port, appendonly=True, appendfsync="always"
            )
            return "killed Redis (SIGKILL) and started it again on its AOF"
        local = self.cluster
        victim = self.rng.choice([i for i in range(len(local.nodes)) if local.role(i)[0] == b"master"])
        took_over, back = local.fail_over(victim)
        return (
            "killed master {}:{} (SIGKILL): its replica took over in {:.1f} s; it is back as a replica after "
            "{:.1f} s".format(*local.addresses[victim], took_over, back)
        )

    def stop(self) -> None:
        self.minio.stop()
        if self.cluster is not None:
            self.cluster.stop()
        else:
            self.redis.stop()


class Monkey:
    """Kills and restarts: at random, at named windows, and whatever exited on its own."""

    def __init__(self, args, stack: Stack, srv: Servers) -> None:
        self.args, self.stack, self.srv = args, stack, srv
        self.rng = random.Random(args.seed)
        self.kills: Counter = Counter()
        self.fired: Counter = Counter()  # point -> armed processes that died there
        self.not_fired: Counter = Counter()  # point -> armed processes that never reached it in time
        self.armed: dict[str, tuple[str, float]] = {}  # handle -> (point, armed at)
        self.unexpected: list[dict] = []  # processes that exited on their own
        self.turn = 0

    def handles(self, service: str, armed: bool = False) -> list[str]:
        return [
            h for h in self.stack.procs if h.rsplit("-", 1)[0] == service and (armed or h not in self.armed)
        ]

    def replace(self, service: str, extra: dict | None = None) -> str | None:
        victims = self.handles(service)
        if not victims:
            return None
        self.stack.kill(self.rng.choice(victims), hard=True)
        return self.stack.start(service, extra, wait=False)

    def arm_next(self) -> None:
        service, point = FAULTS[self.turn % len(FAULTS)]
        self.turn += 1
        handle = self.replace(service, {"BATON_FAULTS": f"{point}=exit"})
        if handle:
            self.armed[handle] = (point, time.monotonic())

    def exit_record(self, handle: str, code: int | None, **extra) -> dict:
        """An exit worth reporting: was the process serving (ready) or still starting, and where it died."""
        text = self.stack.log_path(handle).read_text(errors="replace")
        frames = [ln.strip() for ln in text.splitlines() if 'File "' in ln and ".venv" not in ln]
        lines = [ln for ln in text.splitlines() if ln.strip()]
        return {
            "handle": handle,
            "code": code,
            "was_ready": self.stack.ready_path(handle).exists(),
            "where": frames[-3:],
            "last_line": lines[-1][:300] if lines else "",
            **extra,
        }

    def check(self) -> None:
        """Armed processes that died at their point (or never got there); anything else that exited."""
        for handle, proc in list(self.stack.procs.items()):
            service = handle.rsplit("-", 1)[0]
            if handle in self.armed:
                point, since = self.armed[handle]
                if proc.poll() is not None:
                    text = self.stack.log_path(handle).read_text(errors="replace")
                    if f"fault injected: exit at {point}" in text:
                        self.fired[point] += 1
                    else:
                        self.unexpected.append(self.exit_record(handle, proc.returncode, armed=point))
                elif time.monotonic() - since < self.args.fault_wait:
                    continue
                else:
                    self.not_fired[point] += 1
                del self.armed[handle]
                self.stack.kill(handle, hard=True)
                self.stack.start(service, wait=False)
            elif proc.poll() is not None:
                self.unexpected.append(self.exit_record(handle, proc.returncode))
                log(f"{handle} exited on its own (code {proc.returncode}); started again")
                self.stack.kill(handle, hard=True)
                self.stack.start(service, wait=False)
        if len(self.unexpected) > self.args.max_unexpected:
            raise RuntimeError(f"{len(self.unexpected)} processes exited on their own: stopping the chaos")

    async def run(self, stop: asyncio.Event) -> None:
        rng, now = self.rng, time.monotonic()
        due = {
            "worker": now + rng.uniform(1.5, 3.5),
            "supervisor": now + rng.uniform(6, 12),
            "router": now + rng.uniform(20, 40),
            "notifier": now + rng.uniform(20, 40),
            "fault": now + rng.uniform(2, 4),
            "minio": now + 8,
            "redis": now + 16,
        }
        spans = {"worker": (1.5, 3.5), "supervisor": (6, 12), "router": (20, 40), "notifier": (20, 40)}
        deadline = now + self.args.timeout + 3600  # bounded even if `stop` were never set
        while not stop.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            self.check()
            now = time.monotonic()
            for service, (low, high) in spans.items():
                if now >= due[service]:
                    if self.replace(service):
                        self.kills[service] += 1
                    due[service] = now + rng.uniform(low, high)
            if now >= due["fault"] and not self.armed:
                self.arm_next()
                due["fault"] = now + rng.uniform(2, 4)
            if now >= due["minio"] and self.kills["minio"] < self.args.minio_restarts:
                log("restarting MinIO")
                await asyncio.to_thread(self.srv.restart_minio)
                self.kills["minio"] += 1
                due["minio"] = time.monotonic() + 20
            if now >= due["redis"] and self.kills["redis"] < self.args.redis_restarts:
                log("killing Redis" + (" (a master)" if self.srv.cluster else ""))
                log(await asyncio.to_thread(self.srv.restart_redis))
                self.kills["redis"] += 1
                due["redis"] = time.monotonic() + 20

    def calm(self) -> None:
        """Unarm what is armed and start what is down: the stack whole again, nothing killed."""
        for handle in list(self.armed):
            service = handle.rsplit("-", 1)[0]
            self.stack.kill(handle, hard=True)
            self.stack.start(service, wait=False)
        self.armed.clear()
        self.check()


def new_run(i: int, rng: random.Random, refs: dict[str, ObjectRef]) -> RunSubmitted:
    workflow = rng.choices(list(MIX), weights=list(MIX.values()))[0]
    inputs, params = {}, {}
    if workflow == "content-factory":
        inputs = {"brief": refs["brief"]}
    elif workflow == "support":
        params = {"text": TEXTS[i % len(TEXTS)]}
    elif workflow == "build":
        params = {"plan": PLAN}
    elif workflow == "co-write":
        inputs = {"document": refs["doc"]}
    return RunSubmitted(run_id=f"chaos-{i:05d}", workflow=workflow, inputs=inputs, params=params)


async def submit(r, events: list[RunSubmitted], deadline: float) -> None:
    """XADD the runs in one pipeline; retried while Redis is down (the supervisor drops a duplicate)."""
    while True:
        try:
            pipe = r.pipeline(transaction=False)
            for event in events:
                pipe.xadd(streams.RUNS, encode(event))
            await pipe.execute()
            return
        except REDIS_DOWN:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


class People:
    """Answers the runs that wait for a person, as a person would: once each time they are asked.

    As `baton respond` does (`client.ensure_waiting`, then the response file under the run's
    human/responses/), through one S3 client: a client per answer costs a botocore model load each."""

    def __init__(self, settings: Settings, storage: Storage) -> None:
        self.settings, self.storage = settings, storage
        self.sent: Counter = Counter()  # run -> responses written
        self.busy: set[str] = set()
        self.errors: Counter = Counter()
        self.limit = asyncio.Semaphore(16)
        self.tasks: set[asyncio.Task] = set()
        self.written: dict[str, float] = {}  # response key -> when it was written (epoch seconds)

    def consider(self, run_id: str, core: dict) -> None:
        if core.get("status") != "waiting_for_human" or run_id in self.busy:
            return
        if len(core.get("responses_used") or []) < self.sent[run_id]:
            return  # our answer is on its way (or lost: then the run hangs and is reported lost)
        self.busy.add(run_id)
        task = asyncio.create_task(self.answer(run_id))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def respond(self, run_id: str, approve: bool) -> str:
        await client.ensure_waiting(self.settings, run_id)
        body = {"decision": "approve" if approve else "reject", "text": f"chaos says {approve}"}
        ref = await client.write_response(self.storage, self.settings, run_id, body, sender="chaos")
        return ref.key

    async def answer(self, run_id: str) -> None:
        approve = not (self.sent[run_id] == 0 and int(run_id.rsplit("-", 1)[1]) % 4 == 0)
        try:
            async with self.limit:
                # bounded: a call that hangs on a server being restarted is given up and asked again
                key = await asyncio.wait_for(self.respond(run_id, approve), 10)
            self.written[key] = time.time()
            self.sent[run_id] += 1
        except Exception as exc:  # noqa: BLE001 - Redis or MinIO down, or raced: asked again next poll
            self.errors[type(exc).__name__] += 1
        finally:
            self.busy.discard(run_id)


async def watch(r, pending: set[str], people: People, deadline: float, stall: float | None = None) -> None:
    """Until every run has ended, the deadline, or `stall` seconds without a run ending: read each run's
    status, answer those that wait for a person."""
    last_log = 0.0
    left, moved = len(pending), time.monotonic()
    while pending and time.monotonic() < deadline:
        if len(pending) != left:
            left, moved = len(pending), time.monotonic()
        elif stall is not None and time.monotonic() - moved > stall:
            log(f"no run ended for {stall:g} s: {len(pending)} runs hang")
            return
        ids = list(pending)
        try:
            for start in range(0, len(ids), 1000):
                chunk = ids[start : start + 1000]
                pipe = r.pipeline(transaction=False)
                for run_id in chunk:
                    pipe.hget(streams.run_state(run_id), "core")
                for run_id, raw in zip(chunk, await pipe.execute(), strict=True):
                    core = json.loads(raw) if raw else {}
                    if core.get("status") in ENDED:
                        pending.discard(run_id)
                    else:
                        people.consider(run_id, core)
        except REDIS_DOWN:
            pass
        if time.monotonic() - last_log > 10:
            log(f"{len(pending)} runs not ended")
            last_log = time.monotonic()
        if pending:
            await asyncio.sleep(1)


def _quiet(loop, context) -> None:
    """An S3 client's request cut by a MinIO restart leaves a background task failed with a connection
    error nobody awaits; that is expected here, anything else is printed."""
    if not isinstance(context.get("exception"), ConnectionError):
        loop.default_exception_handler(context)


async def chaos(args) -> dict:
    asyncio.get_running_loop().set_exception_handler(_quiet)
    tmp = Path(tempfile.mkdtemp(prefix="baton-chaos-"))
    port, token = servers.free_port(), secrets.token_hex(8)
    webhook = f"http://127.0.0.1:{port}/minio/events"
    srv = Servers(tmp, webhook, token, cluster=args.cluster, seed=args.seed)
    env = local_env(srv.redis_url, srv.minio.url, WORKFLOWS, port, token)
    env.update(
        BATON_CWD=str(ROOT),
        BATON_RECLAIM_IDLE_MS="2000",
        BATON_MAX_DELIVERIES="10",
        BATON_LOG_LEVEL="WARNING",
    )
    if args.cluster:  # outcomes spread over the shards; a failover loses no acknowledged step
        env.update(BATON_RESULT_PARTITIONS="4", BATON_REDIS_WAIT_REPLICAS="1")
    settings = Settings(**settings_kwargs(env))
    stack = Stack(tmp / "stack", env)
    result = None
    try:
        result = await _run(args, settings, stack, srv)
        return result
    finally:
        if args.keep and result and result["exit_code"]:
            print(f"kept for inspection: {tmp} (REDIS_URL={settings.redis_url}); stop its processes by PID")
            return result  # noqa: B012
        stack.stop_all()
        srv.stop()


async def _run(args, settings: Settings, stack: Stack, srv: Servers) -> dict:
    await init_workspace(settings)
    for name in ["notifier", "supervisor", "supervisor", "router", *["worker"] * args.workers]:
        stack.start(name)
    async with Storage.connect(settings) as storage:
        brief = await storage.put("incoming/brief.md", (ROOT / "examples/briefs/topic.md").read_bytes())
        doc = await storage.put("incoming/doc.md", b"first line\n")
        return await _chaos(args, settings, stack, srv, storage, {"brief": brief, "doc": doc})


async def _chaos(args, settings: Settings, stack: Stack, srv: Servers, storage: Storage, refs: dict) -> dict:
    # bounded: a command on a connection cut by a Redis kill fails and is retried instead of hanging
    r = connect(settings.redis_url, socket_timeout=15, socket_connect_timeout=5)
    rng = random.Random(args.seed)
    runs = [new_run(i, rng, refs) for i in range(args.burst or args.runs)]
    submitted: dict[str, tuple[str, float]] = {}
    monkey, people, stop = Monkey(args, stack, srv), People(settings, storage), asyncio.Event()
    monkey_task = asyncio.create_task(monkey.run(stop))
    started = time.monotonic()
    pending: set[str] = set()
    watcher = None
    try:
        if args.burst:
            log(f"submitting {len(runs)} runs at once")
            now = time.time()
            await submit(r, runs, time.monotonic() + 60)
            submitted = {e.run_id: (e.workflow, now) for e in runs}
            pending = set(submitted)
        else:
            watcher = asyncio.create_task(watch(r, pending, people, time.monotonic() + 10**6))
            for i, event in enumerate(runs):
                at = time.time()
                await submit(r, [event], time.monotonic() + 60)
                submitted[event.run_id] = (event.workflow, at)
                pending.add(event.run_id)
                await asyncio.sleep(1 / args.rate)
                if i and i % 200 == 0:
                    log(f"submitted {i}; kills so far {dict(monkey.kills)}")
            watcher.cancel()
        watching = asyncio.create_task(watch(r, pending, people, time.monotonic() + args.timeout, args.stall))
        await asyncio.wait({watching, monkey_task}, return_when=asyncio.FIRST_COMPLETED)
        if monkey_task.done():
            monkey_task.result()  # raises what stopped the chaos
        await watching
    finally:
        stop.set()
        for task in (monkey_task, watcher):
            if task is not None and not task.done():
                task.cancel()
        await asyncio.gather(*[t for t in (monkey_task, watcher) if t], return_exceptions=True)
    elapsed = time.monotonic() - started
    monkey.calm()
    log(f"chaos over after {elapsed:.0f} s; {args.settle} s quiet for late duplicates")
    await asyncio.sleep(args.settle)
    monkey.check()
    reports = await chaos_report.read_reports(r, submitted)
    patterns = {name: wf.pattern for name, wf in load_workflows(WORKFLOWS).workflows.items()}
    patterns.update(approval="sequential + person", retry="sequential, retried")
    rows = chaos_report.summarise(reports, patterns)
    lost = [await chaos_report.lost_detail(r, rep) for rep in reports if rep.end == "lost"][:20]
    doubles = [{"run_id": rep.run_id, **d} for rep in reports for d in rep.done_twice]
    ended_twice = [rep.run_id for rep in reports if rep.ends > 1]
    await r.aclose()
    total = rows["all"]
    bad = (
        total["lost"]
        + total["failed"]
        + total["cancelled"]
        + total["tasks_done_twice"]
        + total["runs_ended_twice"]
    )
    return {
        "schedule": f"burst {args.burst}" if args.burst else f"steady {args.runs} at {args.rate}/s",
        "redis": "Valkey cluster: 3 masters + 3 replicas, WAIT 1"
        if args.cluster
        else "one server, AOF always",
        "exit_code": 1 if bad else 0,
        "per_workflow": rows,
        "elapsed_s": round(elapsed, 1),
        "kills": dict(monkey.kills),
        "faults_fired": dict(monkey.fired),
        "faults_not_reached": dict(monkey.not_fired),
        "exited_on_their_own": monkey.unexpected,
        "responses": {
            "written": sum(people.sent.values()),
            "errors": dict(people.errors),
            "applied_after": chaos_report.response_latency(reports, people.written),
        },
        "workers": args.workers,
        "supervisors": 2,
        "seed": args.seed,
        "lost_runs": lost,
        "done_twice": doubles[:50],
        "ended_twice": ended_twice[:50],
    }


def _interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt


def main() -> None:
    # SIGTERM (timeout, kill PID) unwinds like Ctrl-C, so the servers and services it started are stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=1000, help="Runs on the steady schedule.")
    parser.add_argument("--burst", type=int, default=0, help="Submit this many runs at once instead.")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--rate", type=float, default=40.0, help="Runs submitted per second (steady).")
    parser.add_argument("--timeout", type=float, default=900.0, help="Seconds to wait for the last run.")
    parser.add_argument("--minio-restarts", type=int, default=2)
    parser.add_argument("--redis-restarts", type=int, default=2, help="(with --cluster: master failovers)")
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="Redis as a Valkey cluster (3 masters, a replica each; the services wait for 1 replica): a "
        "Redis restart is then a master killed, its replica taking over, and the old master rejoining.",
    )
    parser.add_argument("--fault-wait", type=float, default=20.0, help="Seconds an armed process may live.")
    parser.add_argument("--max-unexpected", type=int, default=100, help="Stop after this many crashes.")
    parser.add_argument(
        "--stall", type=float, default=120.0, help="Stop waiting after this long without a run ending."
    )
    parser.add_argument("--settle", type=float, default=5.0, help="Quiet seconds before counting.")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="Leave everything running if anything is wrong.")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "chaos.json")
    args = parser.parse_args()
    result = asyncio.run(chaos(args))
    print()
    print(chaos_report.table(result["per_workflow"]))
    for name, row in result["per_workflow"].items():
        for reason, n in row["failure_reasons"].items():
            print(f"  {name} failed x{n}: {reason}")
    for key in ("schedule", "elapsed_s", "kills", "faults_fired", "faults_not_reached", "responses"):
        print(f"{key}: {result[key]}")
    print(f"exited on their own: {len(result['exited_on_their_own'])}")
    for gone in result["exited_on_their_own"][:10]:
        state = "serving" if gone["was_ready"] else "starting"
        print(f"  {gone['handle']} (code {gone['code']}, while {state}): {gone['last_line'][:160]}")
    for lost in result["lost_runs"]:
        print(
            f"lost {lost['run_id']} ({lost['workflow']}, {lost['status']}): "
            + " | ".join(lost["events"][-3:])
        )
    for double in result["done_twice"][:10]:
        print(
            f"done twice: {double['run_id']} {double['task_id']} attempt {double['attempt']}: {double['by']}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"written to {args.out}; exit code {result['exit_code']}")
    sys.exit(result["exit_code"])


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
