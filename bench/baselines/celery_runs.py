"""Celery `chain` of 3 no-op tasks (the peer of a 3-stage Baton run) and `chord` of W no-op tasks plus a
callback (the peer of a hierarchical fan-out), with the Redis broker.

Consumers: `celery -A bench.baselines.celery_runs worker -P prefork -c K -Q bench-runs`.
`python -m bench.baselines.celery_runs publish N` sends N chains at once; `... chord W` one chord.
A chain needs no result backend (the rest of the chain travels in the message), so its tasks keep none;
a chord does (the Redis backend counts the finished parts), so its parts store their results.
"""

from __future__ import annotations

import os
import sys
import time

import redis
from celery import Celery, chain, chord

from bench.baselines.counter import CHORD_DONE_KEY, DoneCounter, mark_published

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("bench-runs", broker=URL, backend=URL)
app.conf.update(
    task_default_queue="bench-runs",
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)
counter = DoneCounter(URL, last=True)


@app.task(name="bench.runs.stage", ignore_result=True)
def stage(i: int) -> int:
    return i


@app.task(name="bench.runs.last", ignore_result=True)
def last(i: int) -> None:
    counter.done()


@app.task(name="bench.runs.part")
def part(i: int) -> None:
    return None


@app.task(name="bench.runs.joined", ignore_result=True)
def joined(results: list) -> None:
    redis.Redis.from_url(URL).hset(CHORD_DONE_KEY, mapping={"at": repr(time.time()), "parts": len(results)})


def publish(n: int) -> None:
    with app.producer_or_acquire() as producer:
        start = time.time()
        for i in range(n):
            chain(stage.s(i), stage.s(), last.s()).apply_async(producer=producer)
    mark_published(URL, start, time.time())


def fan_out(width: int) -> None:
    start = time.time()
    chord(part.s(i) for i in range(width))(joined.s())
    mark_published(URL, start, time.time())


if __name__ == "__main__":
    {"publish": publish, "chord": fan_out}[sys.argv[1]](int(sys.argv[2]))
