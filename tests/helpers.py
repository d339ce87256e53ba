"""Helpers for end-to-end tests: submit, wait for the end, read a run's events and the DLQ, plain S3 and
webhook clients."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import redis.asyncio as aioredis

from baton import client
from shared import streams
from shared.broker import DATA_FIELD
from shared.events import DeadLetter, Event
from shared.settings import Settings


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
    r = aioredis.Redis.from_url(settings.redis_url)
    try:
        entries = await r.xrange(streams.DLQ, min=since)
    finally:
        await r.aclose()
    return [(i.decode(), DeadLetter.model_validate_json(f[DATA_FIELD.encode()])) for i, f in entries]


async def last_id(settings: Settings, stream: str) -> str:
    r = aioredis.Redis.from_url(settings.redis_url)
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
