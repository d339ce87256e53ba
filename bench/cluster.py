"""Scenario 10: one Valkey server versus a Valkey cluster of 3 masters (each with a replica), same run.

For each target: a single hop (N no-op TaskAssigned put on `baton:agent:noop`, two worker processes
started, timed until N outcomes are on the results partitions) and a burst of whole runs (N runs of the
3-stage `relay` workflow XADDed at once, the full stack with one supervisor; a run's end is its
`run.completed`, stamped by the supervisor). Targets: one server (1 results partition), the cluster (4
partitions), and the cluster with BATON_REDIS_WAIT_REPLICAS=1 (each batch of writes waits for a replica).

On one 2-core machine this shows what the cluster costs, not how it scales: its 6 nodes share the cores
with everything else. docs/ARCHITECTURE.md models the scaling from these per-shard figures.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import redis
from redis.cluster import ClusterNode, RedisCluster

from baton import cluster as baton_cluster
from baton import servers
from bench import stack as full_stack
from bench.common import Procs, python
from shared import streams
from shared.broker import DATA_FIELD, encode
from shared.events import RunSubmitted, TaskAssigned
from shared.redisconn import as_cluster_url, cluster_parts

DATA = DATA_FIELD.encode()


def _sync_client(url: str):
    if url.startswith("redis-cluster://"):
        seeds, auth = cluster_parts(url)
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in seeds], **auth)
    return redis.Redis.from_url(url)


def _flush(client) -> None:
    if isinstance(client, RedisCluster):
        client.flushall(target_nodes=RedisCluster.PRIMARIES)
    else:
        client.flushall()


def _results_len(client, partitions: int) -> int:
    return sum(client.xlen(s) for s in streams.result_streams(partitions) if client.exists(s))


def single_hop(url: str, s3_url: str, work: Path, n: int, partitions: int, extra: dict) -> dict:
    client = _sync_client(url)
    _flush(client)
    stream = streams.agent_stream("noop")
    client.xgroup_create(stream, "noop", id="0", mkstream=True)
    for start in range(0, n, 2000):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(start + 2000, n)):
            run_id = f"hop-{i}"
            task = TaskAssigned(
                run_id=run_id,
                task_id=f"{run_id}.0.noop",
                workflow="bench",
                agent="noop",
                output_prefix=f"runs/{run_id}/work/",
                sender="bench",
            )
            pipe.xadd(stream, encode(task))
        pipe.execute()
    env = {
        "REDIS_URL": url,
        "S3_ENDPOINT_URL": s3_url,
        "S3_ACCESS_KEY": servers.MINIO_USER,
        "S3_SECRET_KEY": servers.MINIO_PASSWORD,
        "BATON_WORKFLOWS": str(full_stack.WORKFLOWS),
        "BATON_AGENTS": "noop",
        "BATON_LOG_FORMAT": "json",
        "BATON_RESULT_PARTITIONS": str(partitions),
        **extra,
    }
    procs = Procs(work)
    t0 = time.time()
    try:
        for k in range(2):
            procs.start(f"worker-{k}", python("-m", "services.worker"), {**env, "BATON_CONSUMER": f"hop-{k}"})
        deadline = t0 + 60 + n / 500
        done = first = 0
        t_first = None
        while time.time() < deadline:
            done = _results_len(client, partitions)
            if t_first is None and done:
                t_first, first = time.time(), done  # the workers are up: the window starts here
            if done >= n:
                break
            time.sleep(0.02)
        t_end = time.time()
    finally:
        procs.stop()
        client.close()
    seconds = max(t_end - (t_first or t0), 1e-6)
    return {
        "tasks": n,
        "completed": done,
        "seconds": round(seconds, 2),
        "tasks_per_s": round((done - first) / seconds),
        "window": "from the first outcome to the last (the workers' start-up left out)",
    }


def burst(url: str, s3_url: str, notifier_port: int, token: str, work: Path, n: int, extra: dict) -> dict:
    client = _sync_client(url)
    _flush(client)
    stack = full_stack.start_stack(work, url, s3_url, notifier_port, token, workers=2, extra=extra)
    run_ids = [f"burst-{i}-{int(time.time() * 1000)}" for i in range(n)]
    try:
        t0 = time.time()
        for start in range(0, n, 2000):
            pipe = client.pipeline(transaction=False)
            for run_id in run_ids[start : start + 2000]:
                pipe.xadd(streams.RUNS, encode(RunSubmitted(run_id=run_id, workflow="relay")))
            pipe.execute()
        deadline = t0 + 120 + n / 20
        ended: dict[str, float] = {}
        waiting = list(run_ids)
        while waiting and time.time() < deadline:
            time.sleep(1.0)
            still = []
            for start in range(0, len(waiting), 1000):
                chunk = waiting[start : start + 1000]
                pipe = client.pipeline(transaction=False)
                for run_id in chunk:
                    pipe.xrevrange(streams.run_events(run_id), count=1)
                for run_id, last in zip(chunk, pipe.execute(), strict=True):
                    event = json.loads(last[0][1][DATA]) if last else {}
                    if event.get("type") == "run.completed":
                        ended[run_id] = datetime.fromisoformat(event["created_at"]).timestamp()
                    elif event.get("type") == "run.failed":
                        ended[run_id] = float("nan")
                    else:
                        still.append(run_id)
            waiting = still
    finally:
        stack.stop_all()
        client.close()
    done = [t for t in ended.values() if t == t]
    seconds = (max(done) - t0) if done else float("nan")
    return {
        "runs": n,
        "completed": len(done),
        "failed": len(ended) - len(done),
        "unfinished": len(waiting),
        "seconds": round(seconds, 2),
        "runs_per_s": round(len(done) / seconds, 1) if done else 0,
    }


def scenario(s3_url: str, notifier_port: int, token: str, work: Path, hop_n: int, burst_n: int) -> dict:
    """The three targets, one after the other, in one run."""
    results: dict = {"hop_tasks": hop_n, "burst_runs": burst_n, "targets": {}}
    single = servers.start_redis(work / "single")
    try:
        print("- cluster scenario: one server", flush=True)
        results["targets"]["one server"] = {
            "hop": single_hop(single.url, s3_url, work / "hop-single", hop_n, 1, {}),
            "burst": burst(single.url, s3_url, notifier_port, token, work / "burst-single", burst_n, {}),
        }
    finally:
        single.stop()
    local = baton_cluster.start_local(work / "cluster", appendonly=False)
    try:
        url = as_cluster_url(local.url)
        for label, extra in (
            ("3-master cluster", {"BATON_RESULT_PARTITIONS": "4"}),
            ("3-master cluster, WAIT 1", {"BATON_RESULT_PARTITIONS": "4", "BATON_REDIS_WAIT_REPLICAS": "1"}),
        ):
            print(f"- cluster scenario: {label}", flush=True)
            tag = label.replace(" ", "-").replace(",", "")
            results["targets"][label] = {
                "hop": single_hop(url, s3_url, work / f"hop-{tag}", hop_n, 4, extra),
                "burst": burst(url, s3_url, notifier_port, token, work / f"burst-{tag}", burst_n, extra),
            }
    finally:
        local.stop()
    return results


def table(results: dict) -> list[str]:
    lines = [
        f"One server vs a 3-master Valkey cluster (single hop: {results['hop_tasks']:,} tasks, 2 workers; "
        f"burst: {results['burst_runs']:,} 3-stage runs)",
        f"  {'target':<28}{'hop tasks/s':>14}{'burst runs/s':>14}{'completed':>11}",
    ]
    for label, r in results["targets"].items():
        lines.append(
            f"  {label:<28}{r['hop']['tasks_per_s']:>14,}{r['burst']['runs_per_s']:>14,}"
            f"{r['burst']['completed']:>6}/{r['burst']['runs']}"
        )
    return lines
