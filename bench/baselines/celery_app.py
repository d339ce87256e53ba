"""Celery with the Redis broker and a no-op task, in its usual prefork configuration (no result backend).

Consumers: `celery -A bench.baselines.celery_app worker -P prefork -c K -Q bench` (see throughput.py).
`python -m bench.baselines.celery_app prefill N` fills the queue with Celery's own client.
"""

from __future__ import annotations

import os
import sys

from celery import Celery
from celery.signals import task_postrun

from bench.baselines.counter import DoneCounter

app = Celery("bench", broker=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_ignore_result=True,
    task_default_queue="bench",
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)
counter = DoneCounter(os.environ.get("BENCH_REDIS_URL"))


@app.task(name="bench.noop")
def noop(i: int) -> None:
    return None


@task_postrun.connect
def _count(**_kw) -> None:
    counter.done()


def prefill(n: int) -> None:
    with app.producer_or_acquire() as producer:
        for i in range(n):
            noop.apply_async((i,), producer=producer)


if __name__ == "__main__":
    prefill(int(sys.argv[2]))
