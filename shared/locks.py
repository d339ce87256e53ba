"""Lease locks with fencing tokens, for agents that must hold a file across several steps.

`If-Match` protects one read-modify-write. An agent that reads, thinks for a while and writes several
times takes a lease instead: `acquire` returns a fencing token (a number that only grows); every write
under the lease checks and renews the lease in one Redis step (still held, with that token), then writes
with If-Match on the version it last saw (or If-None-Match: * for a new object), stamping the token on
the version it writes (metadata `fence`).

What that guarantees, and what not: a holder whose lease expired or was taken over before it writes is
refused (LeaseLostError), and no write replaces a version its writer had not seen (412). The check and
the PUT are two steps on two systems and S3 cannot compare a token, so a holder that stalls between them
for longer than its lease, while the next holder has not written yet, still lands that one write; the
next holder's conditional write then fails (PreconditionFailedError) and it must re-read
(`tests/e2e/test_reliability.py` shows both).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import redis.asyncio as aioredis

from .errors import BatonError
from .events import ObjectRef
from .storage import Storage

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end
"""


class LeaseLostError(BatonError):
    """The lease expired or was taken over: the holder may no longer write."""


def lock_key(key: str) -> str:
    return f"baton:lock:{{{key}}}"


@dataclass
class Lease:
    key: str
    token: int
    holder: str
    ttl_ms: int

    @property
    def value(self) -> str:
        return f"{self.token}:{self.holder}"


class LeaseLocks:
    """Leases on object keys, kept in Redis."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis

    async def acquire(self, key: str, ttl_ms: int = 30_000, holder: str | None = None) -> Lease | None:
        """Take the lease on `key` if it is free; None if someone holds it."""
        token = await self.redis.incr(f"baton:fence:{{{key}}}")
        lease = Lease(key, token, holder or uuid.uuid4().hex, ttl_ms)
        if await self.redis.set(lock_key(key), lease.value, nx=True, px=ttl_ms):
            return lease
        return None

    async def renew(self, lease: Lease) -> None:
        if not await self.redis.eval(_RENEW, 1, lock_key(lease.key), lease.value, lease.ttl_ms):
            raise LeaseLostError(f"lease on {lease.key!r} (token {lease.token}) expired or was taken over")

    async def release(self, lease: Lease) -> bool:
        return bool(await self.redis.eval(_RELEASE, 1, lock_key(lease.key), lease.value))

    async def check(self, lease: Lease) -> None:
        current = await self.redis.get(lock_key(lease.key))
        if current is None or current.decode() != lease.value:
            raise LeaseLostError(f"lease on {lease.key!r} (token {lease.token}) expired or was taken over")

    async def put(self, storage: Storage, lease: Lease, data: bytes, if_match: str | None, **kw) -> ObjectRef:
        """Write under the lease: refused if the lease is gone, or if the object changed since `if_match`.

        The fencing token is stored with the object (metadata `fence`), so a reader can tell which lease
        holder wrote a version.
        """
        await self.renew(lease)  # atomically: still ours, and good for another ttl
        metadata = {**kw.pop("metadata", {}), "fence": str(lease.token)}
        if if_match:
            return await storage.put(lease.key, data, if_match=if_match, metadata=metadata, **kw)
        return await storage.put(lease.key, data, if_none_match=True, metadata=metadata, **kw)
