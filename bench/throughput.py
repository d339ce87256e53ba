"""Scenarios 1, 2 and 5: single-hop throughput of no-op tasks, Baton and the baselines, on one Redis server.

For each system and process count: empty Redis, fill the queue with N tasks (not timed), start the
consumer processes, sample completions until the N-th, stop the processes by PID. See `common.py` for the
measurement window. Baton's completions are counted by a stand-in for the supervisor's read: a consumer
group on `baton:results` that reads every TaskStarted / TaskCompleted event as JSON (the real supervisor
would also update the run's state for each one, which is not what scenario 1 measures).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

from bench.baselines import counter as done_counter
from bench.baselines import raw
from bench.common import ROOT, Procs, Window, cpu_seconds, descendants, machine_busy_seconds, python
from shared import streams
from shared.broker import encode
from shared.events import TaskAssigned

BENCH_WORKFLOWS = Path(__file__).resolve().parent / "workflows.yaml"
AGENT = "noop"
STAND_IN_GROUP = "bench-supervisor"
CPU_EVERY = 0.05


@dataclass
class Env:
    """What a scenario needs to reach the servers, and where processes log."""

    redis_url: str
    s3_url: str
    redis_pid: int
    logdir: Path

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def baton_env(self, consumer: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        from baton import servers

        return {
            "REDIS_URL": self.redis_url,
            "S3_ENDPOINT_URL": self.s3_url,
            "S3_ACCESS_KEY": servers.MINIO_USER,
            "S3_SECRET_KEY": servers.MINIO_PASSWORD,
            "BATON_WORKFLOWS": str(BENCH_WORKFLOWS),
            "BATON_AGENTS": AGENT,
            "BATON_CONSUMER": consumer,
            "BATON_LOG_FORMAT": "json",
            **(extra or {}),
        }


class CpuTrace:
    """CPU seconds of the consumer processes (with their children) and of Redis, sampled over time."""

    def __init__(self, procs: Procs, redis_pid: int) -> None:
        self.procs, self.redis_pid = procs, redis_pid
        self.samples: list[tuple[float, float, float]] = []
        self.last = 0.0
        self._tree: list[int] = []
        self._tree_at = 0.0

    def maybe_sample(self, now: float, force: bool = False) -> None:
        if force or now - self.last >= CPU_EVERY:
            self.last = now
            if force or now - self._tree_at > 1.0:  # the process tree (a /proc scan) once a second
                self._tree_at, self._tree = now, [p for root in self.procs.pids for p in descendants(root)]
            self.samples.append(
                (
                    now,
                    sum(cpu_seconds(p) for p in self._tree),
                    cpu_seconds(self.redis_pid),
                    cpu_seconds(os.getpid()),
                    machine_busy_seconds(),
                )
            )

    def between(self, start: float, end: float) -> tuple[float, float, float, float]:
        """CPU seconds from start to end: consumers, Redis, this process (the reader), the whole machine."""

        def at(t: float) -> tuple[float, ...]:
            before = [s for s in self.samples if s[0] <= t]
            return (before[-1] if before else self.samples[0])[1:]

        first, last = at(start), at(end)
        return tuple(b - a for a, b in zip(first, last, strict=True))  # type: ignore[return-value]


def _finish(window: Window, cpu: CpuTrace, processes: int, extra: dict) -> dict:
    result = window.result(processes)
    if result["ok"]:
        end = window.done_at
        start = end - result["window_s"]
        workers_cpu, redis_cpu, reader_cpu, machine_cpu = cpu.between(start, end)
        seconds = result["window_s"]
        result["consumer_cpu_cores"] = round(workers_cpu / seconds, 2)
        result["redis_cpu_cores"] = round(redis_cpu / seconds, 2)
        result["reader_cpu_cores"] = round(reader_cpu / seconds, 2)
        # Anything else that ran on the machine meanwhile (another test run would skew every figure).
        result["other_cpu_cores"] = round(
            max(0.0, machine_cpu - workers_cpu - redis_cpu - reader_cpu) / seconds, 2
        )
        result["consumer_cpu_us_per_task"] = round(workers_cpu / result["window_tasks"] * 1e6, 1)
    result.update(extra)
    return result


def _read_results(
    client: redis.Redis, stream: str, window: Window, procs: Procs, cpu: CpuTrace, timeout: float
) -> Counter:
    """The stand-in supervisor: read result events through a consumer group, acknowledge, count."""
    types: Counter = Counter()
    deadline = time.time() + timeout
    completed = 0
    while window.done_at is None and time.time() < deadline:
        reply = client.xreadgroup(STAND_IN_GROUP, "bench", {stream: ">"}, count=2000, block=100)
        now = time.time()
        if reply:
            ids = []
            for entry_id, fields in reply[0][1]:
                ids.append(entry_id)
                event = json.loads(fields[b"__data__"])
                kind = event.get("type")
                types[kind] += 1
                if kind == "task.completed":
                    completed += 1
                    window.first.setdefault(event.get("sender", "?"), now)
                elif kind == "task.failed":
                    raise RuntimeError(f"a benchmark task failed: {event}")
            client.xack(stream, STAND_IN_GROUP, *ids)
        window.add(now, completed)
        cpu.maybe_sample(now)
        if not reply:
            procs.check_alive()
        elif len(reply[0][1]) < 100:
            time.sleep(0.002)  # a trickle: read less often rather than take CPU from the consumers
    cpu.maybe_sample(time.time(), force=True)
    return types


def _poll_counter(
    client: redis.Redis,
    window: Window,
    procs: Procs,
    cpu: CpuTrace,
    timeout: float,
    stream: str | None = None,
) -> None:
    """Sample the completion count: the baselines' counter, or the length of a results stream."""
    deadline = time.time() + timeout
    last_check = 0.0
    while window.done_at is None and time.time() < deadline:
        count = client.xlen(stream) if stream else int(client.get(done_counter.DONE_KEY) or 0)
        now = time.time()
        window.add(now, count)
        cpu.maybe_sample(now)
        if now - last_check > 0.5:
            last_check = now
            procs.check_alive()
        time.sleep(0.002)
    cpu.maybe_sample(time.time(), force=True)
    for name, t in client.hgetall(done_counter.FIRST_KEY).items():
        window.first[name.decode()] = float(t)


