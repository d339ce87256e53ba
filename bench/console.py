"""Scenario 9 (`console`): the web console's performance targets (issue 14), on the full stack plus a
console process (`python -m services.console`), read over HTTP with the bearer token.

1. A run page with 10,000 events is usable within 1 s: one real hierarchical run of W no-op subtasks
   (the fan-out planner, `bench.agents:fanout_plan`), W chosen so its stream holds about `--console-events`
   events. Then, a few times each: GET of the run page (until its last byte), GET of its pattern panel
   (the plan graph the page loads next) and the SSE replay of its whole history (`/runs/<run>/stream`,
   until `event: end`). p50 and max against 1 s.
2. Live updates reach the page within 100 ms: SSE streams opened on runs before they are submitted; for
   each event, its arrival in the reader minus its `created_at` (one machine, one clock). p50/p99 against
   100 ms.
3. 50 open run pages add under 5% to the supervisor's hop latency: the sweep's step (bench/runs.py: per hop,
   stage assigned -> next stage assigned, from each run's own events) at one fixed rate, with 0 and with K
   SSE streams open all along: a rolling window on the runs being submitted (each stream is opened on a run
   ahead of its submission and ends with the run; the next one opens then). The readers (plain asyncio
   streams, a new connection per page, as an EventSource) run in a thread of the benchmark process; their
   and the console's CPU are reported.
4. The runs list paged over 100,000 runs (an index and `core` fields written by the benchmark): the newest
   page, a deep page, and pages filtered by status and workflow.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import statistics
import threading
import time
from pathlib import Path

import httpx
import redis
import yaml

from baton import servers
from bench import runs as whole_runs
from bench import stack as full_stack
from bench.common import IdleCgroup, Pinned, cpu_seconds, percentile, ratio_interval
from shared import streams
from shared.broker import encode
from shared.events import RunCancelRequested

Q = ("p50", "p99")
PAGE_BUDGET_S = 1.0
LIVE_BUDGET_MS = 100.0
HOP_OVERHEAD_BUDGET = 0.05
# task.assigned, task.started, task.completed per subtask (the stream's real length is reported)
EVENTS_PER_SUBTASK = 3


def _workflows(work: Path, width: int, ticking: int = 0) -> Path:
    """The bench workflow file plus `fanout` (W subtasks for `noop`, then `collect`), `wait` and `tick`
    (`ticking`: the most ticking runs a step needs; one worker process may then run them all)."""
    spec = yaml.safe_load(full_stack.WORKFLOWS.read_text())
    spec["workflows"]["fanout"] = {
        "pattern": "hierarchical",
        "manager": "fanout-planner",
        "workers": ["noop"],
        "aggregator": "collect",
        "max_subtasks": max(width, 10),
        "max_attempts": 1,
    }
    spec["workflows"]["wait"] = {  # runs that wait for a person: pages open on them stay open, quiet
        "pattern": "sequential",
        "stages": [{"agent": "human", "instruction": "nothing to decide: the benchmark cancels this run"}],
        "max_attempts": 1,
    }
    # runs whose one stage reports progress every `interval` until cancelled: pages open on them stay open
    # and busy (a steady stream of live events, no page opened or closed during the step)
    spec["agents"]["ticker"] = {
        "handler": "bench.agents:tick",
        "writes": ["work/"],
        "concurrency": max(ticking, 1),
    }
    spec["workflows"]["tick"] = {"pattern": "sequential", "stages": ["ticker"], "max_attempts": 1}
    path = work / f"console-{width}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _seconds(values: list[float]) -> dict:
    return {
        "p50_s": round(percentile(values, 50), 3) if values else None,
        "max_s": round(max(values), 3) if values else None,
        "count": len(values),
    }


def _ms(values: list[float]) -> dict:
    return {
        "p50_ms": round(percentile(values, 50) * 1000, 2) if values else None,
        "p99_ms": round(percentile(values, 99) * 1000, 2) if values else None,
        "max_ms": round(max(values) * 1000, 2) if values else None,
        "count": len(values),
    }


def _replay(http: httpx.Client, run_id: str, timeout: float) -> tuple[float, int, int]:
    """Seconds from the request to `event: end`, events received, bytes."""
    t0 = time.perf_counter()
    events = size = 0
    with http.stream("GET", f"/runs/{run_id}/stream", timeout=timeout) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            size += len(line) + 1
            if line.startswith("data: ") and line != "data: {}":
                events += 1
            elif line == "event: end":
                return time.perf_counter() - t0, events, size
            if time.perf_counter() - t0 > timeout:
                break
    raise RuntimeError(f"the replay of {run_id} did not end within {timeout:g} s ({events} events)")


def big_page(stack, client: redis.Redis, url: str, token: str, events: int, requests: int) -> dict:
    width = max(1, events // EVENTS_PER_SUBTASK)
    [(run_id, fields)] = whole_runs._runs("page", 1, "fanout", {"width": width}).items()
    timeout = 60 + 0.012 * width
    t0 = time.time()
    client.xadd(streams.RUNS, fields)
    end = whole_runs._wait_run(client, run_id, t0 + timeout)
    if end is None or end["type"] != "run.completed":
        why = "no terminal event" if end is None else f"{end['type']}: {end.get('reason') or ''}"[:300]
        return {"ok": False, "width": width, "error": f"the {width}-subtask run: {why} after {timeout:g} s"}
    length = client.xlen(streams.run_events(run_id))
    timings: dict[str, list[float]] = {
        "page": [],
        "pattern_panel": [],
        "sse_replay": [],
        "page_then_replay": [],
    }
    sizes: dict[str, int] = {}
    replayed = 0
    headers = {"authorization": f"Bearer {token}", "accept": "text/html"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
        for _ in range(requests):
            for name, path in (
                ("page", f"/runs/{run_id}"),
                ("pattern_panel", f"/runs/{run_id}/panel/pattern"),
            ):
                t = time.perf_counter()
                resp = http.get(path)
                timings[name].append(time.perf_counter() - t)
                resp.raise_for_status()
                sizes[name] = len(resp.content)
            seconds, replayed, sizes["sse_replay"] = _replay(http, run_id, 30)
            timings["sse_replay"].append(seconds)
            timings["page_then_replay"].append(timings["page"][-1] + seconds)
    out = {k: {**_seconds(v), "bytes": sizes.get(k)} for k, v in timings.items()}
    worst = max(out[k]["max_s"] for k in out)
    return {
        "ok": replayed == length,
        "width": width,
        "events": length,
        "events_replayed": replayed,
        "run_seconds": round(whole_runs._ts(end["created_at"]) - t0, 2),
        "requests": requests,
        **out,
        "budget_s": PAGE_BUDGET_S,
        "within_budget": worst < PAGE_BUDGET_S,
    }


class Pages:
    """K SSE streams kept open on `run_ids` in order (a rolling window: when one run's stream ends, the next
    run's opens), read in a thread; every live event's arrival minus its `created_at` (`arrivals`)."""

    def __init__(
        self,
        url: str,
        token: str,
        run_ids: list[str],
        k: int,
        deadline: float,
        last_ids: dict[str, str] | None = None,
        pinned: Pinned | None = None,
    ) -> None:
        """`last_ids`: per run, the entry its stream resumes after (`Last-Event-ID`, as an EventSource sends
        when it reconnects); the others read their run's whole history first. `pinned`: the readers' thread
        runs on its CPUs (the browsers' stand-in beside the console, away from the services)."""
        self.url, self.token, self.run_ids, self.k, self.deadline = url, token, run_ids, k, deadline
        self.last_ids = last_ids or {}
        # per live event: (its created_at, its arrival minus created_at, its arrival minus the XADD to the
        # run's stream: Redis' clock, ms)
        self.arrivals: list[tuple[float, float, float]] = []
        self.early = 0  # events made before their stream was connected (history, not live): not counted
        self.opened = self.ended = self.errors = 0
        self.stop = threading.Event()
        self.pinned = pinned
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.connected = threading.Event()
        self.cpu = 0.0

    def __enter__(self) -> Pages:
        self.thread.start()
        if not self.connected.wait(30):
            raise RuntimeError(f"the first {self.k} SSE streams were not connected in 30 s")
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(15)

    def _run(self) -> None:
        if self.pinned is not None:
            self.pinned.this_thread()
        asyncio.run(self._main())

    async def _page(self, run_id: str, ready: asyncio.Event) -> None:
        """One page's stream, read as a browser's EventSource reads it: a new connection, the headers, then
        every line to `event: end`. Plain asyncio streams, not httpx: the readers stand in for browsers on
        other machines but share the supervisor's 2 cores here, where their CPU delays the hops it measures;
        with httpx (pool, anyio, line decoder) they took 0.09-0.14 cores at 50 pages a second, now 0.03."""
        self.opened += 1
        writer = None
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            last = self.last_ids.get(run_id)
            resume = f"last-event-id: {last}\r\n".encode() if last else b""
            writer.write(self.request % (run_id.encode(), resume))
            status = await reader.readline()
            if status.split(b" ", 2)[1:2] != [b"200"]:
                raise RuntimeError(f"GET /runs/{run_id}/stream: {status!r}")
            chunked = False
            while (line := await reader.readline()) not in (b"\r\n", b""):
                chunked = chunked or line.lower() == b"transfer-encoding: chunked\r\n"
            connected = time.time()  # the headers: the stream is open (its history is read next)
            ready.set()
            rest = b""
            while True:
                if chunked:  # HTTP/1.1 chunks: a hex size line, the data, CRLF; size 0 ends the response
                    size = int((await reader.readline()).split(b";")[0], 16)
                    data = (await reader.readexactly(size + 2))[:-2] if size else b""
                else:
                    data = await reader.read(65536)
                if not data:
                    return  # the response ended without `event: end`
                now = time.time()
                *lines, rest = (rest + data).split(b"\n")
                for line in lines:
                    if line.startswith(b"data: ") and line != b"data: {}":
                        event = json.loads(line[6:])
                        created = whole_runs._ts(event["created_at"])
                        if created < connected:
                            self.early += 1
                        else:
                            # the entry id's time: when Redis appended it to the run's stream
                            entered = int(event["entry"].split("-")[0]) / 1000
                            self.arrivals.append((created, now - created, now - entered))
                    elif line == b"event: end":
                        self.ended += 1
                        return
        except Exception:  # noqa: BLE001 - counted; the window goes on
            self.errors += 1
        finally:
            ready.set()
            if writer is not None:
                writer.close()

    async def _main(self) -> None:
        url = httpx.URL(self.url)
        self.host, self.port = url.host, url.port
        self.request = (
            f"GET /runs/%s/stream HTTP/1.1\r\nhost: {url.host}:{url.port}\r\n"
            f"authorization: Bearer {self.token}\r\naccept: text/event-stream\r\n%s\r\n"
        ).encode()
        t0 = time.thread_time()
        todo = iter(self.run_ids)
        live: set[asyncio.Task] = set()

        def open_next() -> asyncio.Event | None:
            run_id = next(todo, None)
            if run_id is None:
                return None
            ready = asyncio.Event()
            live.add(asyncio.create_task(self._page(run_id, ready)))
            return ready

        firsts = [e for e in (open_next() for _ in range(self.k)) if e is not None]
        await asyncio.gather(*(e.wait() for e in firsts))
        self.connected.set()
        while live and not self.stop.is_set() and time.time() < self.deadline:
            done, _pending = await asyncio.wait(live, timeout=0.1, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                live.discard(task)
                open_next()
        for task in live:
            task.cancel()
        await asyncio.gather(*live, return_exceptions=True)
        self.cpu = time.thread_time() - t0


def _newest(client: redis.Redis, run_ids: list[str]) -> dict[str, tuple[bytes, dict]]:
    """Each run's newest stream entry (id, fields), in one pipeline; runs with no entry are left out."""
    pipe = client.pipeline(transaction=False)
    for run_id in run_ids:
        pipe.xrevrange(streams.run_events(run_id), count=1)
    return {r: last[0] for r, last in zip(run_ids, pipe.execute(), strict=True) if last}


def _started(
    client: redis.Redis, workflow: str, n: int, mark: bytes, params: dict | None = None, timeout: float = 30
) -> list[str]:
    """`n` runs of `workflow`, each once the newest event in its stream is of the type `mark`."""
    runs = whole_runs._runs(workflow, n, workflow, params)
    whole_runs._submit_all(client, list(runs.values()))
    deadline, pending = time.time() + timeout, set(runs)
    while pending and time.time() < deadline:
        for run_id, (_id, fields) in _newest(client, list(pending)).items():
            if b'"type":"%s"' % mark in fields[whole_runs.DATA].replace(b" ", b""):
                pending.discard(run_id)
        time.sleep(0.05)
    if pending:
        what = f"{len(pending)} of {n} runs of {workflow}"
        raise RuntimeError(f"{what} had no {mark.decode()} after {timeout:g} s")
    return list(runs)


def _tails(client: redis.Redis, run_ids: list[str]) -> dict[str, str]:
    """Each run's newest stream entry id."""
    return {r: entry_id.decode() for r, (entry_id, _fields) in _newest(client, run_ids).items()}


def _waiting(client: redis.Redis, n: int, timeout: float = 30) -> list[str]:
    """`n` runs of `wait`, each waiting for a person (its `human.requested` in its stream)."""
    return _started(client, "wait", n, b"human.requested", timeout=timeout)


def _ticking(client: redis.Redis, n: int, interval: float) -> list[str]:
    """`n` runs of `tick`, each reporting progress every `interval` seconds (until cancelled)."""
    return _started(client, "tick", n, b"task.progress", {"interval": interval})


def _cancel(client: redis.Redis, run_ids: list[str]) -> None:
    pipe = client.pipeline(transaction=False)
    for run_id in run_ids:
        pipe.xadd(streams.RUNS, encode(RunCancelRequested(run_id=run_id, reason="bench", sender="bench")))
    pipe.execute()


# a step's spec: `K` (rolling), `wK` (waiting), `tK` (ticking)
MODES = {"w": "waiting", "t": "ticking"}
PREFIX = {mode: prefix for prefix, mode in MODES.items()}


def parse_step(spec: str) -> tuple[str, int]:
    """`50` -> ("rolling", 50), `w50` -> ("waiting", 50), `t50` -> ("ticking", 50)."""
    mode = MODES.get(spec[:1], "rolling")
    digits = spec[1:] if mode != "rolling" else spec
    if not digits.isdigit():
        raise ValueError(f"console pages step {spec!r}: K, wK or tK, K a number of pages (50, w50, t50)")
    return mode, int(digits)


def parse_plan(value: str) -> list[tuple[str, int]]:
    """`--console-pages`: comma-separated steps, each `parse_step`'s."""
    return [parse_step(spec.strip()) for spec in value.split(",") if spec.strip()]


def most_pages(steps: list[tuple[str, int]], mode: str) -> int:
    """The most pages any step of kind `mode` opens (0 if none is of that kind)."""
    return max((k for m, k in steps if m == mode), default=0)


def hop_overhead(
    stack,
    client: redis.Redis,
    url: str,
    token: str,
    plan: list[tuple[str, int]],
    rate: float,
    seconds: float,
    tick: float = 0.1,
    pinned: Pinned | None = None,
) -> dict:
    """The steps of `plan` (`parse_step`'s, in order): `K` streams on the runs being submitted (a rolling
    window), `wK` K streams open all along on runs waiting for a person (quiet pages), `tK` K streams open
    all along on runs whose stage reports progress every `tick` seconds (busy pages, none opened or closed
    during the step). The waiting and the ticking runs exist during every step, with pages on them or not."""
    steps, all_live, all_from_stream = [], [], []
    # (kind, pages) -> {"hop" | "decision": every one of those steps, seconds}
    pooled: dict[tuple[str, int], dict[str, list[float]]] = {}
    console_pid = next(p.pid for h, p in stack.procs.items() if h.startswith("console-"))
    quiet, busy = most_pages(plan, "waiting"), most_pages(plan, "ticking")
    waiting = _waiting(client, quiet) if quiet else []
    ticking = _ticking(client, busy, tick) if busy else []
    for mode, k in plan:
        runs = whole_runs._runs(f"pages{k}", max(1, int(rate * seconds)))
        sup0 = whole_runs._cpu(whole_runs._pids(stack, "supervisor"))
        con0, t0 = cpu_seconds(console_pid), time.time()
        watch = None
        if k:
            ids = {"waiting": waiting[:k], "ticking": ticking[:k]}.get(mode, list(runs))
            # pages on ticking runs take up where their streams are (as if open since before the step):
            # each step would otherwise begin with K replays of a history that grows with every step
            resume = _tails(client, ids) if mode == "ticking" else None
            watch = Pages(
                url, token, ids, k, deadline=time.time() + seconds + 60, last_ids=resume, pinned=pinned
            )
            watch.__enter__()
        try:
            with whole_runs.Elsewhere() as elsewhere:
                step = whole_runs._step(
                    client, rate, seconds, runs, pooled.setdefault((mode if k else "none", k), {})
                )
        finally:
            if watch is not None:
                time.sleep(0.5)  # the last runs' streams deliver their ends
                watch.__exit__()
        wall = time.time() - t0
        step["open_streams"] = k
        step["streams_on"] = mode if k else None
        step["other_cpu_cores"] = elsewhere.cores
        step["supervisor_cores"] = round(
            (whole_runs._cpu(whole_runs._pids(stack, "supervisor")) - sup0) / wall, 2
        )
        step["console_cores"] = round((cpu_seconds(console_pid) - con0) / wall, 2)
        if watch is not None:
            # only the events made while the step's runs were in flight: the benchmark's main thread then
            # reads all their events, and while it holds the GIL the readers (threads of the same process)
            # stamp the events of pages that stay open (tK) late
            during = [a for a in watch.arrivals if a[0] <= step["ended_at"]]
            latency, from_stream = [a[1] for a in during], [a[2] for a in during]
            all_live += latency
            all_from_stream += from_stream
            step["live"] = {
                **_ms(latency),
                "after_the_step": len(watch.arrivals) - len(during),
                "history_events_skipped": watch.early,
                "streams_opened": watch.opened,
                "streams_ended": watch.ended,
                "stream_errors": watch.errors,
                "reader_cores": round(watch.cpu / wall, 2),
            }
        steps.append(step)
        live = step.get("live", {})
        print(
            f"    {PREFIX.get(mode, '')}{k} open streams: "
            f"hop p50 {step['hop_p50_ms']} ms, p99 {step['hop_p99_ms']} ms "
            f"(the supervisor's part p50 {step['decision_p50_ms']} ms, p99 {step['decision_p99_ms']} ms)"
            + (f"; live p50 {live['p50_ms']} ms, p99 {live['p99_ms']} ms" if live else ""),
            flush=True,
        )
        time.sleep(0.5)
    base = None
    for s in steps:  # each step with streams against the step without them before it (0,50,0,50: pairs)
        if s["open_streams"] == 0:
            base = s
        elif base is not None:
            s["hop_p50_over_none"] = _ratio(s["hop_p50_ms"], base["hop_p50_ms"])
            s["hop_p99_over_none"] = _ratio(s["hop_p99_ms"], base["hop_p99_ms"])
            for q in Q:
                s[f"decision_{q}_over_none"] = _ratio(s.get(f"decision_{q}_ms"), base.get(f"decision_{q}_ms"))
    if waiting or ticking:
        _cancel(client, waiting + ticking)
    out = {"rate_runs_per_s": rate, "seconds": seconds, "steps": steps, "budget": 1 + HOP_OVERHEAD_BUDGET}
    if ticking:
        out["tick_s"] = tick
    without = {q: [s[f"hop_{q}_ms"] for s in steps if not s["open_streams"] and s[f"hop_{q}_ms"]] for q in Q}
    # per kind: the mean of the steps with the most streams over the mean of the steps with none
    for mode in ("rolling", "waiting", "ticking"):
        mine = [s for s in steps if s["streams_on"] == mode]
        most = max((s["open_streams"] for s in mine), default=0)
        summary: dict = {"streams": most}
        for q in Q:
            with_ = [s[f"hop_{q}_ms"] for s in mine if s["open_streams"] == most and s[f"hop_{q}_ms"]]
            if with_ and without[q]:
                summary[f"hop_{q}_ratio"] = round(statistics.mean(with_) / statistics.mean(without[q]), 3)
        # every hop of those steps pooled, with a bootstrap interval: what the samples can resolve; and the
        # supervisor's own part of each hop (its decision: `runs.decisions`)
        mine_all, none_all = pooled.get((mode, most), {}), pooled.get(("none", 0), {})
        for kind in ("hop", "decision"):
            for q in Q:
                found = ratio_interval(mine_all.get(kind, []), none_all.get(kind, []), int(q[1:]))
                if found:
                    summary[f"pooled_{kind}_{q}_ratio"] = [round(x, 3) for x in found]
        summary["hops"] = len(mine_all.get("hop", []))
        summary["hops_without"] = len(none_all.get("hop", []))
        if "hop_p50_ratio" in summary:
            worst = max(summary["hop_p50_ratio"], summary.get("hop_p99_ratio", 0))
            summary["within_budget"] = worst < out["budget"]
            out[mode] = summary
    if all_live:
        out["live"] = {**_ms(all_live), "budget_ms": LIVE_BUDGET_MS}
        out["live"]["within_budget"] = out["live"]["p99_ms"] < LIVE_BUDGET_MS
        # the part after the event entered the run's stream (the console and the reader; Redis stamps ms)
        out["live"]["from_stream_entry"] = _ms(all_from_stream)
    return out


def runs_list(client: redis.Redis, url: str, token: str, runs: int, requests: int) -> dict:
    """GET /runs (JSON) over an index of `runs` runs (their index entries, as the supervisor keeps them:
    every run, by status and by workflow, and `core` fields written here: 1 in 100 failed, 10 workflows):
    the newest page, a page deep in the index, and filtered pages (status, workflow, both), `requests`
    times each. The indexes are left as they were."""

    def status_of(i: int) -> str:
        return "failed" if i % 100 == 0 else "completed"

    prefix, t0 = "bench-list-", time.time() - runs
    ids = [f"{prefix}{i:07d}" for i in range(runs)]
    for start in range(0, runs, 5000):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(start + 5000, runs)):
            core = {
                "run_id": ids[i],
                "workflow": f"wf{i % 10}",
                "pattern": "sequential",
                "status": status_of(i),
                "created_at": f"2026-01-01T00:00:{i % 60:02d}+00:00",
            }
            pipe.hset(streams.run_state(ids[i]), "core", json.dumps(core))
        span = range(start, min(start + 5000, runs))
        pipe.zadd(streams.RUN_INDEX, {ids[i]: t0 + i for i in span})
        for i in span:
            pipe.zadd(streams.run_status_index(status_of(i)), {ids[i]: t0 + i})
            pipe.zadd(streams.run_workflow_index(f"wf{i % 10}"), {ids[i]: t0 + i})
        pipe.execute()
    total = client.zcard(streams.RUN_INDEX)
    queries = {
        "newest page": {},
        "a page 90,000 runs deep": {"cursor": str(max(0, total - runs // 10))},
        "status=failed (1 in 100)": {"status": "failed"},
        "workflow=wf3 (1 in 10)": {"workflow": "wf3"},
        "status=failed, workflow=wf3 (none match)": {"status": "failed", "workflow": "wf3"},
    }
    out: dict = {"runs": runs, "index_total": total, "requests": requests, "queries": {}}
    headers = {"authorization": f"Bearer {token}", "accept": "application/json"}
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
            for label, params in queries.items():
                times, rows = [], 0
                for _ in range(requests):
                    t = time.perf_counter()
                    resp = http.get("/runs", params=params)
                    times.append(time.perf_counter() - t)
                    resp.raise_for_status()
                    rows = len(resp.json()["runs"])
                out["queries"][label] = {**_seconds(times), "rows": rows}
    finally:
        for start in range(0, runs, 5000):
            chunk = ids[start : start + 5000]
            client.zrem(streams.RUN_INDEX, *chunk)
            for key in [streams.run_status_index(s) for s in ("failed", "completed")] + [
                streams.run_workflow_index(f"wf{w}") for w in range(10)
            ]:
                client.zrem(key, *chunk)
            client.delete(*(streams.run_state(i) for i in chunk))
    return out


def inbox(client: redis.Redis, url: str, token: str, waiting: int, requests: int) -> dict:
    """`waiting` runs of `wait`, each waiting for a person, then GET /inbox (its first page, as a person
    opens it: HTML, and as JSON) and GET /runs?waiting=1, `requests` times each; the runs are cancelled
    after."""
    t = time.perf_counter()
    run_ids = _waiting(client, waiting, timeout=60 + waiting / 100)
    out: dict = {"waiting": waiting, "requests": requests, "made_s": round(time.perf_counter() - t, 1)}
    out["queries"] = {}
    headers = {"authorization": f"Bearer {token}"}
    queries = {
        "GET /inbox (HTML)": ("/inbox", {}, "text/html"),
        "GET /inbox (JSON)": ("/inbox", {}, "application/json"),
        "GET /runs?waiting=1 (JSON)": ("/runs", {"waiting": "1"}, "application/json"),
    }
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=600) as http:
            for label, (path, params, accept) in queries.items():
                times, size, rows = [], 0, None
                for _ in range(requests):
                    t = time.perf_counter()
                    resp = http.get(path, params=params, headers={"accept": accept})
                    times.append(time.perf_counter() - t)
                    resp.raise_for_status()
                    size = len(resp.content)
                    if accept == "application/json":
                        body = resp.json()
                        rows = len(body.get("waiting", body.get("runs", [])))
                out["queries"][label] = {**_seconds(times), "bytes": size, "rows": rows}
    finally:
        _cancel(client, run_ids)
    return out


def _ratio(a, b) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def scenario(
    srv: whole_runs.Servers,
    events: int,
    requests: int,
    plan: list[tuple[str, int]],
    rate: float,
    seconds: float,
    workers: int,
    list_runs: int = 100_000,
    idle: bool = False,
    tick: float = 0.1,
    waiting: int = 1000,
    shares: int | None = None,
    cpus: set[int] | None = None,
) -> dict:
    """`plan`: the hop-latency steps (`parse_plan`). `idle`: the console runs in an idle-class cgroup
    (`IdleCgroup`) through the scenario; `shares`: in a cgroup of that CPU weight instead (cgroup v1's
    `cpu.shares`, as compose's `cpu_shares` sets); `cpus`: the console and the pages' readers run on these
    CPUs and everything else on the rest (`Pinned`: the console on a host of its own). `tick`: seconds
    between the progress reports of the runs that `tK` steps' pages are open on."""
    if sum((idle, shares is not None, bool(cpus))) > 1:
        raise ValueError("the console is idle-class, of a CPU weight or on CPUs of its own: one of them")
    placed = IdleCgroup("baton-bench-console", shares=shares) if idle or shares is not None else None
    with (
        placed or contextlib.nullcontext() as idle_class,
        Pinned(cpus) if cpus else contextlib.nullcontext() as pinned,
    ):
        return _scenario(
            srv, events, requests, plan, rate, seconds, workers, list_runs, idle_class, tick, waiting, pinned
        )


def _scenario(
    srv, events, requests, plan, rate, seconds, workers, list_runs, idle_class, tick, waiting, pinned=None
) -> dict:
    client = srv.clean()
    width = max(1, events // EVENTS_PER_SUBTASK)
    path = _workflows(srv.work, width, most_pages(plan, "ticking"))
    stack = srv.stack("console", workers=workers, workflows=path)
    port, token = servers.free_port(), secrets.token_hex(16)
    out: dict = {
        "workers": workers,
        "console_idle_class": idle_class is not None and idle_class.shares is None,
        "console_cpu_shares": idle_class.shares if idle_class is not None else None,
        "console_cpus": sorted(pinned.cpus) if pinned is not None else None,
        "services_cpus": sorted(pinned.rest) if pinned is not None else None,
    }
    try:
        stack.start(
            "console",
            {
                "BATON_CONSOLE_HOST": "127.0.0.1",
                "BATON_CONSOLE_PORT": str(port),
                "BATON_CONSOLE_TOKEN": token,
            },
        )
        url = f"http://127.0.0.1:{port}"
        console_pid = next(p.pid for h, p in stack.procs.items() if h.startswith("console-"))
        if idle_class is not None:
            idle_class.add(console_pid)
        if pinned is not None:
            pinned.move(console_pid)
        whole_runs._warm(client)
        print(f"- console: a run of ~{events:,} events, {requests} page loads and replays", flush=True)
        with whole_runs.Elsewhere() as elsewhere:
            out["page"] = whole_runs._attempt(lambda: big_page(stack, client, url, token, events, requests))
        out["page"]["other_cpu_cores"] = elsewhere.cores
        labels = ",".join(PREFIX.get(m, "") + str(k) for m, k in plan)
        print(f"- console: hop latency at {rate:g} runs/s with {labels} open SSE streams", flush=True)
        out["hops"] = whole_runs._attempt(
            lambda: hop_overhead(stack, client, url, token, plan, rate, seconds, tick, pinned)
        )
        print(f"- console: the runs list over an index of {list_runs:,} runs", flush=True)
        out["runs_list"] = whole_runs._attempt(lambda: runs_list(client, url, token, list_runs, requests))
        if waiting:
            print(f"- console: the inbox with {waiting:,} runs waiting for a person", flush=True)
            out["inbox"] = whole_runs._attempt(lambda: inbox(client, url, token, waiting, requests))
        out["console_log"] = whole_runs._log_problems(stack, "console")
    finally:
        stack.stop_all()
    return out


# --- the table and the README's markdown ----------------------------------------------------------------


def _f(x, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def _busy(r: dict, limit: float) -> str:
    other = r.get("other_cpu_cores")
    return "-" if other is None else f"{other:.2f}" + ("!" if other > limit else "")


def pooled(r: dict, kind: str = "hop") -> str:
    """`p50 1.03x [0.99-1.06], p99 1.11x [0.95-1.30] (90 % bootstrap intervals)`."""
    parts = []
    for q in Q:
        found = r.get(f"pooled_{kind}_{q}_ratio")
        if found:
            ratio, low, high = found
            parts.append(f"{q} {ratio:.3f}x [{low:.2f}-{high:.2f}]")
    return ", ".join(parts) + " (90 % bootstrap intervals)"


def table(results: dict, busy_cores: float) -> list[str]:
    con = results.get("console")
    if not con:
        return []
    idle = " (the console in an idle-class cgroup)" if con.get("console_idle_class") else ""
    if con.get("console_cpu_shares"):
        idle = f" (the console in a cgroup of cpu.shares {con['console_cpu_shares']}, a process' being 1024)"
    if con.get("console_cpus"):
        mine, rest = con["console_cpus"], con["services_cpus"]
        idle = f" (the console and the pages' readers on CPUs {mine}, everything else on {rest})"
    lines = ["", f"Console (issue 14's targets), read over HTTP with the bearer token{idle}"]
    page = con.get("page") or {}
    if page.get("events"):
        lines += [
            f"A run page with {page['events']:,} events (a hierarchical run of {page['width']:,} no-op "
            f"subtasks), {page['requests']} requests each; target: usable within {page['budget_s']:g} s"
            + ("" if page.get("ok") else f"  [replayed {page['events_replayed']:,} of {page['events']:,}]"),
            f"{'':40} {'p50 s':>7} {'max s':>7} {'bytes':>11} {'other':>6}",
        ]
        for key, label in (
            ("page", "GET /runs/<run> (to the last byte)"),
            ("pattern_panel", "GET its pattern panel (the plan graph)"),
            ("sse_replay", "SSE replay of the history (to its end)"),
            ("page_then_replay", "the page, then the replay (sum)"),
        ):
            r = page[key]
            lines.append(
                f"{label:40} {_f(r['p50_s'], '.3f'):>7} {_f(r['max_s'], '.3f'):>7} "
                f"{_f(r.get('bytes'), ',d'):>11} {_busy(page, busy_cores):>6}"
            )
    elif page:
        lines.append(f"run page: FAILED {page.get('error', '')[:200]}")
    hops = con.get("hops") or {}
    steps = hops.get("steps") or []
    if steps:
        lines += [
            f"Supervisor hop latency at {hops['rate_runs_per_s']:g} runs/s ({hops['seconds']:g} s each) with "
            f"K open SSE streams (K: a rolling window on the runs being submitted; wK: on runs waiting for a "
            f"person; tK: on runs reporting progress every {hops.get('tick_s', 0.1):g} s); "
            "live: event -> reader",
            f"{'K':>4} {'achieved':>9} {'hop p50':>8} {'hop p99':>8} {'p50 x':>6} {'p99 x':>6} "
            f"{'live p50':>9} {'live p99':>9} {'events':>7} {'sup':>5} {'console':>7} {'reader':>6} "
            f"{'other':>6}",
        ]
        for s in steps:
            live = s.get("live") or {}
            k = PREFIX.get(s.get("streams_on"), "") + str(s["open_streams"])
            lines.append(
                f"{k:>4} {s['achieved_runs_per_s']:>9.1f} {_f(s['hop_p50_ms']):>8} "
                f"{_f(s['hop_p99_ms']):>8} {_f(s.get('hop_p50_over_none'), '.2f'):>6} "
                f"{_f(s.get('hop_p99_over_none'), '.2f'):>6} {_f(live.get('p50_ms')):>9} "
                f"{_f(live.get('p99_ms')):>9} {_f(live.get('count'), ',d'):>7} {s['supervisor_cores']:>5.2f} "
                f"{s['console_cores']:>7.2f} {_f(live.get('reader_cores'), '.2f'):>6} "
                f"{_busy(s, busy_cores):>6}"
                + ("" if s["completed"] == s["runs"] else f"  {s['runs'] - s['completed']} unfinished")
            )
        lines.append(
            "(ms; sup, console, reader (the SSE clients, a thread of the benchmark): cores during the step; "
            "other: the rest of the machine)"
        )
        for mode, what in (
            ("rolling", "on the runs being submitted"),
            ("waiting", "on waiting runs"),
            ("ticking", "on ticking runs"),
        ):
            r = hops.get(mode)
            if r:
                lines.append(
                    f"{r['streams']} open streams {what} over none (means of the steps): hop p50 "
                    f"{r['hop_p50_ratio']:.3f}x, p99 {_f(r.get('hop_p99_ratio'), '.3f')}x "
                    f"(target < {hops['budget']:.2f}x)"
                )
                if r.get("pooled_hop_p99_ratio"):
                    n = f"{r['hops']:,} with, {r['hops_without']:,} without"
                    lines.append(f"  every hop pooled ({n}): {pooled(r)}")
                if r.get("pooled_decision_p99_ratio"):
                    lines.append(
                        "  the supervisor's part of each hop (task completed -> next assigned, what "
                        f"baton_supervisor_hop_seconds measures), pooled: {pooled(r, 'decision')}"
                    )
        live = hops.get("live")
        if live:
            lines.append(
                f"live updates, every step's events ({live['count']:,}): p50 {live['p50_ms']:.1f} ms, p99 "
                f"{live['p99_ms']:.1f} ms, max {live['max_ms']:.1f} ms (target < {live['budget_ms']:g} ms)"
            )
            entry = live.get("from_stream_entry") or {}
            if entry.get("count"):
                lines.append(
                    f"  of which after the event entered the run's stream (console + reader; ms clock): p50 "
                    f"{entry['p50_ms']:.1f} ms, p99 {entry['p99_ms']:.1f} ms, max {entry['max_ms']:.1f} ms"
                )
    elif hops:
        lines.append(f"hop latency with open streams: FAILED {hops.get('error', '')[:200]}")
    listing = con.get("runs_list") or {}
    if listing.get("queries"):
        lines += [
            f"The runs list (GET /runs, JSON, pages of up to 50) over an index of "
            f"{listing['index_total']:,} runs, {listing['requests']} requests each",
            f"{'':42} {'p50 s':>7} {'max s':>7} {'rows':>5}",
        ]
        for label, r in listing["queries"].items():
            lines.append(f"{label:42} {_f(r['p50_s'], '.3f'):>7} {_f(r['max_s'], '.3f'):>7} {r['rows']:>5}")
    elif listing:
        lines.append(f"runs list: FAILED {listing.get('error', '')[:200]}")
    box = con.get("inbox") or {}
    if box.get("queries"):
        lines += [
            f"The inbox with {box['waiting']:,} runs waiting for a person, {box['requests']} requests each",
            f"{'':42} {'p50 s':>7} {'max s':>7} {'rows':>5} {'KB':>7}",
        ]
        for label, r in box["queries"].items():
            rows = "" if r["rows"] is None else r["rows"]
            lines.append(
                f"{label:42} {_f(r['p50_s'], '.3f'):>7} {_f(r['max_s'], '.3f'):>7} {rows:>5} "
                f"{r['bytes'] / 1000:>7.1f}"
            )
    elif box:
        lines.append(f"inbox: FAILED {box.get('error', '')[:200]}")
    return lines


def markdown(results: dict) -> list[str]:
    con = results.get("console")
    if not con:
        return []
    out: list[str] = []
    page = con.get("page") or {}
    if page.get("events"):
        out += [
            "",
            f"| console: a run page with {page['events']:,} events ({page['requests']} requests) "
            "| p50 s | max s | target |",
            "| --- | ---: | ---: | ---: |",
        ]
        for key, label in (
            ("page", "the page, to its last byte"),
            ("pattern_panel", "its plan graph panel"),
            ("sse_replay", "the SSE replay of its history"),
            ("page_then_replay", "the page, then the replay"),
        ):
            r = page[key]
            out.append(
                f"| {label} | {_f(r['p50_s'], '.3f')} | {_f(r['max_s'], '.3f')} | < {page['budget_s']:g} |"
            )
    steps = (con.get("hops") or {}).get("steps") or []
    if steps:
        rate = con["hops"]["rate_runs_per_s"]
        out += [
            "",
            f"| console: open SSE streams, at {rate:g} runs/s | hop p50 / p99 ms | vs none (p50 / p99) "
            "| live event -> page p50 / p99 ms |",
            "| ---: | ---: | ---: | ---: |",
        ]
        for s in steps:
            live = s.get("live") or {}
            vs = (
                f"{_f(s.get('hop_p50_over_none'), '.2f')}× / {_f(s.get('hop_p99_over_none'), '.2f')}×"
                if s.get("hop_p50_over_none") is not None
                else "-"
            )
            lv = f"{_f(live.get('p50_ms'))} / {_f(live.get('p99_ms'))}" if live else "-"
            k = PREFIX.get(s.get("streams_on"), "") + str(s["open_streams"])
            out.append(f"| {k} | {_f(s['hop_p50_ms'])} / {_f(s['hop_p99_ms'])} | {vs} | {lv} |")
        hops = con["hops"]
        for mode, what in (
            ("rolling", "on submitted runs"),
            ("waiting", "on waiting runs"),
            ("ticking", "on ticking runs"),
        ):
            r = hops.get(mode)
            if r:
                out.append(
                    f"| {r['streams']} {what} over none, means of the steps (target < {hops['budget']:.2f}×) "
                    f"| | {r['hop_p50_ratio']:.2f}× / {_f(r.get('hop_p99_ratio'), '.2f')}× | |"
                )
                for kind, label in (("hop", "every hop"), ("decision", "the supervisor's part of each hop")):
                    if r.get(f"pooled_{kind}_p99_ratio"):
                        out.append(f"| {r['streams']} {what}: {label}, pooled | | {pooled(r, kind)} | |")
        live = hops.get("live")
        if live:
            out.append(f"| live updates, all steps | | | {_f(live['p50_ms'])} / {_f(live['p99_ms'])} |")
    listing = con.get("runs_list") or {}
    if listing.get("queries"):
        out += [
            "",
            f"| console: the runs list over {listing['index_total']:,} runs (JSON, pages of up to 50) "
            "| p50 s | max s | rows |",
            "| --- | ---: | ---: | ---: |",
        ]
        for label, r in listing["queries"].items():
            out.append(f"| {label} | {_f(r['p50_s'], '.3f')} | {_f(r['max_s'], '.3f')} | {r['rows']} |")
    box = con.get("inbox") or {}
    if box.get("queries"):
        out += [
            "",
            f"| console: {box['waiting']:,} runs waiting for a person | p50 s | max s | rows | KB |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for label, r in box["queries"].items():
            rows = "" if r["rows"] is None else r["rows"]
            times = f"{_f(r['p50_s'], '.3f')} | {_f(r['max_s'], '.3f')}"
            out.append(f"| {label} | {times} | {rows} | {r['bytes'] / 1000:.1f} |")
    return out
