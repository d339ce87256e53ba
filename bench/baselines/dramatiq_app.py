"""Dramatiq with the Redis broker and a no-op actor (no results middleware).

Consumers: `dramatiq bench.baselines.dramatiq_app --processes K --threads 8 --queues bench`.
`python -m bench.baselines.dramatiq_app prefill N` fills the queue with Dramatiq's own client.
"""

from __future__ import annotations

import os
import sys

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware

from bench.baselines.counter import DoneCounter

counter = DoneCounter(os.environ.get("BENCH_REDIS_URL"))


class CountDone(Middleware):
    def after_process_message(self, broker, message, *, result=None, exception=None):
        counter.done()


broker = RedisBroker(url=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
broker.add_middleware(CountDone())
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="bench", max_retries=0)
def noop(i: int) -> None:
    return None


def prefill(n: int) -> None:
    for i in range(n):
        noop.send(i)


if __name__ == "__main__":
    prefill(int(sys.argv[2]))
