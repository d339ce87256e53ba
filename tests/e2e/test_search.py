"""Files are indexed as they land: upload with any S3 client, find it by its words, ranked, in a second."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pytest

from baton import client
from shared import streams
from shared.broker import DATA_FIELD
from shared.redisconn import connect
from shared.search import SearchResponse
from shared.settings import Settings
from tests.helpers import last_id, s3_client

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def word() -> str:
    """A word no other file contains."""
    return "zq" + uuid.uuid4().hex[:12]


async def keys_for(settings: Settings, query: str, prefix: str = "") -> list[str]:
    return [hit.key for hit in await client.search(settings, query, prefix=prefix)]


async def eventually(check, timeout: float) -> float:
    """Seconds until `check()` is true; fails after `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if await check():
            return time.monotonic() - start
        await asyncio.sleep(0.02)
    raise AssertionError(f"not true after {timeout}s")


async def test_uploaded_file_is_findable_within_a_second_then_replaced_then_gone(settings, indexer):
    bucket, key = settings.bucket, f"shared/search-{uuid.uuid4().hex[:8]}/notes.md"
    old, new = word(), word()
    put = s3_client(settings).put_object(
        Bucket=bucket, Key=key, Body=f"# Notes\n\nThe {old} protocol hands work over.\n".encode()
    )

    async def found_old():
        return key in await keys_for(settings, old)

    assert await eventually(found_old, timeout=1.0) <= 1.0
    (hit,) = await client.search(settings, old)
    assert hit.version_id == put["VersionId"] and hit.etag == put["ETag"].strip('"')
    assert f"**{old}**" in hit.snippet and hit.score > 0

    s3_client(settings).put_object(Bucket=bucket, Key=key, Body=f"# Notes\n\nNow about {new}.\n".encode())

    async def found_new():
        return key in await keys_for(settings, new)

    await eventually(found_new, timeout=1.0)
    assert await keys_for(settings, old) == []  # the overwritten text no longer matches

    s3_client(settings).delete_object(Bucket=bucket, Key=key)  # a delete marker: the key is gone

    async def gone():
        return key not in await keys_for(settings, new)

    await eventually(gone, timeout=1.0)


async def test_hits_are_ranked_filtered_by_prefix_and_only_text_is_indexed(settings, indexer):
    term, folder = word(), f"shared/rank-{uuid.uuid4().hex[:8]}/"
    client_s3 = s3_client(settings)
    client_s3.put_object(
        Bucket=settings.bucket,
        Key=f"{folder}a.md",
        Body=f"{term} once, among many other words here.".encode(),
    )
    client_s3.put_object(
        Bucket=settings.bucket, Key=f"{folder}b.txt", Body=f"{term} {term} {term}: the topic.".encode()
    )
    client_s3.put_object(
        Bucket=settings.bucket, Key=f"{folder}c.json", Body=json.dumps({"title": term, "n": 1}).encode()
    )
    client_s3.put_object(
        Bucket=settings.bucket, Key=f"{folder}d.csv", Body=f"name,value\n{term},2\n".encode()
    )
    client_s3.put_object(Bucket=settings.bucket, Key=f"{folder}e.png", Body=b"\x89PNG\r\n" + term.encode())
    client_s3.put_object(Bucket=settings.bucket, Key=f"elsewhere/{term}.md", Body=f"{term}".encode())

    async def all_landed():
        return len(await keys_for(settings, term)) == 5

    await eventually(all_landed, timeout=5)
    hits = await client.search(settings, term, prefix=folder)
    keys = [h.key for h in hits]
    assert sorted(keys) == sorted(f"{folder}{n}" for n in ("a.md", "b.txt", "c.json", "d.csv"))
    assert keys[0] == f"{folder}b.txt"  # three mentions in a short file beat one in a longer file
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # phrases and punctuation are not query syntax
    assert await keys_for(settings, f'"{term} once"') == [f"{folder}a.md"]
    assert await keys_for(settings, f"{term} (topic) -") == [f"{folder}b.txt"]
    assert await keys_for(settings, f"{term[:8]}*", prefix=folder)  # prefix query
    assert await client.search(settings, "!!! ---") == []


async def test_changes_made_while_the_indexer_was_down_are_caught_up_at_start(settings, indexer):
    term, folder = word(), f"shared/offline-{uuid.uuid4().hex[:8]}/"
    client_s3 = s3_client(settings)
    client_s3.put_object(Bucket=settings.bucket, Key=f"{folder}stays.md", Body=f"{term} stays".encode())
    client_s3.put_object(Bucket=settings.bucket, Key=f"{folder}goes.md", Body=f"{term} goes".encode())

    async def both():
        return len(await keys_for(settings, term)) == 2

    await eventually(both, timeout=5)
    indexer.stop()
    r = connect(settings.redis_url)
    try:
        since = await last_id(settings, streams.OBJECTS)
        client_s3.delete_object(Bucket=settings.bucket, Key=f"{folder}goes.md")
        client_s3.put_object(Bucket=settings.bucket, Key=f"{folder}new.md", Body=f"{term} new".encode())

        async def both_published():
            entries = await r.xrange(streams.OBJECTS, min=since)
            keys = {json.loads(f[DATA_FIELD.encode()])["key"] for _i, f in entries}
            return {f"{folder}goes.md", f"{folder}new.md"} <= keys

        await eventually(both_published, timeout=10)
        # Those events are lost to the indexer (as if trimmed, or an index restored from before them):
        # only the listing at start-up can catch up now.
        await r.xgroup_setid(streams.OBJECTS, streams.INDEXER_GROUP, "$")
    finally:
        indexer.start()
        await r.aclose()

    async def caught_up():  # (the sync runs once the indexer is ready, beside the live changes)
        return sorted(await keys_for(settings, term)) == [f"{folder}new.md", f"{folder}stays.md"]

    await eventually(caught_up, timeout=10)


def test_baton_search_prints_ranked_hits(settings, indexer, tmp_path):
    term, key = word(), f"shared/cli-{uuid.uuid4().hex[:8]}.md"
    s3_client(settings).put_object(Bucket=settings.bucket, Key=key, Body=f"A note on {term}.".encode())
    env = {
        **os.environ,
        "REDIS_URL": settings.redis_url,
        "S3_ENDPOINT_URL": settings.s3_endpoint_url,
        "BATON_BUCKET": settings.bucket,
    }
    for _ in range(50):
        done = subprocess.run(
            [sys.executable, "-m", "baton.cli", "search", term, "--prefix", "shared/", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert done.returncode == 0, done.stderr
        hits = json.loads(done.stdout)
        if hits:
            break
        time.sleep(0.1)
    assert [h["key"] for h in hits] == [key]
    assert set(hits[0]) >= {"key", "version_id", "snippet", "score"}
    plain = subprocess.run(
        [sys.executable, "-m", "baton.cli", "search", term],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert plain.returncode == 0 and key in plain.stdout and f"**{term}**" in plain.stdout


async def test_search_wire_format_from_a_plain_redis_client(settings, indexer):
    """XADD a request, BLPOP the reply: what any language does."""
    term, key = word(), f"shared/wire-{uuid.uuid4().hex[:8]}.md"
    s3_client(settings).put_object(Bucket=settings.bucket, Key=key, Body=f"wire {term}".encode())
    r = connect(settings.redis_url)
    try:
        for _ in range(50):
            reply_to = streams.search_reply(uuid.uuid4().hex)
            payload = json.dumps({"type": "search.requested", "query": term, "reply_to": reply_to})
            await r.xadd(streams.SEARCH, {DATA_FIELD: payload})
            _list, raw = await r.blpop([reply_to], timeout=5)
            response = SearchResponse.model_validate_json(raw)
            if response.hits:
                break
            await asyncio.sleep(0.05)
        assert [h.key for h in response.hits] == [key]
        # a request that names a reply key outside baton:search:reply:* is refused (dead-lettered)
        since = (await r.xrevrange(streams.DLQ, count=1) or [(b"0", {})])[0][0]
        bad = {"type": "search.requested", "query": term, "reply_to": "baton:{r}:state"}
        entry = (await r.xadd(streams.SEARCH, {DATA_FIELD: json.dumps(bad)})).decode()

        async def dead_lettered():
            letters = await r.xrange(streams.DLQ, min=since)
            return any(json.loads(f[DATA_FIELD.encode()]).get("message_id") == entry for _i, f in letters)

        await eventually(dead_lettered, timeout=5)
        assert await r.exists("baton:{r}:state") == 0
    finally:
        await r.aclose()


async def test_a_large_catch_up_runs_once_the_indexer_is_ready_and_misses_nothing(settings, indexer):
    """1,500 files written while the indexer was down (their events lost to it): it reports ready and
    answers searches while its start-up sync works through them, 32 at a time, then every one is found."""
    term, folder, n = word(), f"shared/catch-up-{uuid.uuid4().hex[:8]}/", 1500
    client_s3 = s3_client(settings)
    indexer.stop()
    r = connect(settings.redis_url)
    try:
        since = await last_id(settings, streams.OBJECTS)

        def put(i: int) -> None:
            body = f"# {i}\n\n{term}x{i} and the words every report has\n".encode()
            client_s3.put_object(Bucket=settings.bucket, Key=f"{folder}doc-{i}.md", Body=body)

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(put, range(n)))

        async def all_published():
            entries = await r.xrange(streams.OBJECTS, min=since)
            return sum(json.loads(f[DATA_FIELD.encode()])["key"].startswith(folder) for _i, f in entries) >= n

        await eventually(all_published, timeout=30)
        await r.xgroup_setid(streams.OBJECTS, streams.INDEXER_GROUP, "$")  # lost: only the sync can help
    finally:
        indexer.start()
        await r.aclose()
    await client.search(settings, f"{term}x0")  # answered at once, whatever the sync has reached
    answered = time.time()
    log = indexer.stack.log_path(indexer.handle)

    def logged(event: str) -> list[dict]:
        lines = [json.loads(line) for line in log.read_text().splitlines() if f'"{event}"' in line]
        return [entry for entry in lines if entry.get("event") == event]

    async def synced():
        return bool(logged("index_synced"))

    await eventually(synced, timeout=120)
    started, done = logged("index_sync_started")[0], logged("index_synced")[0]
    assert started["to_check"] >= n
    assert answered < datetime.fromisoformat(done["timestamp"]).timestamp()
    for i in range(0, n, 50):  # a sample, each by the word only it has
        assert await keys_for(settings, f"{term}x{i}") == [f"{folder}doc-{i}.md"]
