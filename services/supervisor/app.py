"""The supervisor: starts runs, keeps their state in Redis, decides every next step.

Consumes `baton:runs`, `baton:{r<N>}:results`, `baton:objects` and `baton:dlq`; appends tasks to
`baton:agent:<name>` (or to `baton:route` when a task needs a route) and every step of a run to that
run's own stream `baton:{<run_id>}:events`. The handlers live in role-named modules (`runs`, `results`,
`objects`, `timers`, `deadletters`) and change runs only through `engine.Engine.decide`; the decisions
themselves are plain functions, one module per pattern.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis

from shared import metrics, streams
from shared.batch import Batched, InOrder, Outbox
from shared.broker import make_broker, subscribe
from shared.events import (
    Event,
    ObjectChanged,
    RunRequest,
    RunSubmitted,
    TaskAssigned,
    TaskFailed,
    TaskResult,
)
from shared.logging import configure_logging
from shared.redisconn import connect
from shared.runs import index_waiting
from shared.service import Resources, build_app, run
from shared.settings import Settings
from shared.workflow import load_workflows
from shared.workspace import run_of_key

from . import objects, results, runs, timers
from .deadletters import on_dead_letter
from .engine import Engine
from .shares import Shares

SERVICE = "supervisor"
LETTER_MAX = 512 * 1024 * 1024  # Redis' own limit for one value
# The handlers await every write they depend on (a commit before its tasks are sent, the tasks before the
# event is acknowledged), so their commands may go in concurrent pipelines: Redis runs one while the
# process prepares the next (a 10,000-run burst: ~5% faster with 2, within the noise beyond).
SUPERVISOR_PIPELINES = 2
# Reads whose events may be in flight at once, per stream: the next `batch` entries are read and decided
# while the last ones' commits are in Redis. With one read at a time the process idled through each
# batch's read and commit round trips (a 10,000-run burst: the supervisor at 0.65-0.75 of a core, the
# results stream 8,000 entries behind); with 3, that burst ran 11-28 % faster in four paired runs.
SUPERVISOR_READ_AHEAD = 3


def create_app(settings: Settings | None = None):
    settings = settings or Settings()
    log = configure_logging(SERVICE, settings.log_format, settings.log_level)
    workflows = load_workflows(settings.workflows)
    # FastStream subscribers (each a read, and a connection), on the per-message path only: runs, bucket
    # changes and every results partition
    readers = 0 if settings.batch else 2 + settings.result_partitions
    broker = make_broker(settings, SERVICE, readers=readers)
    res = Resources(settings)
    eng = Engine(settings, workflows, log, sender=f"{SERVICE}:{settings.consumer}")
    eng.on_waiting = objects.check_responses
    _declare_publishers(broker)

    async def on_runs(event: RunRequest) -> None:
        """Submitted runs and cancellations."""
        await runs.on_runs(eng, event)
        metrics.hop("runs", event)

    async def on_result(event: TaskResult) -> None:
        """Task outcomes from workers and the router."""
        await results.on_result(eng, event)
        metrics.hop("results", event)

    async def on_object(event: ObjectChanged) -> None:
        """Bucket changes from the notifier."""
        await objects.on_object(eng, event)
        metrics.hop("objects", event)

    async def on_dlq(event: dict[str, Any]) -> None:
        """Dead letters: a task that died there fails its run."""
        await on_dead_letter(eng, event)

    group = streams.SUPERVISOR_GROUP
    batched = Batched(settings, SERVICE) if settings.batch else None
    # The replicas share the results partitions out, so that a run's outcomes go to one of them (shares.py)
    shares = Shares(settings.consumer, settings.result_partitions, log) if batched else None
    if batched:
        # Up to `batch` events read at once and handled concurrently, one run's events in stream order.
        in_order = InOrder()

        async def runs_in_order(event: RunRequest) -> None:
            await in_order.run(event.run_id, lambda: on_runs(event))

        async def results_in_order(event: TaskResult) -> None:
            await in_order.run(event.run_id, lambda: on_result(event))

        async def objects_in_order(event: ObjectChanged) -> None:
            # (a run's files in order with its results; a trigger's, by key)
            await in_order.run(run_of_key(event.key) or event.key, lambda: on_object(event))

        ahead = SUPERVISOR_READ_AHEAD  # (reads in flight at once per stream)
        # (submissions go with partition 0: with one partition, a second replica stands by, see shares.py)
        runs_gate = shares.gate(0)
        batched.subscribe(broker, streams.RUNS, group, RunRequest, runs_in_order, ahead=ahead, gate=runs_gate)
        for p, stream in enumerate(streams.result_streams(settings.result_partitions)):
            gate = shares.gate(p)
            batched.subscribe(broker, stream, group, TaskResult, results_in_order, ahead=ahead, gate=gate)
        # Every file an agent writes is a bucket change (the replicas share them in one group, unpartitioned)
        batched.subscribe(broker, streams.OBJECTS, group, ObjectChanged, objects_in_order, ahead=ahead)
    else:
        subscribe(
            broker,
            streams.RUNS,
            group,
            settings,
            on_runs,
            title="runs",
            description="Submitted runs and cancellations.",
        )
        for p, stream in enumerate(streams.result_streams(settings.result_partitions)):
            subscribe(
                broker,
                stream,
                group,
                settings,
                on_result,
                title="results" if p == 0 else f"results-{p}",
                description="Task outcomes from workers and the router (one partition of them).",
            )
        subscribe(
            broker,
            streams.OBJECTS,
            group,
            settings,
            on_object,
            title="objects",
            description="Bucket changes from the notifier.",
        )
    # Dead letters are read whatever their size (a letter about an oversized event is oversized too), so
    # that reading one can never make another.
    letters = Batched(settings, SERVICE)
    letters.subscribe(broker, streams.DLQ, group, dict[str, Any], on_dlq, size=10, max_event_bytes=LETTER_MAX)

    if settings.metrics_port is not None:  # stream lag, pending, DLQ size: read from Redis when scraped
        metrics.collect_streams(
            settings.redis_url,
            streams.result_streams(settings.result_partitions)
            + [streams.agent_stream(a) for a in workflows.agents],
        )
    app = build_app(
        broker, res, log, service=SERVICE, redis=True, consumer=settings.consumer, partitions=True
    )
    if batched:
        batched.attach(app)
    letters.attach(app)
    loops: list[asyncio.Task] = []
    own: dict[str, aioredis.Redis] = {}

    @app.on_startup
    async def _bind() -> None:  # (after build_app's own start-up hook has opened `res`)
        # The handlers' commands go through one outbox: what they queue in one loop turn is one pipeline
        # (at most SUPERVISOR_PIPELINES at once), however many runs are in flight (bounded connection use).
        own["redis"] = connect(settings.redis_url, socket_timeout=None, socket_connect_timeout=5)
        eng.bind(
            res.storage,
            res.redis,
            Outbox(own["redis"], wait_replicas=settings.redis_wait_replicas, pipelines=SUPERVISOR_PIPELINES),
        )
        if shares is not None:  # (before the consumers start: each reads its share from the first read)
            await shares.start(res.redis)
        if listed := await index_waiting(res.redis):
            log.info("waiting_index_filled", runs=listed)

    @app.after_startup
    async def _start() -> None:
        loops.append(asyncio.create_task(timers.run_timers(eng)))
        if shares is not None:
            loops.append(asyncio.create_task(shares.run()))

    @app.on_shutdown
    async def _stop() -> None:
        for task in loops:
            task.cancel()
        if shares is not None:
            await shares.leave()
        if eng.db is not None:
            await eng.db.drain()

    @app.after_shutdown
    async def _close() -> None:
        if "redis" in own:
            await own["redis"].aclose()

    return app


def _declare_publishers(broker) -> None:
    """What the supervisor writes, for the AsyncAPI document (written through the engine's outbox)."""
    for stream, title, schema, description in (
        (streams.ROUTE, "route", TaskAssigned, "Tasks that need a route (an intent, or a router's request)."),
        (streams.agent_stream("{agent}"), "agent-tasks", TaskAssigned, "Tasks for a known agent."),
        (streams.RESULTS_DOC, "deadlines", TaskFailed, "Tasks past their deadline, failed as retryable."),
        (streams.RUNS, "triggered-runs", RunSubmitted, "Runs started by triggers."),
        (streams.run_events("{run_id}"), "run-events", Event, "Every step of one run, in order."),
    ):
        broker.publisher(stream=stream, title=title, schema=schema, description=description)


def main() -> None:
    settings = Settings()
    run(create_app(settings).run(), settings)
