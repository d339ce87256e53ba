"""Helpers for end-to-end tests: submit, wait for the end, read a run's events and the DLQ, plain S3 and
webhook clients."""

from __future__ import annotations

import asyncio
import os
import urllib.error
import urllib.request
from pathlib import Path

import boto3
from prometheus_client.parser import text_string_to_metric_families

from baton import client
from shared import streams
from shared.broker import DATA_FIELD
from shared.events import DeadLetter, Event, ObjectChanged
from shared.redisconn import connect
from shared.settings import Settings


def cli_env(settings: Settings) -> dict[str, str]:
    """This process's environment with `settings`' servers, credentials and bucket: for a `baton` command."""
    return {
        **os.environ,
        "REDIS_URL": settings.redis_url,
        "S3_ENDPOINT_URL": settings.s3_endpoint_url,
        "S3_ACCESS_KEY": settings.s3_access_key,
        "S3_SECRET_KEY": settings.s3_secret_key,
        "BATON_BUCKET": settings.bucket,
    }


async def wait_for_end(settings: Settings, run_id: str, timeout: float = 30) -> list[Event]:
    """All events of a run, once it has ended."""
    events: list[Event] = []

    async def collect():
        async for event in client.follow(settings, run_id, block_ms=1000):
            events.append(event)

    try:
        await asyncio.wait_for(collect(), timeout)
    except TimeoutError:
        raise AssertionError(
            f"run {run_id} did not end in {timeout}s; events: {[e.type for e in events]}"
        ) from None
    return events


async def run(
    settings: Settings,
    workflow: str,
    inputs: dict[str, Path] | None = None,
    params: dict | None = None,
    timeout: float = 30,
) -> tuple[str, list[Event]]:
    run_id = await client.submit(settings, workflow, inputs or {}, params)
    return run_id, await wait_for_end(settings, run_id, timeout)


async def dead_letters(settings: Settings, since: str = "0") -> list[tuple[str, DeadLetter]]:
    r = connect(settings.redis_url)
    try:
        entries = await r.xrange(streams.DLQ, min=since)
    finally:
        await r.aclose()
    return [(i.decode(), DeadLetter.model_validate_json(f[DATA_FIELD.encode()])) for i, f in entries]


async def last_id(settings: Settings, stream: str) -> str:
    r = connect(settings.redis_url)
    try:
        entries = await r.xrevrange(stream, count=1)
    finally:
        await r.aclose()
    return entries[0][0].decode() if entries else "0"


def of_type(events: list[Event], type_: str) -> list[Event]:
    return [e for e in events if e.type == type_]


def s3_client(settings: Settings):
    """A plain boto3 S3 client, as any user's tool would be (not Baton's Storage)."""
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        aws_access_key_id=settings.s3_access_key,
        aws_secret_access_key=settings.s3_secret_key,
        region_name=settings.s3_region,
    )


def post_webhook(url: str, body: bytes, token: str | None) -> int:
    """POST a MinIO-style notification body; the HTTP status."""
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _entry_id(value) -> tuple[int, int]:
    ms, _, seq = (value.decode() if isinstance(value, bytes) else str(value)).partition("-")
    return int(ms), int(seq or 0)


async def wait_handled(
    settings: Settings, stream: str, group: str, entry_id: str, timeout: float = 10
) -> None:
    """Until `group` has read `entry_id` (its last-delivered id is at or past it) and acknowledged it.

    An empty XPENDING alone proves nothing: it also holds before the group has read the entry.
    """
    r = connect(settings.redis_url)
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            groups = {g["name"].decode(): g for g in await r.xinfo_groups(stream)}
            read = group in groups and _entry_id(groups[group]["last-delivered-id"]) >= _entry_id(entry_id)
            if read and not await r.xpending_range(stream, group, entry_id, entry_id, 1):
                return
            if asyncio.get_running_loop().time() > deadline:
                state = "read but still pending" if read else "not read"
                raise AssertionError(f"{stream} entry {entry_id} was {state} by group {group!r}")
            await asyncio.sleep(0.05)
    finally:
        await r.aclose()


def s3_notification(
    key: str, version: str = "v1", etag: str = "e1", sequencer: str | None = "17F0A1B2C3D4E5F6"
) -> dict:
    """A MinIO webhook body with one S3 event record."""
    obj = {"key": key, "size": 3, "eTag": etag, "versionId": version, "sequencer": sequencer}
    record = {"eventName": "s3:ObjectCreated:Put", "s3": {"bucket": {"name": "baton"}, "object": obj}}
    return {"EventName": "s3:ObjectCreated:Put", "Key": f"baton/{key}", "Records": [record]}


async def objects_since(settings: Settings, since: str) -> list[tuple[str, ObjectChanged]]:
    """(entry id, event) of the ObjectChanged entries after `since`."""
    r = connect(settings.redis_url)
    try:
        entries = await r.xrange(streams.OBJECTS, min=f"({since}" if since != "0" else "-")
    finally:
        await r.aclose()
    return [(i.decode(), ObjectChanged.model_validate_json(f[DATA_FIELD.encode()])) for i, f in entries]


async def per_message_consumer(settings: Settings, stream: str, group: str, handler):
    """`handler` subscribed on FastStream's per-message path (as the router is), its group created on
    `stream` and the broker started; returns (broker, its redis client). Stop it with `broker.stop()`."""
    from shared.broker import make_broker, subscribe

    broker = make_broker(settings, "test")
    subscribe(broker, stream, group, settings, handler)
    await broker.connect()
    redis = broker._connection
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
        await broker.start()
    except BaseException:
        await broker.stop()
        raise
    return broker, redis


# Prometheus text from a service's /metrics, parsed with prometheus-client's own parser.
Samples = dict[tuple[str, frozenset], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(scrapes: dict[str, Samples], name: str, service: str | None = None, **labels) -> float:
    """The sum of `name` over every process (of `service`) whose sample has `labels`."""
    want = set(labels.items())
    return sum(
        value
        for handle, samples in scrapes.items()
        if service is None or handle.startswith(f"{service}-")
        for (sample, sample_labels), value in samples.items()
        if sample == name and want <= sample_labels
    )