def _timeout(n: int) -> float:
    return max(60.0, n / 250)


def baton(
    env: Env,
    n: int,
    processes: int,
    label: str,
    extra_env: dict[str, str] | None = None,
    traceparent: Callable[[int], str | None] | None = None,
) -> dict:
    """The real worker runtime (`python -m services.worker`) hosting a no-op agent. `traceparent(i)`: the
    trace context task i carries, as if a traced supervisor had sent it (scenario `tracing`)."""
    client = env.client()
    client.flushall()
    stream = streams.agent_stream(AGENT)
    client.xgroup_create(stream, AGENT, id="0", mkstream=True)
    client.xgroup_create(streams.results_stream(0), STAND_IN_GROUP, id="0", mkstream=True)
    for start in range(0, n, 1000):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(n, start + 1000)):
            task = TaskAssigned(
                run_id=f"bench-{i}",  # one run per task: no per-run work is shared between tasks
                task_id=f"bench-{i}.0.{AGENT}",
                workflow="bench",
                agent=AGENT,
                output_prefix=f"runs/bench-{i}/work/",
                sender="bench",
                traceparent=traceparent(i) if traceparent else None,
            )
            pipe.xadd(stream, encode(task))
        pipe.execute()
    procs = Procs(env.logdir / f"{label}-{processes}")
    cpu = CpuTrace(procs, env.redis_pid)
    window = Window(n)
    try:
        for i in range(processes):
            name = f"bench-w{i + 1}"
            procs.start(name, python("-m", "services.worker"), env.baton_env(name, extra_env))
        types = _read_results(client, streams.results_stream(0), window, procs, cpu, _timeout(n))
        time.sleep(0.2)  # the last acknowledgements follow the last results
        pending = client.xpending(stream, AGENT)["pending"]
    finally:
        procs.stop()
    result = _finish(
        window,
        cpu,
        processes,
        {
            "events": dict(types),
            "unacknowledged_after": pending,
            "completions_counted_by": "stand-in supervisor: XREADGROUP on baton:results, JSON per event",
        },
    )
    if result["ok"] and types.get("task.started", 0) < n:
        result["warning"] = f"only {types.get('task.started', 0)} TaskStarted events for {n} tasks"
    return result


def raw_loop(env: Env, n: int, processes: int) -> dict:
    client = env.client()
    client.flushall()
    _run_module(env, "raw", "bench.baselines.raw", n)
    procs = Procs(env.logdir / f"raw-{processes}")
    cpu = CpuTrace(procs, env.redis_pid)
    window = Window(n)
    try:
        for i in range(processes):
            procs.start(
                f"raw-{i + 1}", python("-m", "bench.baselines.raw", "consume", f"raw-{i + 1}"), _env(env)
            )
        _poll_counter(client, window, procs, cpu, _timeout(n), stream=raw.RESULTS)
    finally:
        procs.stop()
    return _finish(
        window, cpu, processes, {"completions_counted_by": "XLEN of its results stream (nobody reads them)"}
    )


def _env(env: Env) -> dict[str, str]:
    return {"BENCH_REDIS_URL": env.redis_url}


def _run_module(env: Env, label: str, module: str, n: int) -> float:
    """Fill the queue with the library's own client, in its own process; returns the seconds it took."""
    started = time.perf_counter()
    log = env.logdir / f"{label}-prefill.log"
    env.logdir.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.run(
            python("-m", module, "prefill", str(n)),
            env={**os.environ, **_env(env)},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            timeout=600,
            check=False,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"{module} prefill failed:\n{log.read_text()[-3000:]}")
    return time.perf_counter() - started


BASELINES = {
    "celery": (
        "bench.baselines.celery_app",
        lambda k: python(
            "-m",
            "celery",
            "-A",
            "bench.baselines.celery_app",
            "worker",
            "-P",
            "prefork",
            "-c",
            str(k),
            "-Q",
            "bench",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            "WARNING",
        ),
    ),
    "dramatiq": (
        "bench.baselines.dramatiq_app",
        lambda k: python(
            "-m",
            "dramatiq",
            "bench.baselines.dramatiq_app",
            "--processes",
            str(k),
            "--threads",
            "8",
            "--queues",
            "bench",
        ),
    ),
    "taskiq": (
        "bench.baselines.taskiq_app",
        lambda k: python("-m", "taskiq", "worker", "bench.baselines.taskiq_app:broker", "--workers", str(k)),
    ),
}


def baseline(env: Env, name: str, n: int, processes: int) -> dict:
    module, command = BASELINES[name]
    client = env.client()
    client.flushall()
    prefill_s = _run_module(env, name, module, n)
    procs = Procs(env.logdir / f"{name}-{processes}")
    cpu = CpuTrace(procs, env.redis_pid)
    window = Window(n)
    try:
        procs.start(name, command(processes), _env(env))
        _poll_counter(client, window, procs, cpu, _timeout(n))
    finally:
        procs.stop()
    return _finish(window, cpu, processes, {"prefill_s": round(prefill_s, 2)})
