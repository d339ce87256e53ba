"""Full-text search over the workspace: the request/reply contract between clients and the indexer.

The indexer owns the index (one SQLite FTS5 file on its own disk); anyone who can reach Redis can search
it, from any language:

1. XADD `baton:search` with one field, `__data__`, holding a `SearchRequest` as JSON, whose `reply_to` is
   `baton:search:reply:<request_id>`;
2. BLPOP that list: the indexer pushes one `SearchResponse` there (the list expires after a minute).

A request past its `deadline` is dropped unanswered: its asker has given up.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Literal

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field

from . import streams, waits
from .broker import DATA_FIELD
from .errors import BatonError
from .events import ID_PATTERN, new_id, utcnow

REPLY_TTL_SECONDS = 60
SEARCH_STREAM_MAXLEN = 10_000  # requests are transient: keep the stream short (approximate trim)
REPLY_PATTERN = r"^baton:search:reply:[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class SearchRequest(BaseModel):
    """A full-text query over the workspace, answered on `reply_to`."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["search.requested"] = "search.requested"
    schema_version: Literal[1] = 1
    request_id: str = Field(
        default_factory=new_id, pattern=ID_PATTERN, description="Unique id of the request."
    )
    query: str = Field(
        min_length=1,
        max_length=1000,
        description='Words (all must match), "quoted phrases", word* for a prefix, OR between alternatives.',
    )
    prefix: str = Field("", max_length=1024, description="Only keys starting with this prefix.")
    prefixes: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="If not empty, only keys under one of these prefixes (the asker's read permissions).",
    )
    limit: int = Field(10, ge=1, le=100, description="Most hits returned, best first.")
    reply_to: str = Field(pattern=REPLY_PATTERN, description="List the response is pushed to.")
    deadline: datetime | None = Field(None, description="After this the asker no longer waits: skip.")
    sender: str = Field("unknown", description="Who asked.")
    created_at: datetime = Field(default_factory=utcnow)


class SearchHit(BaseModel):
    """One matching object, at the version that was indexed."""

    key: str = Field(description="Object key.")
    version_id: str | None = Field(None, description="Indexed version (read it with this id).")
    etag: str | None = Field(None, description="ETag of the indexed version.")
    size: int | None = Field(None, description="Size in bytes.")
    content_type: str | None = Field(None, description="MIME type.")
    snippet: str = Field(description="Matching text, with the matched words in **bold**.")
    score: float = Field(description="Relevance (BM25; higher is better).")


class SearchResponse(BaseModel):
    """The indexer's answer to one `SearchRequest`."""

    type: Literal["search.results"] = "search.results"
    request_id: str
    query: str
    hits: list[SearchHit] = Field(default_factory=list)
    error: str | None = Field(None, description="Why the query could not run, if it could not.")


class SearchUnavailableError(BatonError):
    """The indexer did not answer in time."""


async def request_search(
    redis: aioredis.Redis,
    query: str,
    *,
    prefix: str = "",
    prefixes: list[str] | None = None,
    limit: int = 10,
    timeout: float = 5.0,
    sender: str = "client",
) -> list[SearchHit]:
    """Ask the indexer and wait (BLPOP, no polling) for its answer; raises BatonError on a bad query.

    Waits the whole `timeout`, also on a client whose socket timeout is shorter (`waits.client` makes one
    that outlasts it) and across a dropped connection."""
    request_id = new_id()
    request = SearchRequest(
        request_id=request_id,
        query=query,
        prefix=prefix,
        prefixes=prefixes or [],
        limit=limit,
        reply_to=streams.search_reply(request_id),
        deadline=utcnow() + timedelta(seconds=timeout),
        sender=sender,
    )
    await redis.xadd(
        streams.SEARCH,
        {DATA_FIELD: request.model_dump_json()},
        maxlen=SEARCH_STREAM_MAXLEN,
        approximate=True,
    )
    reply = await waits.pop(redis, request.reply_to, timeout)
    if reply is None:
        raise SearchUnavailableError(
            f"the indexer did not answer within {timeout:g}s: is it running? (python -m services.indexer)"
        )
    await redis.delete(request.reply_to)
    response = SearchResponse.model_validate(json.loads(reply))
    if response.error:
        raise BatonError(f"search {query!r}: {response.error}")
    return response.hits
