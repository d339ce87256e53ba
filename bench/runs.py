"""Whole-run scenarios: what a user's job costs, not one hop; on one Redis, the peers in the same run.

6. Burst: N runs of a 3-stage no-op workflow published at once. Baton: plain XADDs of `RunSubmitted` to
   `baton:runs` (the README's wire format), on the full stack with one supervisor; a run is done at its
   `run.completed`. Peers: Dramatiq `pipeline`, Celery `chain` and Taskiq + taskiq-pipelines of 3 no-op
   tasks, published by each library's own client; a run is done when its last task has run. Every system
   gets the same worker process count and is warmed up first (a few runs, not timed). Runs/s = N / (last
   run's end - first publish), every time stamped by the process that did it (one machine, one clock).
7. Sustained sweep: runs submitted at a steady rate, the rate stepped up; per hop (stage assigned -> next
   stage assigned, or -> run completed) p50/p99 from each run's own events. A supervisor's capacity is the
   highest rate whose p99 hop stays under 20 ms; for 1 and 2 supervisor replicas in one group.
8. Fan-out: one hierarchical run whose planner writes W independent no-op subtasks for one worker agent,
   then an aggregator. Wall time, and the supervisor's CPU seconds per subtask (from /proc). Beside it a
   Celery `chord` of W no-op tasks and a callback. Each width has a time limit and reports a failure.

Runs are watched at almost no cost to the machine while they are worked off, as the peers' harnesses
watch theirs (a counter): the harness polls how many runs have ended (the supervisor's status indexes,
three ZCARDs every 20 ms), and once all have, reads each run's end from its own stream (its terminal
event's time, stamped by the supervisor). A first version read and parsed every outcome meanwhile and took
about 0.3 of a core from the system it measured.
"""

from __future__ import annotations

import json
import os
import re
import resource
import secrets
import statistics
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import redis
import yaml

from baton.dev import settings_kwargs
from bench import stack as full_stack
from bench.baselines import counter as done_counter
from bench.common import ROOT, Procs, cpu_seconds, descendants, machine_busy_seconds, percentile, python
from shared import streams
from shared.broker import DATA_FIELD, encode
from shared.events import TERMINAL_RUN_EVENTS, RunSubmitted
from shared.settings import Settings

HOP_BUDGET_MS = 20.0  # a supervisor's capacity: the highest rate whose p99 hop stays under this
STAGES = 3
WARM_RUNS = 20
DATA = DATA_FIELD.encode()
PEERS = ("dramatiq", "celery", "taskiq")
RATES = (25, 50, 100, 200, 300, 400, 500, 650, 800, 1000, 1250, 1500, 2000)
WIDTHS = (100, 1000, 10_000)
ENDED = ("completed", "failed", "cancelled")


@dataclass
class Servers:
    """The shared Redis and MinIO, and where scenarios keep their logs and stacks."""

    redis_url: str
    s3_url: str
    notifier_port: int
    token: str
    work: Path

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def clean(self) -> redis.Redis:
        """Each system starts on an empty Redis (the bucket keeps old runs' objects: they are never read)."""
        client = self.client()
        client.flushall()
        return client

    def settings(self) -> Settings:
        """A client's settings for the stacks on these servers."""
        env = full_stack.stack_env(self.redis_url, self.s3_url, self.notifier_port, self.token)
        return Settings(**settings_kwargs(env))

    def stack(self, name: str, **kw) -> full_stack.Stack:
        return full_stack.start_stack(
            self.work / name, self.redis_url, self.s3_url, self.notifier_port, self.token, **kw
        )


def _ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def _cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(p) for root in pids for p in descendants(root))


