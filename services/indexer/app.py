"""The indexer: keeps a full-text index of the workspace's text files and answers searches.

Consumes `baton:objects` (group `indexer`): every `ObjectChanged` brings the key's index entry in line
with the bucket (indexed at the current version, replaced when overwritten, removed when deleted). No
polling: the only bucket listing is one sync at start-up, which catches up with whatever changed while no
indexer was running (or a lost index folder). Consumes `baton:search` (group `indexer`) and pushes each
answer to the request's reply list.
"""

from __future__ import annotations

import asyncio

from shared import streams
from shared.broker import create_group, make_broker, subscribe
from shared.errors import KeyValidationError, ObjectMissingError
from shared.events import ObjectChanged, utcnow
from shared.logging import configure_logging
from shared.search import REPLY_TTL_SECONDS, SearchRequest, SearchResponse
from shared.service import Resources, build_app, run
from shared.settings import Settings

from .index import TEXT_EXTENSIONS, SearchIndex, decode_text, extension, is_text

SERVICE = "indexer"
INDEX_FILE = "files.sqlite3"
ATTEMPTS = 3


def create_app(settings: Settings | None = None):
    settings = settings or Settings()
    log = configure_logging(SERVICE, settings.log_format, settings.log_level)
    broker = make_broker(settings, SERVICE)
    res = Resources(settings)
    holder: dict[str, SearchIndex] = {}
    broker.publisher(
        list=streams.search_reply("{request_id}"),
        title="search-replies",
        schema=SearchResponse,
        description="One answer per search request, on the list the request named (expires in a minute).",
    )

    def index() -> SearchIndex:
        return holder["index"]

    async def reconcile(key: str) -> str:
        """Make the index entry of `key` match the key's current version in the bucket."""
        head = await res.storage.head(key)
        if head is None:
            return "removed" if index().remove(key) else "absent"
        if not is_text(key, head.content_type) or (head.size or 0) > settings.index_max_bytes:
            return "removed" if index().remove(key) else "not_text"
        current = index().get(key)
        if current and current.version_id == head.version_id and current.etag == head.etag:
            return "unchanged"
        try:
            data = await res.storage.get(head)
        except ObjectMissingError:
            return "raced"  # changed again since the HEAD: that change has its own event
        text = decode_text(data)
        if text is None:
            return "removed" if index().remove(key) else "not_text"
        index().put(
            key,
            text,
            version_id=head.version_id,
            etag=head.etag,
            size=len(data),
            content_type=head.content_type,
        )
        return "indexed"

    async def reconcile_logged(key: str) -> None:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                outcome = await reconcile(key)
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
        """A key changed: index its current version, or forget it."""
        if event.bucket != settings.bucket:
            return
        await reconcile_logged(event.key)

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
        """Catch up with the bucket once: new or changed text files, and keys deleted meanwhile."""
        indexed = index().etags()
        seen: set[str] = set()
        checked = 0
        for ref in await res.storage.list(""):
            seen.add(ref.key)
            if ref.key in indexed and indexed[ref.key] == ref.etag:
                continue
            ext = extension(ref.key)
            if ref.key not in indexed and ext and ext not in TEXT_EXTENSIONS:
                continue  # binary by its name; a key without an extension may still be text
            await reconcile_logged(ref.key)
            checked += 1
        gone = [key for key in indexed if key not in seen]
        for key in gone:
            index().remove(key)
        log.info("index_synced", files=index().count(), checked=checked, removed=len(gone))

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

    @app.on_startup
    async def _open_index() -> None:
        holder["index"] = SearchIndex(settings.index_dir / INDEX_FILE)
        # The group exists before the sync lists the bucket, so a change landing during the sync is
        # delivered afterwards instead of falling between the listing and the group's creation.
        # From `$`: the listing covers what is already there (and old search requests are stale).
        for stream in (streams.OBJECTS, streams.SEARCH):
            await create_group(res.redis, stream, streams.INDEXER_GROUP, "$")
        await sync()

    @app.after_shutdown
    async def _close_index() -> None:
        if "index" in holder:
            holder.pop("index").close()

    return app


def main() -> None:
    settings = Settings()
    run(create_app(settings).run(), settings)
