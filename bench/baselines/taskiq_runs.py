"""Taskiq with taskiq-pipelines: a `Pipeline` of 3 no-op tasks, the peer of a 3-stage Baton run.

Consumers: `taskiq worker bench.baselines.taskiq_runs:broker --workers K`.
`python -m bench.baselines.taskiq_runs publish N` kicks N pipelines at once with Taskiq's own client.
taskiq-pipelines chains the steps in its middleware's `post_save` hook, which runs without a result
backend too; the last step counts a finished run.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from taskiq_pipelines import Pipeline, PipelineMiddleware
from taskiq_redis import RedisStreamBroker

from bench.baselines.counter import DoneCounter, mark_published

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
counter = DoneCounter(URL, last=True)
broker = RedisStreamBroker(
    URL,
    queue_name="bench:taskiq-runs",
    consumer_id="0",  # read what was queued before the workers started
).with_middlewares(PipelineMiddleware())


@broker.task(task_name="bench.stage")
async def stage(i: int) -> int:
    return i


@broker.task(task_name="bench.last")
async def last(i: int) -> None:
    counter.done()


async def publish(n: int) -> None:
    await broker.startup()
    pipe = Pipeline(broker, stage).call_next(stage).call_next(last)
    start = time.time()
    for i in range(n):
        await pipe.kiq(i)
    mark_published(URL, start, time.time())
    await broker.shutdown()


if __name__ == "__main__":
    asyncio.run(publish(int(sys.argv[2])))
