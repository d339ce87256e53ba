"""A run's events as server-sent events, fed by the console's ONE live reader (`shared.live.Hub`).

A page first reads the run's history (XRANGE, COUNT at a time, from its `after` or the browser's
`Last-Event-ID`), then joins the hub's one blocking XREAD over every run stream an open page watches: 50
open pages cost one connection and one blocking call (shared/live.py says how pages join and leave it).
A page whose browser reads slower than its run writes is cut off once its queue is full, after the entries
it already has, and its EventSource reconnects with `Last-Event-ID` (nothing lost, nothing twice).

Each event goes out with its stream entry id as the SSE `id`; a quiet page gets a comment line every
`BLOCK` seconds (which also notices a closed page); the stream ends with `event: end` after the run's
terminal event.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

from shared import live, streams
from shared.broker import DATA_FIELD
from shared.events import TERMINAL_RUN_EVENTS
from shared.live import full_id


@dataclass(frozen=True)
class Entry:
    id: str
    text: str  # the SSE message ("" for an entry without an event)
    terminal: bool


_DATA = DATA_FIELD.encode()


def to_entry(entry_id: bytes, fields: dict) -> Entry:
    eid = entry_id.decode()
    raw = fields.get(_DATA)
    if raw is None:
        return Entry(eid, "", False)
    event = json.loads(raw)
    text = raw.decode().strip()
    if event and "entry" not in event and "\n" not in text and "\r" not in text:
        data = f'{text[:-1]},"entry":"{eid}"}}'  # the event's own JSON plus its entry, not encoded again
    else:  # an entry written by hand: spread over lines, or naming an entry already
        data = json.dumps({**event, "entry": eid})
    return Entry(eid, f"id: {eid}\ndata: {data}\n\n", event.get("type") in TERMINAL_RUN_EVENTS)


class Hub(live.Hub):
    """The console's live reader (`shared.live.Hub` handing on SSE messages); `sse()` serves a page."""

    def __init__(self, redis_url: str, control, log, **kw) -> None:
        super().__init__(redis_url, control, log, convert=to_entry, name="baton-console:live", **kw)

    async def sse(self, run_id: str, after: str = "0") -> AsyncIterator[str]:
        # The reconnect delay goes out with the first message, not in a write of its own (the browser knows
        # the stream is open from the response's headers).
        head = "retry: 1000\n\n"
        key = streams.run_events(run_id)
        async with contextlib.aclosing(self.follow(key, full_id(after))) as chunks:
            async for chunk in chunks:
                text, ended = _text(chunk) if chunk else (": keep-alive\n\n", False)
                yield head + text
                head = ""
                if ended:
                    return
        # cut (the browser took its events too slowly): it reconnects after the last entry it got


def _text(chunk: list[Entry]) -> tuple[str, bool]:
    """A chunk's SSE messages, up to and including a terminal event, then `event: end`."""
    out = []
    for entry in chunk:
        out.append(entry.text)
        if entry.terminal:
            out.append("event: end\ndata: {}\n\n")
            return "".join(out), True
    return "".join(out), False
