"""What `make chaos` found, read from each run's own event stream: per workflow, how runs ended and how
long they took, and every task done twice or run ended twice, with the evidence."""

from __future__ import annotations

import json
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from shared import streams
from shared.broker import DATA_FIELD

END_TYPES = ("run.completed", "run.failed", "run.cancelled")


@dataclass
class RunReport:
    run_id: str
    workflow: str
    end: str = "lost"  # completed, failed, cancelled, or lost (no end event)
    reason: str = ""
    seconds: float | None = None
    done_twice: list[dict] = field(default_factory=list)
    ends: int = 0  # distinct end events: more than one is a run ended twice
    responses: list[tuple[str, float]] = field(default_factory=list)  # (response key, applied at)


def analyse(run_id: str, workflow: str, entries: list, submitted_at: float) -> RunReport:
    """One run's report from its stream (`XRANGE` entries, oldest first)."""
    report = RunReport(run_id, workflow)
    events = []
    for entry_id, fields in entries:
        try:
            events.append((entry_id, json.loads(fields[DATA_FIELD.encode()])))
        except (KeyError, ValueError):
            continue
    # Distinct events: a supervisor that dies before acknowledging records the same event (same id) again
    # in the run's stream; that is a duplicate log line, not work done twice.
    completions = {e["event_id"]: e for _i, e in events if e.get("type") == "task.completed"}
    done = Counter((e["task_id"], e["attempt"]) for e in completions.values())
    for (task_id, attempt), n in sorted(done.items()):
        if n > 1:
            report.done_twice.append(
                {
                    "task_id": task_id,
                    "attempt": attempt,
                    "by": [
                        (e["type"], e.get("sender"), e.get("created_at"))
                        for _i, e in events
                        if e.get("type") in ("task.started", "task.completed") and e.get("task_id") == task_id
                    ],
                }
            )
    for entry_id, e in events:
        if e.get("type") == "human.received" and e.get("response"):
            report.responses.append((e["response"]["key"], entry_seconds(entry_id)))
    ends = {}
    for entry_id, e in events:
        if e.get("type") in END_TYPES and e["event_id"] not in ends:
            ends[e["event_id"]] = (entry_id, e)
    report.ends = len(ends)
    if ends:
        entry_id, first = next(iter(ends.values()))
        report.end = first["type"].split(".", 1)[1]
        report.reason = first.get("reason") or ""
        report.seconds = entry_seconds(entry_id) - submitted_at
    return report


def entry_seconds(entry_id) -> float:
    """When Redis appended a stream entry (epoch seconds, from its id)."""
    stamp = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(stamp.split("-")[0]) / 1000


def response_latency(reports: list[RunReport], written: dict[str, float]) -> dict:
    """From a person's response file written to the run taking it (human.received): p50/p99 seconds."""
    seconds = sorted(at - written[key] for r in reports for key, at in r.responses if key in written)
    return {
        "responses": len(seconds),
        "p50_s": round(statistics.median(seconds), 2) if seconds else None,
        "p99_s": percentile(seconds, 0.99),
    }


async def read_reports(redis, submitted: dict[str, tuple[str, float]]) -> list[RunReport]:
    """Every submitted run's report (`submitted`: run id -> (workflow, submitted at, epoch seconds))."""
    reports = []
    ids = list(submitted)
    for start in range(0, len(ids), 200):
        chunk = ids[start : start + 200]
        pipe = redis.pipeline(transaction=False)
        for run_id in chunk:
            pipe.xrange(streams.run_events(run_id))
        for run_id, entries in zip(chunk, await pipe.execute(), strict=True):
            workflow, at = submitted[run_id]
            reports.append(analyse(run_id, workflow, entries, at))
    return reports


async def lost_detail(redis, report: RunReport, last: int = 8) -> dict:
    """Where a lost run stands: its status and its newest events."""
    core = await redis.hget(streams.run_state(report.run_id), "core")
    entries = await redis.xrevrange(streams.run_events(report.run_id), count=last)
    newest = []
    for entry_id, fields in reversed(entries):
        e = json.loads(fields[DATA_FIELD.encode()])
        newest.append(f"{entry_id.decode()} {e['type']} {e.get('task_id', '')} {e.get('sender', '')}".strip())
    return {
        "run_id": report.run_id,
        "workflow": report.workflow,
        "status": json.loads(core)["status"] if core else None,
        "events": newest,
    }


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted values."""
    if not sorted_values:
        return None
    rank = max(1, -(-int(q * 100) * len(sorted_values) // 100))  # ceil(q * n)
    return round(sorted_values[rank - 1], 2)


def summarise(reports: list[RunReport], patterns: dict[str, str]) -> dict:
    """Per workflow (and in total): runs, how they ended, work done twice, p50/p99 run time."""
    groups: dict[str, list[RunReport]] = defaultdict(list)
    for r in reports:
        groups[r.workflow].append(r)
    rows = {}
    for name, group in [*sorted(groups.items()), ("all", reports)]:
        seconds = sorted(r.seconds for r in group if r.seconds is not None)
        reasons = Counter(r.reason[:100] for r in group if r.end == "failed")
        rows[name] = {
            "pattern": patterns.get(name, ""),
            "runs": len(group),
            "completed": sum(r.end == "completed" for r in group),
            "failed": sum(r.end == "failed" for r in group),
            "cancelled": sum(r.end == "cancelled" for r in group),
            "lost": sum(r.end == "lost" for r in group),
            "tasks_done_twice": sum(len(r.done_twice) for r in group),
            "runs_ended_twice": sum(r.ends > 1 for r in group),
            "p50_s": round(statistics.median(seconds), 2) if seconds else None,
            "p99_s": percentile(seconds, 0.99),
            "failure_reasons": dict(reasons.most_common()),
        }
    return rows


def table(rows: dict) -> str:
    """The per-workflow rows as a markdown table."""
    head = "| workflow | pattern | runs | completed | failed | lost | done twice | ended twice | p50 | p99 |"
    lines = [head, "| " + " | ".join(["---"] * 10) + " |"]
    for name, r in rows.items():
        p50 = f"{r['p50_s']} s" if r["p50_s"] is not None else "-"
        p99 = f"{r['p99_s']} s" if r["p99_s"] is not None else "-"
        lines.append(
            f"| {name} | {r['pattern']} | {r['runs']} | {r['completed']} | {r['failed']} | {r['lost']} "
            f"| {r['tasks_done_twice']} | {r['runs_ended_twice']} | {p50} | {p99} |"
        )
    return "\n".join(lines)
