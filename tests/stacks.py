"""A small Baton stack of its own (notifier, supervisor, router, workers) on servers a test starts itself,
and a burst of runs through it: for tests that break their servers (a lost drive, a killed MinIO node)
and so must not share the session's.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from baton import client, servers
from baton.dev import Stack, acl_credentials, local_env, new_passwords, settings_kwargs
from shared.redisconn import connect
from shared.settings import Settings
from shared.storage import Storage
from tests.helpers import wait_for_end

ROOT = Path(__file__).resolve().parent.parent
TEST_WORKFLOWS = ROOT / "tests" / "workflows.yaml"
BRIEF = ROOT / "examples" / "briefs" / "topic.md"
# Runs of a burst followed at once, each on a client of its own (800 at once, on a Valkey cluster from the
# host, timed out closing their connections); the others wait their turn, and read their runs from the start.
FOLLOWING = 64


@contextlib.contextmanager
def own_stack(
    root: Path,
    redis_url: str,
    s3_url: str,
    notifier_port: int,
    token: str,
    notifier_host: str = "127.0.0.1",
    workers: int = 2,
    extra_env: dict[str, str] | None = None,
) -> Iterator[Stack]:
    """Every service as its own process, logged in as its own users (as tests/conftest.py's `stack`);
    `stack.env` holds the admin credentials, and `extra_env` (settings every service gets). Stopped on
    exit."""
    env = local_env(redis_url, s3_url, TEST_WORKFLOWS, notifier_port, token)
    env.update(extra_env or {})
    env["BATON_CWD"] = str(ROOT)
    env["BATON_NOTIFIER_HOST"] = notifier_host
    env["BATON_RECLAIM_IDLE_MS"] = "1500"
    # the test workflows' `kind: a2a` agents need these to start (no test here calls them)
    env["A2A_TEST_URL"] = f"http://127.0.0.1:{servers.free_port()}"
    env["A2A_TEST_TOKEN"] = "not-the-token"
    env["A2A_GATEWAY_TOKEN"] = "not-the-token"
    passwords = new_passwords()
    asyncio.run(client.init_workspace(Settings(**settings_kwargs(env), acl_passwords=passwords)))
    stack = Stack(root, env, credentials=acl_credentials(env, passwords))
    try:
        for name in ("notifier", "supervisor", "router", *["worker"] * workers):
            stack.start(name)
        yield stack
    finally:
        stack.stop_all()


@contextlib.contextmanager
def own_servers_and_stack(
    tmp: Path, drives: int = 1, workers: int = 2, extra_env: dict[str, str] | None = None
) -> Iterator[tuple[servers.Server, Stack]]:
    """A Redis and a MinIO (`drives` drives) of their own and `own_stack` on them; stopped on exit."""
    port, token = servers.free_port(), secrets.token_hex(16)
    redis = servers.start_redis(tmp / "redis", password=secrets.token_urlsafe(16))
    try:
        hook = f"http://127.0.0.1:{port}/minio/events"
        minio = servers.start_minio(tmp / "minio", hook, token, drives=drives)
        try:
            with own_stack(
                tmp / "stack", redis.url, minio.url, port, token, workers=workers, extra_env=extra_env
            ) as stack:
                yield minio, stack
        finally:
            minio.stop()
    finally:
        redis.stop()


def stack_settings(stack: Stack) -> Settings:
    return Settings(**settings_kwargs(stack.env))


@dataclass
class Burst:
    """Runs submitted together: their ids, how each ended, and the wall time from submit to last end."""

    run_ids: list[str]
    ends: dict[str, str]
    seconds: float

    @property
    def completed(self) -> int:
        return sum(1 for end in self.ends.values() if end == "run.completed")

    def failures(self) -> str:
        """Each run that did not complete, and how it ended (for an assertion's message)."""
        return "\n".join(f"{run}: {end}" for run, end in self.ends.items() if end != "run.completed")


async def burst(settings: Settings, runs: int, timeout: float = 120, during=None) -> Burst:
    """`runs` content-factory runs (three stages, each reading and writing MinIO) at once; `during`, an
    async callable, runs once every run is submitted, while they are in flight."""
    started = time.monotonic()
    # One S3 client and one Redis client for the whole burst, as a program submitting many runs holds them
    # (each `client.submit` opening its own: 80 at once spent seconds of CPU making S3 clients, and their
    # Redis connections timed out).
    async with (
        Storage.connect(settings) as storage,
        contextlib.aclosing(connect(settings.redis_url)) as redis,
    ):
        run_ids = await asyncio.gather(
            *(
                client.submit(settings, "content-factory", {"brief": BRIEF}, storage=storage, redis=redis)
                for _ in range(runs)
            )
        )
    if during is not None:
        await during()
    following = asyncio.Semaphore(FOLLOWING)

    async def end_of(run_id: str) -> list:
        async with following:
            return await wait_for_end(settings, run_id, timeout)

    ended = await asyncio.gather(*(end_of(r) for r in run_ids))
    seconds = time.monotonic() - started
    ends = {run_id: ending(events) for run_id, events in zip(run_ids, ended, strict=True)}
    return Burst(list(run_ids), ends, seconds)


def ending(events: list) -> str:
    """How a run ended: its last event's type, and for one that did not complete, why (its reason and its
    tasks' failures, each attempt), so a failed assertion says what went wrong."""
    last = events[-1]
    if last.type == "run.completed":
        return last.type
    failures = [f"{e.task_id}: {e.error}" for e in events if e.type == "task.failed"]
    return f"{last.type}: {getattr(last, 'reason', '')} (task failures: {failures})"
