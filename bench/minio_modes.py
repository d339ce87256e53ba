"""Whole runs on each MinIO mode, in one process: one drive, one erasure set of 4 drives (one process,
`baton dev up --cluster`'s mode) and 4 distributed nodes (containers; needs a Docker engine). The same
Redis, services and burst of content-factory runs each time (three stages, each reading and writing
MinIO), so the figure is what the storage mode costs a run.

    .venv/bin/python -m bench.minio_modes [--runs 50] [--rounds 3]

On one 2-core machine every node shares the same disk and cores: this shows the overhead of erasure coding
and of the nodes' network hops, not the scale of distributed MinIO.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import statistics
import tempfile
from pathlib import Path

from baton import servers
from tests.stacks import burst, own_stack, stack_settings


@contextlib.contextmanager
def local_minio(tmp: Path, port: int, token: str, drives: int):
    minio = servers.start_minio(
        tmp / f"minio-{drives}", f"http://127.0.0.1:{port}/minio/events", token, drives=drives
    )
    try:
        yield minio.url, "127.0.0.1"
    finally:
        minio.stop()


@contextlib.contextmanager
def node_minio(port: int, token: str):
    from tests.cluster.minio_nodes import minio_nodes

    with minio_nodes(port, token) as nodes:
        yield nodes.urls[0], "0.0.0.0"  # noqa: S104 - the containers post to the host's bridge address


def measure(mode: str, runs: int, rounds: int) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"baton-minio-{mode}-") as name:
        tmp = Path(name)
        port, token = servers.free_port(), secrets.token_hex(16)
        redis = servers.start_redis(tmp / "redis", password=secrets.token_urlsafe(16))
        storage = (
            node_minio(port, token)
            if mode == "4 nodes"
            else local_minio(tmp, port, token, 4 if mode == "4 drives" else 1)
        )
        try:
            with (
                storage as (s3_url, notifier_host),
                own_stack(tmp / "stack", redis.url, s3_url, port, token, notifier_host) as stack,
            ):
                settings = stack_settings(stack)
                asyncio.run(burst(settings, 5))  # warm: groups joined, connections open
                seconds = []
                for _ in range(rounds):
                    result = asyncio.run(burst(settings, runs, timeout=300))
                    assert result.completed == runs, result.ends
                    seconds.append(result.seconds)
        finally:
            redis.stop()
    best = min(seconds)
    return {
        "mode": mode,
        "runs": runs,
        "seconds": [round(s, 2) for s in seconds],
        "median_s": round(statistics.median(seconds), 2),
        "runs_per_s_best": round(runs / best, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default="1 drive,4 drives,4 nodes")
    args = parser.parse_args()
    results = [measure(m.strip(), args.runs, args.rounds) for m in args.modes.split(",")]
    for r in results:
        print(
            f"{r['mode']:>9}: {r['runs']} runs, median {r['median_s']}s over {r['seconds']}, "
            f"best {r['runs_per_s_best']} runs/s"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