def _redis_cpu(client: redis.Redis) -> float:
    """CPU seconds the Redis server has used (its own INFO: user + system, all threads)."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _whole_cpu(result: dict, processes_s: float, redis_s: float) -> None:
    """What a burst cost the machine, per completed run: the system's own processes and the Redis server
    (the publisher, and the shared MinIO, left out for every system alike)."""
    result["redis_cpu_s"] = round(redis_s, 2)
    result["cpu_ms_per_run"] = round((processes_s + redis_s) / max(result["completed"], 1) * 1000, 3)


def _pids(stack: full_stack.Stack, service: str) -> list[int]:
    return [p.pid for h, p in stack.procs.items() if h.startswith(service + "-")]


class Elsewhere:
    """Cores the rest of the machine used meanwhile: everything but this process and what it started (the
    servers, the stacks, the peers' workers, and publishers that have exited). Above 0.25 a figure is low."""

    def __enter__(self) -> Elsewhere:
        self.start = (time.time(), machine_busy_seconds(), self._ours())
        return self

    @staticmethod
    def _ours() -> float:
        gone = resource.getrusage(resource.RUSAGE_CHILDREN)
        return _cpu([os.getpid()]) + gone.ru_utime + gone.ru_stime

    def __exit__(self, *exc) -> None:
        t0, machine0, ours0 = self.start
        other = (machine_busy_seconds() - machine0) - (self._ours() - ours0)
        self.cores = round(max(other, 0.0) / max(time.time() - t0, 1e-6), 2)


def _log_problems(stack: full_stack.Stack, service: str) -> dict[str, int]:
    """Error and warning lines in a service's logs (e.g. a handler that failed under load)."""
    out = {"error": 0, "warning": 0}
    for handle in stack.procs:
        if handle.startswith(service + "-"):
            text = stack.log_path(handle).read_bytes()
            for level in out:
                out[level] += len(re.findall(rb'"level": "' + level.encode() + rb'"', text))
    return out


class RunWatch:
    """Which of `run_ids` have ended, and how (terminal event type, its created_at), without polling each."""

    def __init__(self, client: redis.Redis, run_ids: list[str], stages: int = STAGES) -> None:
        self.client = client
        self.pending = set(run_ids)
        self.stages = stages
        self.completed: dict[str, int] = {}
        self.candidates: set[str] = set()
        self.ended: dict[str, tuple[str, float]] = {}
        last = client.xrevrange(streams.results_stream(0), count=1)
        self.cursor = last[0][0] if last else b"0-0"  # only what comes after this point
        self.swept_at = self.checked_at = time.time()

    def _read(self, block_ms: int | None) -> None:
        reply = self.client.xread({streams.results_stream(0): self.cursor}, count=5000, block=block_ms)
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                self.cursor = entry_id
                raw = fields[DATA]
                finished = b'"task.completed"' in raw
                if not finished and b'"task.failed"' not in raw:
                    continue
                run_id = json.loads(raw).get("run_id")
                if run_id not in self.pending:
                    continue
                if finished:
                    self.completed[run_id] = self.completed.get(run_id, 0) + 1
                if not finished or self.completed[run_id] >= self.stages:
                    self.candidates.add(run_id)

    def _check(self, run_ids) -> None:
        """Which of `run_ids` have ended, and when (their end event's time): each run's last 3 events (a
        late note may follow the end); a run whose status says it ended but whose end is further back (a
        co-editing run moves on as each version is notified, so its turns' own outcomes can arrive after
        its end, six of them) is read whole."""
        run_ids = list(run_ids)
        for start in range(0, len(run_ids), 500):
            chunk = run_ids[start : start + 500]
            pipe = self.client.pipeline(transaction=False)
            for run_id in chunk:
                pipe.xrevrange(streams.run_events(run_id), count=3)
            unseen = [r for r, last in zip(chunk, pipe.execute(), strict=True) if not self._end(r, last)]
            if unseen:
                pipe = self.client.pipeline(transaction=False)
                for run_id in unseen:
                    for status in ENDED:
                        pipe.zscore(streams.run_status_index(status), run_id)
                scores = pipe.execute()
                for i, run_id in enumerate(unseen):
                    if any(score is not None for score in scores[i * len(ENDED) : (i + 1) * len(ENDED)]):
                        self._end(run_id, self.client.xrevrange(streams.run_events(run_id)))

    def _end(self, run_id: str, entries) -> bool:
        """Whether `entries` (newest first) hold the run's end; if so it is recorded."""
        for _id, fields in entries:
            event = json.loads(fields[DATA])
            if event.get("type") in TERMINAL_RUN_EVENTS:
                self.ended[run_id] = (event["type"], _ts(event["created_at"]))
                self.pending.discard(run_id)
                self.candidates.discard(run_id)
                return True
        return False

    def poll(self, block_ms: int | None = 20) -> None:
        """Read what the workers reported since the last call (waiting up to `block_ms`; None: not at all)."""
        self._read(block_ms)
        if self.candidates and time.time() - self.checked_at >= 0.05:  # a late run.completed: not too often
            self.checked_at = time.time()
            self._check(self.candidates)
        if time.time() - self.swept_at > 5.0:  # the safety net: a run that failed before any task ran
            self.swept_at = time.time()
            self._check(self.pending)

    def wait(self, timeout: float) -> bool:
        """Until every run has ended (True) or `timeout` seconds have passed (False)."""
        deadline = time.time() + timeout
        while self.pending and time.time() < deadline:
            self.poll()
        if self.pending:
            self._check(self.pending)
        return not self.pending

    def ended_count(self) -> int:
        """Runs that have ended, all told: the supervisor's status indexes (`baton runs` reads them)."""
        pipe = self.client.pipeline(transaction=False)
        for status in ENDED:
            pipe.zcard(streams.run_status_index(status))
        return sum(pipe.execute())

    def wait_counted(self, timeout: float, before: int) -> bool:
        """`wait` for a burst, at almost no cost to the machine while the runs are worked off (the peers'
        harnesses poll a counter, too): poll how many runs have ended every 20 ms until all of them have
        (`before`: the count before they were submitted), then read each one's end once."""
        deadline = time.time() + timeout
        while self.ended_count() - before < len(self.pending) and time.time() < deadline:
            time.sleep(0.02)
        self._check(self.pending)
        return self.wait(max(deadline - time.time(), 0))


def _submit_all(client: redis.Redis, entries: list[dict]) -> None:
    for start in range(0, len(entries), 1000):
        pipe = client.pipeline(transaction=False)
        for fields in entries[start : start + 1000]:
            pipe.xadd(streams.RUNS, fields)
        pipe.execute()


def _runs(
    prefix: str, n: int, workflow: str = "relay", params: dict | None = None, inputs: dict | None = None
) -> dict[str, dict]:
    """Encoded `RunSubmitted` entries by run id (encoded before the clock starts)."""
    tag = secrets.token_hex(3)
    out = {}
    for i in range(n):
        run_id = f"{prefix}-{tag}-{i:05d}"
        event = RunSubmitted(
            run_id=run_id, workflow=workflow, params=params or {}, inputs=inputs or {}, sender="bench"
        )
        out[run_id] = encode(event)
    return out


def _warm(client: redis.Redis) -> None:
    runs = _runs("warm", WARM_RUNS)
    watch = RunWatch(client, list(runs))
    _submit_all(client, list(runs.values()))
    if not watch.wait(60):
        raise RuntimeError(f"{len(watch.pending)} of {WARM_RUNS} warm-up runs did not end in 60 s")


def _summary(seconds: list[float]) -> dict:
    return {
        "p50_s": round(percentile(seconds, 50), 3) if seconds else None,
        "p90_s": round(percentile(seconds, 90), 3) if seconds else None,
        "max_s": round(max(seconds), 3) if seconds else None,
    }


# --- 6. burst -------------------------------------------------------------------------------------------


def baton_burst(
    srv: Servers,
    n: int,
    workers: int,
    timeout: float,
    supervisors: int = 1,
    workflow: str = "relay",
    params: dict | None = None,
    workflows: Path = full_stack.WORKFLOWS,
    extra: dict[str, str] | None = None,
    inputs: dict | None = None,
) -> dict:
    """`n` runs of `workflow` (with `params` and `inputs`, from the file `workflows`; the services'
    environment plus `extra`) published at once; runs/s, when they ended, CPU per run."""
    client = srv.clean()
    stack = srv.stack(
        f"burst-{workflow}-{supervisors}",
        workers=workers,
        supervisors=supervisors,
        workflows=workflows,
        extra=extra,
    )
    try:
        _warm(client)
        runs = _runs("burst", n, workflow=workflow, params=params, inputs=inputs)
        watch = RunWatch(client, list(runs))
        before = watch.ended_count()
        supervisor, worker = _pids(stack, "supervisor"), _pids(stack, "worker")
        cpu0 = (_cpu(supervisor), _cpu(worker), _cpu(list(p.pid for p in stack.procs.values())))
        redis0 = _redis_cpu(client)
        with Elsewhere() as elsewhere:
            t0 = time.time()
            _submit_all(client, list(runs.values()))
            published = time.time()
            finished = watch.wait_counted(timeout, before)
            cpu1 = (_cpu(supervisor), _cpu(worker), _cpu(list(p.pid for p in stack.procs.values())))
            redis1 = _redis_cpu(client)
        problems = _log_problems(stack, "supervisor")
    finally:
        stack.stop_all()
    done = [t for kind, t in watch.ended.values() if kind == "run.completed"]
    failed = len(watch.ended) - len(done)
    end = max(done) if done else time.time()
    seconds = max(end - t0, 1e-6)
    result = {
        "ok": finished and not failed,
        "runs": n,
        "completed": len(done),
        "failed": failed,
        "unfinished": len(watch.pending),
        "runs_per_s": round(len(done) / seconds, 1),
        "seconds": round(seconds, 3),
        "publish_s": round(published - t0, 3),
        "run_end_after_publish": _summary([t - t0 for t in done]),
        "supervisor_cpu_s": round(cpu1[0] - cpu0[0], 2),
        "supervisor_cpu_ms_per_run": round((cpu1[0] - cpu0[0]) / max(len(done), 1) * 1000, 3),
        "worker_cpu_s": round(cpu1[1] - cpu0[1], 2),
        "stack_cpu_s": round(cpu1[2] - cpu0[2], 2),
        "supervisor_log": problems,
        "other_cpu_cores": elsewhere.cores,
        "workers": workers,
        "supervisors": supervisors,
        "first_run_id": next(iter(runs)),  # the others: its number counted up (`_runs`)
        "done_at": "run.completed (created_at, stamped by the supervisor)",
    }
    _whole_cpu(result, cpu1[2] - cpu0[2], redis1 - redis0)
    if not finished:
        result["error"] = f"{len(watch.pending)} of {n} runs had not ended after {timeout:g} s"
        result["unfinished_sample"] = sorted(watch.pending)[:5]
    if failed:
        result["error"] = (result.get("error", "") + f"; {failed} of {n} runs failed").lstrip("; ")
        result["failed_sample"] = sorted(
            r for r, (kind, _t) in watch.ended.items() if kind != "run.completed"
        )[:5]
    return result


PEER_WORKERS = {
    "dramatiq": lambda k: python(
        "-m",
        "dramatiq",
        "bench.baselines.dramatiq_runs",
        "--processes",
        str(k),
        "--threads",
        "8",
        "--queues",
        "bench-runs",
    ),
    "celery": lambda k: python(
        "-m",
        "celery",
        "-A",
        "bench.baselines.celery_runs",
        "worker",
        "-P",
        "prefork",
        "-c",
        str(k),
        "-Q",
        "bench-runs",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-l",
        "WARNING",
    ),
    "taskiq": lambda k: python(
        "-m", "taskiq", "worker", "bench.baselines.taskiq_runs:broker", "--workers", str(k)
    ),
}
PEER_LABELS = {
    "dramatiq": "Dramatiq pipeline, 8 threads/process",
    "celery": "Celery chain, prefork",
    "taskiq": "Taskiq + taskiq-pipelines",
}


def _publisher(srv: Servers, name: str, command: str, count: int, timeout: float) -> None:
    """Publish with the library's own client, in its own process (it stamps its start and end in Redis)."""
    log = srv.work / "logs" / f"{name}-publish.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.run(
            python("-m", f"bench.baselines.{name}_runs", command, str(count)),
            env={**os.environ, "BENCH_REDIS_URL": srv.redis_url},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            timeout=timeout,
            check=False,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"{name} publish {count} failed:\n{log.read_text()[-3000:]}")


