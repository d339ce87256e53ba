"""Dramatiq `pipeline` of 3 no-op actors: the peer of a 3-stage Baton run (whole-run burst).

Consumers: `dramatiq bench.baselines.dramatiq_runs --processes K --threads 8 --queues bench-runs`.
`python -m bench.baselines.dramatiq_runs publish N` sends N pipelines at once with Dramatiq's own client.
Each stage passes its argument on (Dramatiq's Pipelines middleware appends the result to the next message);
the last stage counts a finished run.
"""

from __future__ import annotations

import os
import sys
import time

import dramatiq
from dramatiq import pipeline
from dramatiq.brokers.redis import RedisBroker

from bench.baselines.counter import DoneCounter, mark_published

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
counter = DoneCounter(URL, last=True)
broker = RedisBroker(url=URL)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="bench-runs", max_retries=0)
def stage(i: int) -> int:
    return i


@dramatiq.actor(queue_name="bench-runs", max_retries=0)
def last(i: int) -> None:
    counter.done()


def publish(n: int) -> None:
    start = time.time()
    for i in range(n):
        pipeline([stage.message(i), stage.message(), last.message()]).run()
    mark_published(URL, start, time.time())


if __name__ == "__main__":
    publish(int(sys.argv[2]))
