"""Recovery of messages a consumer took but never acknowledged (it crashed, or its handler failed).

FastStream reads only new entries (`>`), and its nack/reject do nothing on Redis, so a message left
pending would stay there forever. Each service runs one `Reclaimer`: every few seconds it claims, for
each of its consumer groups, the entries idle for longer than `reclaim_idle_ms` (XAUTOCLAIM; running
handlers refresh their entry's idle time as a heartbeat), and delivers them to the same handler. An
entry delivered more than `max_deliveries` times goes to the dead-letter stream with its history.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from . import metrics, streams
from .broker import (
    CURRENT_CLAIM,
    CURRENT_ENTRY,
    Reclaimed,
    Subscription,
    client_of,
    dead_letter_event,
    decode_event,
    errors_key,
    keep_claimed,
    payload_of,
    record_error,
    registry,
)
from .logging import bind_event
from .settings import Settings

log = structlog.get_logger()


class Reclaimer:
    """Claims and redelivers idle pending messages of every subscription of one broker."""

    def __init__(self, broker, settings: Settings, service: str) -> None:
        self.broker = broker
        self.settings = settings
        self.service = service
        self._task: asyncio.Task | None = None

    @property
    def interval(self) -> float:
        return max(self.settings.reclaim_idle_ms / 2000, 0.1)

    def start(self) -> None:
        if registry(self.broker) and self._task is None:
            self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            for sub in registry(self.broker):
                try:
                    await self.sweep(sub)
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - Redis briefly away: try again next round
                    log.warning("reclaim_failed", stream=sub.stream, group=sub.group, exc_info=True)

    async def sweep(self, sub: Subscription) -> int:
        """Claim and handle this group's idle messages; returns how many were claimed."""
        redis = client_of(self.broker)
        start, claimed_total = "0-0", 0
        while True:
            reply = await redis.xautoclaim(
                sub.stream,
                sub.group,
                self.settings.consumer,
                self.settings.reclaim_idle_ms,
                start_id=start,
                count=10,
            )
            start, entries = reply[0], reply[1]
            if not entries:
                return claimed_total
            metrics.RECLAIMED.labels(sub.stream).inc(len(entries))
            # Claimed entries are handled one by one: until its turn comes, each one's idle time is reset
            # with the rest (the heartbeat), or another consumer would claim it again meanwhile and both
            # would run it (found by make chaos: a slow first entry, e.g. while MinIO restarts).
            waiting = [entry_id for entry_id, _fields in entries]
            heartbeat = asyncio.create_task(
                keep_claimed(
                    redis,
                    sub.stream,
                    sub.group,
                    self.settings.consumer,
                    waiting.copy,
                    self.settings.heartbeat_s,
                )
            )
            try:
                for entry_id, fields in entries:
                    claimed_total += 1
                    await self.handle(sub, entry_id.decode(), fields)
                    waiting.remove(entry_id)
            finally:
                heartbeat.cancel()
            if start in (b"0-0", "0-0"):
                return claimed_total

    async def deliveries(self, sub: Subscription, entry_id: str) -> int:
        info = await client_of(self.broker).xpending_range(sub.stream, sub.group, entry_id, entry_id, 1)
        return int(info[0]["times_delivered"]) if info else 1

    async def handle(self, sub: Subscription, entry_id: str, fields: dict | None) -> None:
        redis = client_of(self.broker)
        raw = payload_of(fields or {})
        count = await self.deliveries(sub, entry_id)
        if count > self.settings.max_deliveries:
            last = await redis.hget(errors_key(sub.stream, sub.group), entry_id)
            last = last.decode() if last else "unknown (the consumer died while handling it)"
            await self.dead_letter(
                sub,
                entry_id,
                raw,
                f"failed {count - 1} deliveries (max_deliveries={self.settings.max_deliveries}); "
                f"last error: {last}",
            )
            return
        event, reason = decode_event(raw, sub.adapter, self.settings.max_event_bytes)
        if reason is not None:
            await self.dead_letter(sub, entry_id, raw, reason)
            return
        log.info("redelivering", stream=sub.stream, group=sub.group, message_id=entry_id, delivery=count)
        bind_event(event)
        started = time.monotonic()
        try:
            CURRENT_ENTRY.set(entry_id)
            CURRENT_CLAIM.set((redis, sub.stream, sub.group, self.settings.consumer))
            await sub.handler(event)
        except Reclaimed as exc:  # another consumer has it now
            log.warning("entry_reclaimed_meanwhile", stream=sub.stream, message_id=entry_id, error=str(exc))
            return
        except Exception as exc:  # stays pending; claimed again after reclaim_idle_ms
            await record_error(redis, sub.stream, sub.group, entry_id, exc)
            log.warning(
                "redelivery_failed", stream=sub.stream, message_id=entry_id, delivery=count, error=str(exc)
            )
            return
        await redis.xack(sub.stream, sub.group, entry_id)
        await redis.hdel(errors_key(sub.stream, sub.group), entry_id)
        log.info(
            "redelivered",
            stream=sub.stream,
            message_id=entry_id,
            seconds=round(time.monotonic() - started, 3),
        )

    async def dead_letter(self, sub: Subscription, entry_id: str, raw: bytes, reason: str) -> None:
        letter = dead_letter_event(sub.stream, sub.group, entry_id, self.service, reason, raw)
        await self.broker.publish(letter, stream=streams.DLQ)
        metrics.DEAD_LETTERED.labels(sub.stream).inc()
        redis = client_of(self.broker)
        await redis.xack(sub.stream, sub.group, entry_id)
        await redis.hdel(errors_key(sub.stream, sub.group), entry_id)
        log.warning("dead_lettered", stream=sub.stream, message_id=entry_id, reason=reason)
