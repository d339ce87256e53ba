"""A run's events as server-sent events: a blocking XREAD on the run's stream, no polling anywhere.

Each event is sent with its stream entry id as the SSE `id`, so a browser that reconnects (EventSource
does it by itself) sends `Last-Event-ID` and resumes right after it. A quiet stream gets a comment line
every `BLOCK` seconds (which also notices a closed page); the stream ends with `event: end` after the
run's terminal event. A dropped Redis connection is retried from the last entry sent (shared/waits.py).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from shared import streams, waits
from shared.broker import DATA_FIELD
from shared.events import TERMINAL_RUN_EVENTS

BLOCK = 15.0  # seconds one XREAD waits before a keep-alive comment
COUNT = 500  # entries one XREAD returns at most (a long run's history arrives in chunks)


async def sse(redis_url: str, run_id: str, after: str = "0") -> AsyncIterator[str]:
    redis = waits.client(redis_url, block=BLOCK, name=f"baton-console:{run_id}")
    key, last = streams.run_events(run_id), after
    retry = waits.Retrier()
    try:
        yield "retry: 1000\n\n"
        while True:
            try:
                reply = await redis.xread({key: last}, block=int(BLOCK * 1000), count=COUNT)
            except waits.TRANSIENT as exc:
                await retry.failed(exc)
                continue
            retry.succeeded()
            if not reply:
                yield ": keep-alive\n\n"
                continue
            chunk, ended = [], False
            for _stream, entries in reply:
                for entry_id, fields in entries:
                    last = entry_id.decode()
                    raw = fields.get(DATA_FIELD.encode())
                    if raw is None:
                        continue
                    event = json.loads(raw)
                    event["entry"] = last
                    chunk.append(f"id: {last}\ndata: {json.dumps(event)}\n\n")
                    ended = ended or event.get("type") in TERMINAL_RUN_EVENTS
            if ended:
                chunk.append("event: end\ndata: {}\n\n")
            yield "".join(chunk)
            if ended:
                return
    finally:
        await redis.aclose()
