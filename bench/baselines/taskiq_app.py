"""Taskiq with taskiq-redis's stream broker (XREADGROUP + XACK) and a no-op task.

Consumers: `taskiq worker bench.baselines.taskiq_app:broker --workers K`.
`python -m bench.baselines.taskiq_app prefill N` fills the stream with Taskiq's own client.
"""

from __future__ import annotations

import asyncio
import os
import sys

from taskiq import TaskiqMiddleware
from taskiq_redis import RedisStreamBroker

from bench.baselines.counter import DoneCounter

counter = DoneCounter(os.environ.get("BENCH_REDIS_URL"))


class CountDone(TaskiqMiddleware):
    def post_execute(self, message, result) -> None:
        counter.done()


broker = RedisStreamBroker(
    os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
    queue_name="bench:taskiq",
    consumer_id="0",  # read what was queued before the workers started
).with_middlewares(CountDone())


@broker.task(task_name="bench.noop")
async def noop(i: int) -> None:
    return None


async def prefill(n: int) -> None:
    await broker.startup()
    for i in range(n):
        await noop.kiq(i)
    await broker.shutdown()


if __name__ == "__main__":
    asyncio.run(prefill(int(sys.argv[2])))
