"""The limit: a plain redis-py loop. XREADGROUP (COUNT 100), then one pipeline of XADD (a result per
task) + XACK (the batch), i.e. the least work a stream consumer that reports results can do. Completions
are counted by the length of the results stream, which nobody reads.

`python -m bench.baselines.raw consume NAME` runs one consumer until it is stopped (SIGTERM).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import redis

from bench.baselines.counter import FIRST_KEY

TASKS = "bench:raw:tasks"
RESULTS = "bench:raw:results"
GROUP = "raw"


def consume(name: str) -> None:
    client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    first = True
    while True:
        reply = client.xreadgroup(GROUP, name, {TASKS: ">"}, count=100, block=1000)
        if not reply:
            continue
        if first:  # when this consumer started working (for the measurement window)
            client.hsetnx(FIRST_KEY, name, repr(time.time()))
            first = False
        ((_stream, entries),) = reply
        pipe = client.pipeline(transaction=False)
        ids = []
        for entry_id, fields in entries:
            task = json.loads(fields[b"__data__"])
            result = {"type": "task.completed", "task_id": task["task_id"], "sender": name}
            pipe.xadd(RESULTS, {"__data__": json.dumps(result)})
            ids.append(entry_id)
        pipe.xack(TASKS, GROUP, *ids)
        pipe.execute()


def prefill(n: int) -> None:
    client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    client.xgroup_create(TASKS, GROUP, id="0", mkstream=True)
    for start in range(0, n, 1000):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(n, start + 1000)):
            pipe.xadd(TASKS, {"__data__": json.dumps({"type": "task.assigned", "task_id": f"t{i}"})})
        pipe.execute()


if __name__ == "__main__":
    if sys.argv[1] == "consume":
        consume(sys.argv[2])
    else:
        prefill(int(sys.argv[2]))