def _wait_count(client: redis.Redis, n: int, procs: Procs, deadline: float) -> int:
    count = 0
    while time.time() < deadline:
        count = int(client.get(done_counter.DONE_KEY) or 0)
        if count >= n:
            break
        procs.check_alive()
        time.sleep(0.01)
    return count


def _reset_counters(client: redis.Redis) -> None:
    client.delete(
        done_counter.DONE_KEY, done_counter.LAST_KEY, done_counter.PUBLISH_KEY, done_counter.CHORD_DONE_KEY
    )


def peer_burst(srv: Servers, name: str, n: int, workers: int, timeout: float) -> dict:
    client = srv.clean()
    procs = Procs(srv.work / "logs" / f"burst-{name}")
    try:
        procs.start(name, PEER_WORKERS[name](workers), {"BENCH_REDIS_URL": srv.redis_url})
        _publisher(srv, name, "publish", WARM_RUNS, 120)
        if _wait_count(client, WARM_RUNS, procs, time.time() + 60) < WARM_RUNS:
            raise RuntimeError(f"{name}: the warm-up runs did not finish in 60 s")
        _reset_counters(client)
        cpu0, redis0 = _cpu(procs.pids), _redis_cpu(client)
        with Elsewhere() as elsewhere:
            _publisher(srv, name, "publish", n, timeout)
            publish = {k.decode(): float(v) for k, v in client.hgetall(done_counter.PUBLISH_KEY).items()}
            count = _wait_count(client, n, procs, publish["start"] + timeout)
            time.sleep(0.02)  # the counters' last flush
            cpu1, redis1 = _cpu(procs.pids), _redis_cpu(client)
        ends = [float(v) for v in client.hvals(done_counter.LAST_KEY)]
    finally:
        procs.stop()
    end = max(ends) if ends else time.time()
    seconds = max(end - publish["start"], 1e-6)
    result = {
        "ok": count >= n,
        "runs": n,
        "completed": count,
        "runs_per_s": round(min(count, n) / seconds, 1),
        "seconds": round(seconds, 3),
        "publish_s": round(publish["end"] - publish["start"], 3),
        "worker_cpu_s": round(cpu1 - cpu0, 2),
        "other_cpu_cores": elsewhere.cores,
        "workers": workers,
        "done_at": "the last task of the run finished (its own clock, flushed every 5 ms)",
    }
    _whole_cpu(result, cpu1 - cpu0, redis1 - redis0)
    if count < n:
        result["error"] = f"{n - count} of {n} runs had not finished after {timeout:g} s"
    return result


