"""Blocking reads that wait as long as asked: following a stream (XREAD BLOCK) and taking a reply (BLPOP).

Two things break a naive blocking read. A socket timeout no longer than the block (redis-py's default is
5 s, so `XREAD BLOCK 5000` races it) turns a quiet stream into a `TimeoutError`; and a dropped connection
(Redis restarted, a proxy's idle cut, `CLIENT KILL`) ends the wait with a `ConnectionError`. Here each
blocking call is kept shorter than the client's socket timeout, and a connection error or timeout is
retried after a short backoff on a fresh connection, resuming where the read left off: a stream follow
from the last entry id it yielded (nothing skipped, nothing repeated), a pop with the time that is left
(a reply pushed meanwhile stays in its list). `client()` makes a Redis client suited to long blocks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from redis.asyncio.connection import DEFAULT_SOCKET_TIMEOUT
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .redisconn import connect

SOCKET_MARGIN = 10.0  # seconds a socket outlasts the longest block: a dead server is still noticed
RECONNECT_FOR = 30.0  # seconds of failing commands, without one success, before giving up
BACKOFF_FIRST, BACKOFF_MAX = 0.05, 2.0
TRANSIENT = (RedisConnectionError, RedisTimeoutError)


def client(url: str, *, block: float = 5.0, name: str | None = None) -> aioredis.Redis:
    """A Redis client whose socket timeout outlasts blocks of `block` seconds (named `name` in CLIENT
    LIST, which lets an operator find and kill a follower's connection)."""
    return connect(
        url,
        socket_timeout=block + SOCKET_MARGIN,
        socket_connect_timeout=5,
        socket_keepalive=True,
        client_name=name,
    )


def longest_block(redis: aioredis.Redis) -> float | None:
    """The longest block this client's socket timeout allows (a second less), or None if it has none."""
    pool = getattr(redis, "connection_pool", None)  # (a cluster client keeps them in its nodes manager)
    kwargs = pool.connection_kwargs if pool is not None else redis.nodes_manager.connection_kwargs
    timeout = kwargs.get("socket_timeout", DEFAULT_SOCKET_TIMEOUT)
    if timeout is None:
        return None
    return timeout - min(1.0, timeout / 2)


class Retrier:
    """Backoff between attempts after a connection error or timeout; gives up at `deadline` (monotonic)
    or after `reconnect_for` seconds without a successful command, re-raising the last error."""

    def __init__(self, deadline: float | None = None, reconnect_for: float = RECONNECT_FOR) -> None:
        self.deadline, self.reconnect_for = deadline, reconnect_for
        self.failing_since: float | None = None
        self.delay = BACKOFF_FIRST

    def succeeded(self) -> None:
        self.failing_since, self.delay = None, BACKOFF_FIRST

    async def failed(self, exc: Exception) -> None:
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
        if now - self.failing_since >= self.reconnect_for:
            raise exc
        if self.deadline is not None and now + self.delay >= self.deadline:
            raise exc
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, BACKOFF_MAX)


async def follow_stream(
    redis: aioredis.Redis,
    stream: str,
    after: str = "0",
    *,
    block: float = 5.0,
    count: int = 100,
    reconnect_for: float = RECONNECT_FOR,
) -> AsyncIterator[tuple[str, dict[bytes, bytes]]]:
    """Yield `(entry id, fields)` of `stream` after the id `after`, blocking for new ones, forever (the
    caller stops iterating). A dropped connection or a timeout is retried from the last id yielded."""
    cap = longest_block(redis)
    block_ms = max(1, int(1000 * (block if cap is None else min(block, cap))))
    retry = Retrier(reconnect_for=reconnect_for)
    last = after
    while True:
        try:
            reply = await redis.xread({stream: last}, block=block_ms, count=count)
        except TRANSIENT as exc:
            await retry.failed(exc)
            continue
        retry.succeeded()
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                last = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                yield last, fields


async def pop(
    redis: aioredis.Redis, key: str, timeout: float, *, reconnect_for: float = RECONNECT_FOR
) -> bytes | None:
    """BLPOP one value from `key`, waiting up to `timeout` seconds in all (None if nothing came), across
    quiet spells longer than the client's socket timeout and dropped connections."""
    deadline = time.monotonic() + timeout
    cap = longest_block(redis)
    retry = Retrier(deadline, reconnect_for)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        # BLPOP's 0 means forever: never round down to it
        wait = max(0.01, round(left if cap is None else min(left, cap), 2))
        try:
            reply = await redis.blpop([key], timeout=wait)
        except TRANSIENT as exc:
            await retry.failed(exc)
            continue
        retry.succeeded()
        if reply is not None:
            return reply[1]
