"""The indexer: keeps a full-text index of the workspace's text files and answers searches.

Consumes `baton:objects` (group `indexer`): every `ObjectChanged` brings the key's index entry in line
with the bucket (indexed at the current version, replaced when overwritten, removed when deleted). Read
`BATON_BATCH` entries at a time and handled concurrently (one key's in order), each with one GET. No
polling: the only bucket listing is one sync at start-up, which catches up with whatever changed while no
indexer was running (or a lost index folder), in the background once the indexer is ready. Consumes
`baton:search` (group `indexer`) and pushes each answer to the request's reply list.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from shared import streams
from shared.batch import Batched, InOrder
from shared.broker import create_group, make_broker, subscribe
from shared.errors import KeyValidationError, ObjectMissingError
from shared.events import ObjectChanged, ObjectRef, utcnow
from shared.logging import configure_logging
from shared.search import REPLY_TTL_SECONDS, SearchRequest, SearchResponse
from shared.service import Resources, build_app, run
from shared.settings import Settings

from .index import TEXT_EXTENSIONS, SearchIndex, decode_text, extension, is_text

SERVICE = "indexer"
INDEX_FILE = "files.sqlite3"
ATTEMPTS = 3
SYNC_AT_ONCE = 32  # keys the start-up sync reads and indexes at once
PROGRESS_S = 5.0  # seconds between the sync's progress lines


def create_app(settings: Settings | None = None):
    settings = settings or Settings()
    log = configure_logging(SERVICE, settings.log_format, settings.log_level)
    broker = make_broker(settings, SERVICE)
    res = Resources(settings)
    holder: dict = {}  # the index, once open; the start-up sync's task
    broker.publisher(
        list=streams.search_reply("{request_id}"),
        title="search-replies",
        schema=SearchResponse,
        description="One answer per search request, on the list the request named (expires in a minute).",
    )

    def index() -> SearchIndex:
        return holder["index"]

    async def reconcile(key: str, event: ObjectChanged | None = None) -> str:
        """Make the index entry of `key` match the key's current version in the bucket: one GET of that
        version, its body read only if it is text, small enough, and not the version indexed already.
        With the `event` that announced a change, what it says is used first: a repeated notification of
        the version indexed, or a file the event shows not to be indexable, costs no request (a later
        version has an event of its own)."""
        current = index().get(key)
        if event is not None and event.created:
            same = current and (current.version_id, current.etag) == (event.version_id, event.etag)
            if same and event.version_id:
                return "unchanged"
            known = event.content_type is not None and event.size is not None
            if known and (not is_text(key, event.content_type) or event.size > settings.index_max_bytes):
                return "removed" if index().remove(key) else "not_text"
        try:
            async with res.storage.open(ObjectRef(bucket=settings.bucket, key=key)) as reader:
                now = reader.ref
                if not is_text(key, now.content_type) or reader.size > settings.index_max_bytes:
                    return "removed" if index().remove(key) else "not_text"
                if current and (current.version_id, current.etag) == (now.version_id, now.etag):
                    return "unchanged"
                data = await reader.read()
        except ObjectMissingError:
            return "removed" if index().remove(key) else "absent"
        text = decode_text(data)
        if text is None:
            return "removed" if index().remove(key) else "not_text"
        index().put(
            key,
            text,
            version_id=now.version_id,
            etag=now.etag,
            size=len(data),
            content_type=now.content_type,
        )
        return "indexed"

    async def reconcile_logged(key: str, event: ObjectChanged | None = None) -> None:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                outcome = await reconcile(key, event)
            except KeyValidationError as exc:
                log.warning("index_skipped", key=key, reason=str(exc))
                return
            except Exception as exc:  # S3 unreachable or erroring: retry, then leave it to the next sync
                if attempt == ATTEMPTS:
                    log.error("index_failed", key=key, error=repr(exc))
                    return
                await asyncio.sleep(0.2 * 3**attempt)
                continue
            log.info("index_updated", key=key, outcome=outcome)
            return

    async def on_object(event: ObjectChanged) -> None:
        """A key changed: index its current version, or forget it (one key's changes one at a time, in
        the order they were read; other keys meanwhile)."""
        if event.bucket != settings.bucket:
            return
        await in_order.run(event.key, lambda: reconcile_logged(event.key, event))

    async def on_search(event: SearchRequest) -> None:
        """Run one query and push the answer to the asker's reply list."""
        if event.deadline is not None and event.deadline < utcnow():
            log.info("search_expired", request_id=event.request_id)
            return
        try:
            hits = index().search(
                event.query, prefix=event.prefix, prefixes=event.prefixes, limit=event.limit
            )
            response = SearchResponse(request_id=event.request_id, query=event.query, hits=hits)
        except ValueError as exc:
            response = SearchResponse(request_id=event.request_id, query=event.query, error=str(exc))
        async with res.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(event.reply_to, response.model_dump_json())
            pipe.expire(event.reply_to, REPLY_TTL_SECONDS)
            await pipe.execute()
        log.info(
            "search_answered", request_id=event.request_id, hits=len(response.hits), error=response.error
        )

    async def sync() -> None:
        """Catch up with the bucket once: new or changed text files, and keys deleted meanwhile. Runs
        beside the live changes (each key's through `in_order`, so the two never overlap on a key, and a
        key either touched is brought to its current version), up to `SYNC_AT_ONCE` keys at a time, with
        progress in the log every `PROGRESS_S` seconds: a lost index over 100,000 files takes minutes, and
        the indexer answers searches (from what is indexed so far) and takes changes meanwhile."""
        indexed = index().etags()
        listing = await res.storage.list("")
        seen = {ref.key for ref in listing}
        todo = []
        for ref in listing:
            if ref.key in indexed and indexed[ref.key] == ref.etag:
                continue
            ext = extension(ref.key)
            if ref.key not in indexed and ext and ext not in TEXT_EXTENSIONS:
                continue  # binary by its name; a key without an extension may still be text
            todo.append(ref.key)
        todo += [key for key in indexed if key not in seen]  # gone: a GET finds it so, unless it came back
        log.info("index_sync_started", files=len(listing), indexed=len(indexed), to_check=len(todo))
        gate = asyncio.Semaphore(SYNC_AT_ONCE)
        done = 0
        last = time.monotonic()

        async def check(key: str) -> None:
            nonlocal done, last
            async with gate:
                await in_order.run(key, lambda: reconcile_logged(key))
            done += 1
            if time.monotonic() - last >= PROGRESS_S:
                last = time.monotonic()
                log.info("index_sync_progress", checked=done, to_check=len(todo))

        await asyncio.gather(*(check(key) for key in todo))
        log.info("index_synced", files=index().count(), checked=len(todo))

    async def sync_logged() -> None:
        try:
            await sync()
        except Exception as exc:  # noqa: BLE001 - the live changes go on; the next start syncs again
            log.error("index_sync_failed", error=repr(exc))

    in_order = InOrder()
    batched = Batched(settings, SERVICE) if settings.batch else None
    if batched is not None:  # a wide plan's outputs land together: many files read and indexed at once
        batched.subscribe(broker, streams.OBJECTS, streams.INDEXER_GROUP, ObjectChanged, on_object, start="$")
    else:
        subscribe(
            broker,
            streams.OBJECTS,
            streams.INDEXER_GROUP,
            settings,
            on_object,
            start="$",
            title="objects",
            description="Bucket changes from the notifier.",
        )
    subscribe(
        broker,
        streams.SEARCH,
        streams.INDEXER_GROUP,
        settings,
        on_search,
        start="$",
        title="search",
        description="Full-text queries; each is answered on its `reply_to` list.",
    )
    app = build_app(broker, res, log, redis=True, consumer=settings.consumer, index=str(settings.index_dir))
    if batched is not None:
        batched.attach(app)

    @app.on_startup
    async def _open_index() -> None:
        holder["index"] = SearchIndex(settings.index_dir / INDEX_FILE)
        # The group exists before the sync lists the bucket, so a change landing during the sync is
        # delivered afterwards instead of falling between the listing and the group's creation.
        # From `$`: the listing covers what is already there (and old search requests are stale).
        for stream in (streams.OBJECTS, streams.SEARCH):
            await create_group(res.redis, stream, streams.INDEXER_GROUP, "$")

    @app.after_startup
    async def _sync() -> None:
        holder["sync"] = asyncio.create_task(sync_logged())

    @app.on_shutdown
    async def _stop_sync() -> None:
        task = holder.pop("sync", None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @app.after_shutdown
    async def _close_index() -> None:
        if "index" in holder:
            holder.pop("index").close()

    return app


def main() -> None:
    settings = Settings()
    run(create_app(settings).run(), settings)