def burst(
    srv: Servers,
    n: int,
    workers: int,
    peers: list[str],
    timeout: float,
    supervisors: list[int] = (1,),
    rounds: int = 1,
) -> dict:
    """Baton with each count of supervisor replicas (`baton`, `baton-2`...), then each peer, `rounds` times,
    every other round in the reverse order (so a VM that speeds up or slows down over the scenario does not
    favour whoever goes first). Each system's figures are those of its median round; the ratios are one
    supervisor's runs/s over each peer's within a round (paired), and their median over the rounds."""
    out: dict = {"runs": n, "stages": STAGES, "workers": workers, "rounds": rounds, "systems": {}}
    systems = [
        ("baton" if k == 1 else f"baton-{k}", lambda k=k: baton_burst(srv, n, workers, timeout, k))
        for k in supervisors
    ]
    systems += [(p, lambda p=p: peer_burst(srv, p, n, workers, timeout)) for p in peers]
    per_round: dict[str, list[dict]] = {name: [] for name, _run in systems}
    for i in range(rounds):
        for name, run in systems if i % 2 == 0 else systems[::-1]:
            label = f", round {i + 1} of {rounds}" if rounds > 1 else ""
            print(f"- burst of {n:,} runs{label}: {name}", end="", flush=True)
            r = _attempt(run)
            per_round[name].append(r)
            failed = f": FAILED {r.get('error', '')[:300]}"
            print(f": {r['runs_per_s']:,.0f} runs/s" if r.get("ok") else failed)
    for name, results in per_round.items():
        out["systems"][name] = _median_round(results)
    out.update(burst_ratios(per_round))
    return out


