"""Which results partitions each supervisor replica reads: a run's outcomes go to one replica.

Every replica may handle any event: a commit checks the run's revision, so two replicas acting on one run
cost a retry, never a wrong step. But each replica keeps the runs it moved last parsed in memory
(`BATON_STATE_CACHE`), and with every replica reading every partition a run's outcomes alternated between
them: the next hop found its kept state stale, its commit was refused, and it read the run and decided
again. Two replicas then did more work than one (a sustained sweep: capacity 650 runs/s against 1,250).

So the replicas share the partitions out. Each one beats every `BEAT_S` into one sorted set
(`baton:supervisors`, scored by the Redis server's clock), which also drops members silent for `TTL_S`;
the live members, sorted by name, take partition p in turn (`p % n`), and the submissions (`baton:runs`)
go with partition 0. A replica that stops leaves the set at once; one that dies is dropped after `TTL_S`,
and its share goes to the others (its unacknowledged entries, as before, to the reclaimer). Until every
replica has seen a change (one beat) a partition may have two readers, or none for a moment: harmless
either way, since ownership only keeps state warm, it does not decide who may commit. A replica that
cannot reach Redis keeps reading what it had. Replicas past the number of partitions stand by (they still
take due timers and handle bucket changes and dead letters), ready to take a share: a killed replica's
goes to the others within `TTL_S` + `BEAT_S`.

With one partition (the default) a second replica is a hot standby: on this 2-core machine, where the
workers and Redis already use what one supervisor leaves, two active replicas cost more CPU per run than
one and lowered the sustained capacity; a standby costs nothing. `BATON_RESULT_PARTITIONS` >= replicas
divides the work, for machines with cores to spare. (`BATON_BATCH=0`, FastStream's per-message path: every
replica reads everything, as before.)
"""

from __future__ import annotations

import asyncio
import contextlib

from shared import metrics, streams

BEAT_S = 1.0
TTL_S = 3.0
# Beat (scored by the server's clock, in ms), drop members silent for ARGV[2] ms, return the live ones.
BEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""


def assigned(members: list[str], me: str, partitions: int) -> set[int]:
    """The partitions `me` reads when `members` are live: partition p goes to the p % n-th by name."""
    live = sorted(set(members) | {me})
    i = live.index(me)
    return {p for p in range(partitions) if p % len(live) == i}


class Shares:
    """This replica's share of the results partitions, kept up to date by `run` (a task)."""

    def __init__(
        self,
        me: str,
        partitions: int,
        log,
        beat_s: float = BEAT_S,
        ttl_s: float = TTL_S,
        key: str = streams.SUPERVISORS,
    ):
        self.me, self.partitions, self.log, self.key = me, partitions, log, key
        self.redis = None  # (given to `start`)
        self.beat_s, self.ttl_s = beat_s, ttl_s
        self.members: list[str] = []
        self.owned: set[int] = set()
        self._events = [asyncio.Event() for _ in range(partitions)]

    async def beat(self) -> None:
        """Say this replica is alive and take its share of what the live members divide."""
        raw = await self.redis.eval(BEAT, 1, self.key, self.me, int(self.ttl_s * 1000))
        members = sorted(m.decode() if isinstance(m, bytes) else m for m in raw)
        owned = assigned(members, self.me, self.partitions)
        if owned != self.owned or members != self.members:
            self.log.info(
                "results_shared",
                replicas=len(members),
                partitions=sorted(owned),
                of=self.partitions,
                standing_by=not owned,
            )
        self.members = members
        self._take(owned)

    def _take(self, owned: set[int]) -> None:
        """Read `owned` from now on: open their gates, close the others'."""
        self.owned = owned
        metrics.PARTITIONS_READ.set(len(owned))
        for p, event in enumerate(self._events):
            if p in owned:
                event.set()
            else:
                event.clear()

    async def start(self, redis) -> None:
        """The first beat, on `redis`; if Redis does not answer, read every partition until a beat does."""
        self.redis = redis
        try:
            await self.beat()
        except Exception as exc:  # noqa: BLE001
            self.log.warning("results_share_beat_failed", error=str(exc))
            self._take(set(range(self.partitions)))

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.beat_s)
            try:
                await self.beat()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis away: keep reading what we had
                self.log.warning("results_share_beat_failed", error=str(exc))

    def gate(self, partition: int):
        """The partition consumer's gate (`BatchConsumer(gate=...)`): a call that returns at once while the
        partition is this replica's, and otherwise waits until it is."""
        event = self._events[partition]

        async def owned() -> None:
            if not event.is_set():
                await event.wait()

        return owned

    async def leave(self) -> None:
        """Leave the set, so the others take this replica's partitions at their next beat."""
        with contextlib.suppress(Exception):
            await self.redis.zrem(self.key, self.me)
