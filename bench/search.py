"""Search at 10x and 100x: N text files written at once, each findable by a word of its own.

The happy path is a run's few outputs, indexed as they land. Here N markdown files (about 2 KB of words
each, every one with a word no other file has) are written into the bucket by `concurrency` writers at
once, as a wide plan's subtasks would write their outputs. Measured per burst: how long the writes took,
each file's lag from its write's answer to the indexer's `index_updated` (its log's timestamp; MinIO's
notification, the notifier, `baton:objects`, then the indexer's read and its SQLite commit), the files
indexed per second, the indexer's CPU per file; then every file searched for by its own word through the
request/reply path (`shared.search.request_search`, `concurrency` askers at once): searches per second,
their latency, and how many files were not found (should be none). The writers and askers run in this
process, on the same two cores.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import time

from bench import runs as whole_runs
from bench.a2a import _cpu
from bench.common import percentile
from shared import streams
from shared.broker import payload_of
from shared.redisconn import connect
from shared.search import request_search
from shared.settings import Settings
from shared.storage import Storage

_STEMS = ("lor", "ips", "dol", "sit", "ame", "con", "sec", "adi", "eli", "sed")
_ENDS = ("ant", "ber", "cid", "dum", "eum", "fax", "gus", "hic", "ius", "jam", "kor", "lum", "mox", "nex")
WORDS = [a + b for a in _STEMS for b in _ENDS]


def _ms(values: list[float]) -> dict:
    if not values:
        return {}
    return {
        "p50_ms": round(percentile(values, 50) * 1000, 1),
        "p99_ms": round(percentile(values, 99) * 1000, 1),
        "max_ms": round(max(values) * 1000, 1),
    }


def _body(rng: random.Random, token: str) -> bytes:
    words = rng.choices(WORDS, k=300)
    words[rng.randrange(len(words))] = token
    return ("# report\n\n" + " ".join(words) + "\n").encode()


async def _write(
    settings: Settings, keys: list[str], tokens: list[str], concurrency: int
) -> dict[str, float]:
    """Each file written; when its PUT was answered (by key)."""
    rng = random.Random(7)
    done: dict[str, float] = {}
    todo = iter(zip(keys, tokens, strict=True))
    async with Storage.connect(settings) as storage:

        async def writer() -> None:
            for key, token in todo:
                await storage.put(key, io.BytesIO(_body(rng, token)), content_type="text/markdown")
                done[key] = time.time()

        await asyncio.gather(*(writer() for _ in range(concurrency)))
    return done


async def _search(settings: Settings, tokens: list[str], keys: list[str], concurrency: int) -> dict:
    redis = connect(settings.redis_url, max_connections=concurrency + 4)
    took: list[float] = []
    missing = errors = 0
    todo = iter(zip(tokens, keys, strict=True))

    async def asker() -> None:
        nonlocal missing, errors
        for token, key in todo:
            t0 = time.perf_counter()
            try:
                hits = await request_search(redis, token, limit=5, timeout=30, sender="bench")
            except Exception:  # noqa: BLE001 - counted
                errors += 1
                continue
            took.append(time.perf_counter() - t0)
            if [h.key for h in hits] != [key]:
                missing += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(asker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    await redis.aclose()
    return {
        "searches": len(tokens),
        "wall_s": round(wall, 2),
        "searches_per_s": round(len(tokens) / wall, 1),
        "latency": _ms(took),
        "not_found": missing,
        "errors": errors,
    }


def _indexed(log_path, keys: set[str]) -> dict[str, float]:
    """When the indexer logged each of `keys` indexed (its last `index_updated` with outcome indexed)."""
    out: dict[str, float] = {}
    for line in log_path.read_text().splitlines():
        if '"index_updated"' not in line:
            continue
        entry = json.loads(line)
        if entry.get("outcome") == "indexed" and entry.get("key") in keys:
            out[entry["key"]] = whole_runs._ts(entry["timestamp"])
    return out


def _notified(client, since: float, keys: set[str]) -> dict[str, float]:
    """When each of `keys` was first announced on `baton:objects` (its entry id: Redis' clock)."""
    out: dict[str, float] = {}
    start = f"{int(since * 1000)}-0"
    while True:
        entries = client.xrange(streams.OBJECTS, min=start, count=5000)
        for entry_id, fields in entries:
            key = json.loads(payload_of(fields)).get("key")
            if key in keys and key not in out:
                out[key] = int(entry_id.split(b"-")[0]) / 1000
        if len(entries) < 5000:
            return out
        start = "(" + entries[-1][0].decode()


def scenario(srv: whole_runs.Servers, sizes: list[int], concurrency: int, timeout: float) -> dict:
    """One indexer on a stack; a burst of each size in `sizes`, in turn (the index keeps the earlier ones)."""
    client = srv.clean()
    stack = srv.stack("search", workers=1)
    out: dict = {"concurrency": concurrency, "bursts": []}
    try:
        index_env = {"BATON_INDEX_DIR": str(srv.work / "search-index")}
        handle = stack.start("indexer", index_env)
        pid = stack.procs[handle].pid
        settings = Settings(redis_url=srv.redis_url, s3_endpoint_url=srv.s3_url)
        for n in sizes:
            batch = f"b{int(time.time())}"
            keys = [f"bench-search/{batch}/doc-{i}.md" for i in range(n)]
            tokens = [f"tok{batch}x{i}" for i in range(n)]
            print(f"- search: {n:,} files written at once, then each searched for", flush=True)
            cpu0, t0 = _cpu(pid), time.time()
            written = asyncio.run(_write(settings, keys, tokens, concurrency))
            wrote = time.time() - t0
            want = set(keys)
            deadline = time.time() + timeout
            indexed: dict[str, float] = {}
            while time.time() < deadline:
                indexed = _indexed(stack.log_path(handle), want)
                if len(indexed) == n:
                    break
                time.sleep(0.5)
            index_cpu = _cpu(pid) - cpu0
            lags = [indexed[k] - written[k] for k in indexed]
            notified = _notified(client, t0, want)
            to_stream = [notified[k] - written[k] for k in notified]
            from_stream = [indexed[k] - notified[k] for k in indexed if k in notified]
            last = max(indexed.values(), default=t0)
            burst = {
                "files": n,
                "write_s": round(wrote, 2),
                "writes_per_s": round(n / wrote, 1),
                "indexed": len(indexed),
                "all_indexed_after_s": round(last - t0, 2),
                "indexed_per_s": round(len(indexed) / max(last - t0, 1e-9), 1),
                "lag": _ms(lags),
                "write_to_announced": _ms(to_stream),  # MinIO's notification and the notifier's XADD
                "announced_to_indexed": _ms(from_stream),  # the indexer's read, GET and commit
                "indexer_cpu_ms_per_file": round(1000 * index_cpu / max(len(indexed), 1), 2),
            }
            burst["search"] = asyncio.run(_search(settings, tokens, keys, concurrency))
            out["bursts"].append(burst)
            print(f"  {_line(burst)}", flush=True)
        out["rebuild"] = _rebuild(stack, handle, index_env, settings, tokens[0], keys[0], timeout)
        print(f"  {_rebuild_line(out['rebuild'])}", flush=True)
        out["indexer_log"] = whole_runs._log_problems(stack, "indexer")
    finally:
        stack.stop_all()
    return out


def _logged(path, event: str) -> dict | None:
    for line in path.read_text().splitlines():
        if f'"{event}"' in line and (entry := json.loads(line)).get("event") == event:
            return entry
    return None


def _rebuild(stack, handle: str, env: dict, settings: Settings, token: str, key: str, timeout: float) -> dict:
    """The index folder lost: the indexer stopped, its folder removed, started again. Its start-up sync
    reads every file back; measured: how long after the start it was ready, a search answered meanwhile,
    and the sync's own duration and rate (from its log lines)."""
    import shutil

    stack.kill(handle)
    shutil.rmtree(env["BATON_INDEX_DIR"], ignore_errors=True)
    t0 = time.time()
    handle = stack.start("indexer", env)
    ready = time.time() - t0
    t1 = time.perf_counter()
    hits = asyncio.run(_one_search(settings, token))
    searched = time.perf_counter() - t1
    deadline = time.time() + timeout
    done = None
    while time.time() < deadline and (done := _logged(stack.log_path(handle), "index_synced")) is None:
        time.sleep(0.5)
    started = _logged(stack.log_path(handle), "index_sync_started") or {}
    out = {
        "files": started.get("files"),
        "ready_s": round(ready, 2),
        "search_during_sync_ms": round(searched * 1000, 1),
        "found_during_sync": hits == [key],
        "synced": done is not None,
    }
    if done is not None:
        took = whole_runs._ts(done["timestamp"]) - whole_runs._ts(started["timestamp"])
        out.update(sync_s=round(took, 1), files_per_s=round(started["to_check"] / took, 1))
    return out


async def _one_search(settings: Settings, token: str) -> list[str]:
    redis = connect(settings.redis_url)
    try:
        return [h.key for h in await request_search(redis, token, limit=5, timeout=30, sender="bench")]
    finally:
        await redis.aclose()


def _rebuild_line(r: dict) -> str:
    sync = f"synced in {r['sync_s']} s ({r['files_per_s']}/s)" if r["synced"] else "not synced in time"
    return (
        f"index rebuilt over {r['files']:,} files: ready {r['ready_s']} s after its start, a search answered "
        f"{r['search_during_sync_ms']} ms later (the file found yet: {r['found_during_sync']}); {sync}"
    )


def _line(b: dict) -> str:
    s = b["search"]
    return (
        f"{b['files']:,} files written in {b['write_s']} s ({b['writes_per_s']}/s); "
        f"{b['indexed']:,} indexed, the last {b['all_indexed_after_s']} s after the first write "
        f"({b['indexed_per_s']}/s), lag p50/p99/max "
        f"{b['lag'].get('p50_ms', '-')}/{b['lag'].get('p99_ms', '-')}/{b['lag'].get('max_ms', '-')} ms, "
        f"(to baton:objects p50/p99 {b['write_to_announced'].get('p50_ms', '-')}/"
        f"{b['write_to_announced'].get('p99_ms', '-')}, then indexed "
        f"{b['announced_to_indexed'].get('p50_ms', '-')}/{b['announced_to_indexed'].get('p99_ms', '-')}), "
        f"indexer {b['indexer_cpu_ms_per_file']} ms CPU a file; each searched for: {s['searches_per_s']}/s, "
        f"p50/p99 {s['latency'].get('p50_ms', '-')}/{s['latency'].get('p99_ms', '-')} ms, "
        f"not found {s['not_found']}, errors {s['errors']}"
    )


def table(results: dict) -> list[str]:
    search = results.get("search")
    if not search:
        return []
    lines = ["", f"Search: files written at once ({search['concurrency']} writers), then each searched for"]
    lines += [f"  {_line(b)}" for b in search["bursts"]]
    if search.get("rebuild"):
        lines.append(f"  {_rebuild_line(search['rebuild'])}")
    if search.get("indexer_log"):
        lines.append(f"  indexer log: {search['indexer_log']}")
    return lines