def _median_round(results: list[dict]) -> dict:
    """The round whose runs/s is the median of the rounds that succeeded (the lower one of an even count),
    with every round's runs/s beside it; the first failure if none succeeded; failed rounds are counted."""
    ok = sorted((r for r in results if r.get("ok")), key=lambda r: r["runs_per_s"])
    chosen = dict(ok[(len(ok) - 1) // 2] if ok else results[0])
    if len(results) > 1:
        chosen["rounds_runs_per_s"] = [r["runs_per_s"] if r.get("ok") else None for r in results]
        chosen["failed_rounds"] = len(results) - len(ok)
        errors = [r.get("error", "failed") for r in results if not r.get("ok")]
        if errors and ok:  # (a failure in any round is reported, even when the median round succeeded)
            chosen["round_error"] = errors[0]
    return chosen


def burst_ratios(per_round: dict[str, list[dict]]) -> dict:
    """Baton's runs/s over each peer's, per round (both must have succeeded in that round), and the median."""
    baton = per_round.get("baton", [])
    paired: dict[str, list[float]] = {}
    for peer, results in per_round.items():
        if peer.startswith("baton"):
            continue
        paired[peer] = [
            round(b["runs_per_s"] / r["runs_per_s"], 2)
            for b, r in zip(baton, results, strict=False)
            if b.get("ok") and r.get("ok") and r["runs_per_s"]
        ]
    return {
        "baton_over_peer": {p: round(statistics.median(v), 2) for p, v in paired.items() if v},
        "baton_over_peer_rounds": {p: v for p, v in paired.items() if v},
    }


def _attempt(run) -> dict:
    try:
        return run()
    except Exception as exc:  # one failed system must not lose the others' figures
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000], "runs_per_s": 0}


# --- 7. sustained sweep ---------------------------------------------------------------------------------


def _events(client: redis.Redis, run_ids: list[str]) -> dict[str, list[dict]]:
    out = {}
    for start in range(0, len(run_ids), 200):
        chunk = run_ids[start : start + 200]
        pipe = client.pipeline(transaction=False)
        for run_id in chunk:
            pipe.xrange(streams.run_events(run_id))
        for run_id, entries in zip(chunk, pipe.execute(), strict=True):
            out[run_id] = [json.loads(f[DATA]) for _i, f in entries]
    return out


