"""Process plumbing every service shares: clients opened in the app's lifespan, closed on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis.asyncio as aioredis
from faststream import FastStream

from . import faults, redisconn
from .batch import Outbox
from .broker import create_groups
from .partitions import agree_on_partitions
from .reclaim import Reclaimer
from .redisconn import connect
from .settings import Settings
from .storage import Storage

T = TypeVar("T")


@dataclass
class Resources:
    """Clients a service's handlers use; filled in at start-up, never at import time."""

    settings: Settings
    stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    storage: Storage | None = None
    redis: aioredis.Redis | None = None
    outbox: Outbox | None = None

    async def open(self, storage: bool = True, redis: bool = False, outbox: bool = False) -> None:
        """`outbox`: writes grouped into pipelines on a connection of their own, acknowledged after WAIT
        when BATON_REDIS_WAIT_REPLICAS asks (the router's and the notifier's; shared/batch.py)."""
        if storage:
            self.storage = await self.stack.enter_async_context(Storage.connect(self.settings))
        if redis:
            self.redis = redis_client(self.settings)
            self.stack.push_async_callback(self.redis.aclose)
        if outbox:
            client = connect(self.settings.redis_url, socket_timeout=None, socket_connect_timeout=5)
            self.stack.push_async_callback(client.aclose)
            self.outbox = Outbox(client, wait_replicas=self.settings.redis_wait_replicas)
            self.stack.push_async_callback(self.outbox.drain)  # (runs before the close above)

    async def close(self) -> None:
        await self.stack.aclose()


def redis_client(settings: Settings, **kw) -> aioredis.Redis:
    """A client whose pool is bounded and blocking: under load, callers wait for a connection instead of
    failing (redis-py's default pool raises past 100 connections)."""
    return connect(settings.redis_url, max_connections=settings.redis_max_connections, **kw)


# The cyclic garbage collector, tuned for services that make many short-lived objects per event: by
# default a young collection runs every 700 allocations and the older generations are scanned as
# often, which at a few thousand events per second cost the supervisor a third of its time (a burst of
# 5,000 runs: 616 runs/s with the default, 869 with these). Objects alive at start-up (modules, pydantic
# schemas) are frozen out of every collection.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def build_app(
    broker,
    resources: Resources,
    log,
    *,
    service: str = "baton",
    storage: bool = True,
    redis: bool = False,
    outbox: bool = False,
    partitions: bool = False,
    **info,
):
    """A FastStream app whose lifespan opens and closes `resources`. `partitions`: the service reads or
    writes outcomes, so it must use the deployment's results partition count (`agree_on_partitions`)."""
    faults.arm(resources.settings.faults)
    app = FastStream(broker, logger=None)
    reclaimer = Reclaimer(broker, resources.settings, service)

    @app.on_startup
    async def _open() -> None:
        await redisconn.verify(resources.settings.redis_url)  # a clear error before anything starts
        await resources.open(storage=storage, redis=redis, outbox=outbox)
        client = connect(resources.settings.redis_url)
        try:
            if partitions:
                await agree_on_partitions(client, resources.settings)
            await create_groups(client, broker)
        finally:
            await client.aclose()
        log.info("service_starting", **info)

    @app.after_startup
    async def _ready() -> None:
        tune_gc()
        reclaimer.start()
        mark_ready(resources.settings)
        log.info("service_ready", event_loop=loop_name(), **info)

    @app.on_shutdown
    async def _stop_reclaiming() -> None:
        await reclaimer.stop()

    @app.after_shutdown
    async def _close() -> None:
        await resources.close()

    return app


def mark_ready(settings: Settings) -> None:
    """Touch the ready file, if one is configured: readiness must not depend on the log level."""
    if settings.ready_file is not None:
        settings.ready_file.parent.mkdir(parents=True, exist_ok=True)
        settings.ready_file.touch()


def loop_name() -> str:
    """`uvloop` or `asyncio`: the event loop this service runs on, for its ready log."""
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def run(main: Coroutine[Any, Any, T], settings: Settings) -> T:
    """Run a coroutine (a service's main, a CLI command's) to its end on the event loop
    `settings.event_loop` names, and return its result: uvloop by default (libuv's loop: less CPU for each
    socket read and write, task and timer, which is most of what a service does per event), or the
    standard library's."""
    if settings.event_loop == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