def _stages(events: list[dict]) -> tuple[dict[int, float], dict[int, float], float | None]:
    """Per stage, when its (first) task was assigned and when it (first) completed; when the run did."""
    assigned: dict[int, float] = {}
    completed: dict[int, float] = {}
    stage_of: dict[str, int] = {}  # task id -> its stage (a completion names its task, not its stage)
    end = None
    for e in events:
        if e["type"] == "task.assigned":
            assigned.setdefault(e["stage"], _ts(e["created_at"]))
            stage_of[e.get("task_id", "")] = e["stage"]
        elif e["type"] == "task.completed" and e.get("task_id") in stage_of:
            completed.setdefault(stage_of[e["task_id"]], _ts(e["created_at"]))
        elif e["type"] == "run.completed":
            end = _ts(e["created_at"])
    return assigned, completed, end


def _to_next(events: list[dict], since_completed: bool) -> list[float]:
    assigned, completed, end = _stages(events)
    if end is None:
        return []
    stages = sorted(assigned)
    nexts = [assigned[s] for s in stages[1:]] + [end]
    since = completed if since_completed else assigned
    return [b - since[s] for s, b in zip(stages, nexts, strict=True) if s in since]


def hops(events: list[dict]) -> list[float]:
    """Seconds each stage added: stage assigned -> next stage assigned (the last: -> run completed)."""
    return _to_next(events, since_completed=False)


def decisions(events: list[dict]) -> list[float]:
    """The supervisor's part of each hop: a stage's task completed -> the next stage assigned (the last: ->
    run completed). What `baton_supervisor_hop_seconds` measures (an event's creation to the end of the
    supervisor's decision on it): the whole hop (`hops`) adds the worker's pickup and its handler."""
    return _to_next(events, since_completed=True)


def _step(
    client: redis.Redis,
    rate: float,
    seconds: float,
    runs: dict[str, dict] | None = None,
    samples: dict[str, list[float]] | None = None,
) -> dict:
    """One step at `rate` for `seconds` (or of `runs`, made beforehand by `_runs`, e.g. to watch them)."""
    runs = runs or _runs(f"rate{rate:g}", max(1, int(rate * seconds)))
    ids, entries = list(runs), list(runs.values())
    watch = RunWatch(client, ids)
    before = watch.ended_count()
    submitted: dict[str, float] = {}
    begin = time.time()
    sent = 0
    while sent < len(ids):  # paced: every due run in one pipeline, then sleep until the next is due
        due = min(len(ids), int((time.time() - begin) * rate) + 1)
        pipe = client.pipeline(transaction=False)
        for i in range(sent, due):
            pipe.xadd(streams.RUNS, entries[i])
        pipe.execute()
        now = time.time()
        for i in range(sent, due):
            submitted[ids[i]] = now
        sent = due
        delay = begin + sent / rate - time.time()
        if delay > 0:
            time.sleep(delay)
    achieved = len(ids) / max(time.time() - begin, 1e-6)
    watch.wait_counted(10 + 2 * seconds, before)  # (each hop is timed by its own events, not by this)
    ended = time.time()  # the step's runs are over; reading their events (below) takes a while
    per_hop, per_decision, e2e = [], [], []
    completed_ids = [r for r, (kind, _t) in watch.ended.items() if kind == "run.completed"]
    for run_id, events in _events(client, completed_ids).items():
        per_hop += hops(events)
        per_decision += decisions(events)
        e2e.append(watch.ended[run_id][1] - submitted[run_id])
    if samples is not None:  # (the caller pools the hops of several steps)
        samples.setdefault("hop", []).extend(per_hop)
        samples.setdefault("decision", []).extend(per_decision)
    completed = len(e2e)
    p99 = percentile(per_hop, 99)
    return {
        "target_runs_per_s": rate,
        "achieved_runs_per_s": round(achieved, 1),
        "runs": len(ids),
        "ended_at": ended,
        "completed": completed,
        "unfinished": len(watch.pending),
        "hop_p50_ms": round(percentile(per_hop, 50) * 1000, 2) if per_hop else None,
        "hop_p99_ms": round(p99 * 1000, 2) if p99 is not None else None,
        "decision_p50_ms": _ms_or_none(percentile(per_decision, 50)),
        "decision_p99_ms": _ms_or_none(percentile(per_decision, 99)),
        "end_to_end_p50_ms": round(percentile(e2e, 50) * 1000, 1) if e2e else None,
        "end_to_end_p99_ms": round(percentile(e2e, 99) * 1000, 1) if e2e else None,
        "ok": completed == len(ids)
        and p99 is not None
        and p99 * 1000 < HOP_BUDGET_MS
        and achieved >= 0.95 * rate,
    }


def _ms_or_none(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def saturated(step: dict) -> bool:
    """Past capacity for sure: runs left unfinished, the typical hop over budget, or the rate not kept."""
    p50 = step.get("hop_p50_ms")
    return bool(
        step["unfinished"]
        or p50 is None
        or p50 >= HOP_BUDGET_MS
        or step["achieved_runs_per_s"] < 0.95 * step["target_runs_per_s"]
    )


def sweep(srv: Servers, supervisors: int, rates: list[float], seconds: float, workers: int) -> dict:
    """Step the rate up until the supervisor is saturated (`saturated`), or three steps in a row missed the
    budget: a noisy p99 at one rate does not end the sweep, a queue that grows does."""
    client = srv.clean()
    stack = srv.stack(f"sweep-{supervisors}", workers=workers, supervisors=supervisors)
    steps, misses = [], 0
    try:
        _warm(client)
        for rate in rates:
            cpu0, t0 = _cpu(_pids(stack, "supervisor")), time.time()
            with Elsewhere() as elsewhere:
                step = _step(client, rate, seconds)
            step["other_cpu_cores"] = elsewhere.cores
            used = _cpu(_pids(stack, "supervisor")) - cpu0
            step["supervisor_cores"] = round(used / (time.time() - t0), 2)
            steps.append(step)
            print(
                f"    {rate:g} runs/s: hop p99 {step['hop_p99_ms']} ms, {step['unfinished']} unfinished"
                f"{'' if step['ok'] else '  (over)'}",
                flush=True,
            )
            misses = 0 if step["ok"] else misses + 1
            if misses >= 3 or saturated(step):
                break
            time.sleep(0.5)
        problems = _log_problems(stack, "supervisor")
    finally:
        stack.stop_all()
    passing = [s["target_runs_per_s"] for s in steps if s["ok"]]
    return {
        "ok": bool(passing),
        "supervisors": supervisors,
        "workers": workers,
        "seconds_per_step": seconds,
        "hop_budget_ms": HOP_BUDGET_MS,
        "capacity_runs_per_s": max(passing) if passing else None,
        "steps": steps,
        "supervisor_log": problems,
        "capped_by_sweep": bool(steps) and steps[-1]["ok"] and len(steps) == len(rates),
    }


# --- 8. fan-out -----------------------------------------------------------------------------------------


def fanout_workflows(work: Path, width: int) -> Path:
    """The bench workflow file plus `fanout`: W subtasks for `noop`, then `collect`; max_subtasks = W."""
    spec = yaml.safe_load(full_stack.WORKFLOWS.read_text())
    spec["workflows"] = {
        "fanout": {
            "pattern": "hierarchical",
            "manager": "fanout-planner",
            "workers": ["noop"],
            "aggregator": "collect",
            "max_subtasks": width,
            "max_attempts": 1,
        }
    }
    path = work / f"fanout-{width}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def relay_workflows(work: Path, lengths: list[int]) -> Path:
    """The bench workflow file plus `relay-<L>` for each length L: L sequential no-op stages."""
    spec = yaml.safe_load(full_stack.WORKFLOWS.read_text())
    for length in lengths:
        spec["workflows"][f"relay-{length}"] = {
            "pattern": "sequential",
            "stages": ["noop"] * length,
            "max_attempts": 1,
        }
    path = work / "relay-lengths.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _wait_run(client: redis.Redis, run_id: str, deadline: float) -> dict | None:
    """Follow one run's own event stream (blocking reads) until its terminal event or the deadline."""
    cursor = "0-0"
    stream = streams.run_events(run_id)
    while time.time() < deadline:
        reply = client.xread({stream: cursor}, count=1000, block=500)
        for _s, entries in reply or []:
            for entry_id, fields in entries:
                cursor = entry_id
                event = json.loads(fields[DATA])
                if event["type"] in TERMINAL_RUN_EVENTS:
                    return event
    return None


def baton_fanout(srv: Servers, width: int, workers: int, timeout: float) -> dict:
    from shared.workflow import load_workflows

    path = fanout_workflows(srv.work, width)
    try:
        load_workflows(path)
    except Exception as exc:  # a ceiling below W: say so instead of starting anything
        reason = " ".join(line.strip() for line in str(exc).splitlines()[1:]) or str(exc)
        return {"ok": False, "width": width, "error": f"the workflow file is refused: {reason[:300]}"}
    client = srv.clean()
    stack = srv.stack(f"fanout-{width}", workers=workers, workflows=path)
    try:
        [(run_id, fields)] = _runs(f"fan{width}", 1, "fanout", {"width": width}).items()
        supervisor, worker = _pids(stack, "supervisor"), _pids(stack, "worker")
        cpu0 = (_cpu(supervisor), _cpu(worker))
        with Elsewhere() as elsewhere:
            t0 = time.time()
            client.xadd(streams.RUNS, fields)
            end = _wait_run(client, run_id, t0 + timeout)
            waited = time.time() - t0
            cpu1 = (_cpu(supervisor), _cpu(worker))
        problems = _log_problems(stack, "supervisor")
    finally:
        stack.stop_all()
    sup = cpu1[0] - cpu0[0]
    result = {
        "width": width,
        "supervisor_cpu_s": round(sup, 2),
        "supervisor_cpu_ms_per_subtask": round(sup / width * 1000, 3),
        "worker_cpu_s": round(cpu1[1] - cpu0[1], 2),
        "supervisor_log": problems,
        "other_cpu_cores": elsewhere.cores,
    }
    if end is None:
        return {
            **result,
            "ok": False,
            "error": f"no terminal event after {timeout:g} s",
            "waited_s": round(waited, 1),
        }
    seconds = _ts(end["created_at"]) - t0
    result.update(ok=end["type"] == "run.completed", seconds=round(seconds, 3))
    result["subtasks_per_s"] = round(width / seconds, 1) if seconds > 0 else None
    if not result["ok"]:
        result["error"] = f"{end['type']}: {end.get('reason') or end.get('error') or ''}"[:500]
    return result


def celery_chord(srv: Servers, widths: list[int], workers: int, timeout_of) -> dict:
    client = srv.clean()
    procs = Procs(srv.work / "logs" / "chord-celery")
    out = {}
    try:
        procs.start("celery", PEER_WORKERS["celery"](workers), {"BENCH_REDIS_URL": srv.redis_url})
        _publisher(srv, "celery", "chord", 10, 120)  # warm-up
        _chord_done(client, 10, procs, time.time() + 60)
        for width in widths:
            print(f"- fan-out {width:,}: celery chord", end="", flush=True)
            _reset_counters(client)
            cpu0 = _cpu(procs.pids)
            try:
                with Elsewhere() as elsewhere:
                    _publisher(srv, "celery", "chord", width, timeout_of(width))
                    start = float(client.hget(done_counter.PUBLISH_KEY, "start"))
                    at = _chord_done(client, width, procs, start + timeout_of(width))
            except Exception as exc:
                out[str(width)] = {"ok": False, "width": width, "error": f"{type(exc).__name__}: {exc}"[:500]}
                print(f": FAILED {out[str(width)]['error'][:200]}", flush=True)
                continue
            cpu = _cpu(procs.pids) - cpu0
            r = {"ok": at is not None, "width": width, "worker_cpu_s": round(cpu, 2)}
            r["other_cpu_cores"] = elsewhere.cores
            r["worker_cpu_ms_per_subtask"] = round(cpu / width * 1000, 3)
            if at is None:
                r["error"] = f"the callback had not run after {timeout_of(width):g} s"
            else:
                r["seconds"] = round(at - start, 3)
                r["subtasks_per_s"] = round(width / (at - start), 1)
            out[str(width)] = r
            print(f": {r['seconds']:.2f} s" if r["ok"] else f": FAILED {r['error']}", flush=True)
    finally:
        procs.stop()
    return out


def _chord_done(client: redis.Redis, width: int, procs: Procs, deadline: float) -> float | None:
    while time.time() < deadline:
        done = client.hgetall(done_counter.CHORD_DONE_KEY)
        if done and int(done[b"parts"]) == width:
            return float(done[b"at"])
        procs.check_alive()
        time.sleep(0.02)
    return None


def fanout(srv: Servers, widths: list[int], workers: int, timeout: float, peers: bool = True) -> dict:
    timeout_of = (lambda _w: timeout) if timeout else (lambda w: 60 + 0.012 * w)
    out: dict = {"workers": workers, "baton": {}, "celery_chord": {}}
    for width in widths:
        print(f"- fan-out {width:,}: baton", end="", flush=True)
        r = _attempt(lambda width=width: baton_fanout(srv, width, workers, timeout_of(width)))
        out["baton"][str(width)] = r
        print(
            f": {r['seconds']:.2f} s, supervisor {r['supervisor_cpu_ms_per_subtask']:.2f} ms CPU/subtask"
            if r.get("ok")
            else f": FAILED {r.get('error', '')[:300]}",
            flush=True,
        )
    if peers:
        try:
            out["celery_chord"] = celery_chord(srv, widths, workers, timeout_of)
        except Exception as exc:
            out["celery_chord"] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    cpu = {w: r["supervisor_cpu_ms_per_subtask"] for w, r in out["baton"].items() if r.get("ok")}
    if len(cpu) >= 2:
        ws = sorted(cpu, key=int)
        out["cpu_per_subtask_growth"] = round(cpu[ws[-1]] / cpu[ws[0]], 2) if cpu[ws[0]] else None
    return out
