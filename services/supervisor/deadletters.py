"""Dead letters (`baton:dlq`): a task, outcome or submission that died there fails its run, with why.

A letter is acted on only if it is still the run's business: a task letter only while that task (and
attempt) is outstanding, a submission letter only if the run was never stored. Letters about the
dead-letter stream itself are ignored (no loop).
"""

from __future__ import annotations

import json
import re
from typing import Any

from shared import streams
from shared.runs import CAUSE, TASK, RunState

from .decisions import Decision, fail
from .engine import Engine
from .runs import create
from .store import Loaded

OUTCOMES = ("task.assigned", "task.completed", "task.failed", "route.decided")


async def on_dead_letter(eng: Engine, letter: dict[str, Any]) -> None:
    run_id, stream = letter.get("run_id"), str(letter.get("stream", ""))
    if not isinstance(run_id, str) or not run_id or stream == streams.DLQ:
        return
    payload = _payload(letter.get("raw") or "")
    kind = payload.get("type")
    why = f"dead-lettered by {letter.get('service', '?')} from {stream}: {letter.get('reason', '?')}"
    cause = f"dlq:{letter.get('event_id', '')}"
    if stream == streams.RUNS:
        if kind in (None, "run.submitted"):
            await _submission_died(eng, run_id, payload, f"the submission was {why}", cause)
        return
    task_id, attempt = payload.get("task_id"), payload.get("attempt", 1)
    if kind not in OUTCOMES and not (stream.startswith(streams.agent_stream("")) or stream == streams.ROUTE):
        return  # progress, a start: the run goes on without it
    fields = [TASK + task_id] if isinstance(task_id, str) else []
    loaded = await eng.store.load(run_id, *fields, CAUSE + cause)

    def choose(s: RunState) -> Decision:
        if not s.active:
            return Decision.ignore(f"run is already {s.status}")
        if isinstance(task_id, str):
            slot = dict.get(s.tasks, task_id)
            if slot is None or slot.task.attempt != attempt:
                return Decision.ignore(f"stale dead letter for {task_id} attempt {attempt}")
        what = f"task {task_id}" if isinstance(task_id, str) else "an event of this run"
        return Decision(state=fail(s, f"{what} was {why}"))

    await eng.decide(run_id, choose, cause=cause, loaded=loaded)


def _payload(raw: str) -> dict[str, Any]:
    """The letter's payload, or (cut short, or not JSON) the ids that can be read off its start."""
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if isinstance(value, dict):
        return value
    found: dict[str, Any] = {}
    for name, pattern in _IDS.items():
        match = pattern.search(raw[:4096])
        if match:
            found[name] = int(match.group(1)) if name == "attempt" else match.group(1)
    return found


_IDS = {
    name: re.compile(rf'"{name}"\s*:\s*{value}')
    for name, value in (("type", r'"([^"]+)"'), ("task_id", r'"([^"]+)"'), ("attempt", r"(\d+)"))
}


async def _submission_died(eng: Engine, run_id: str, payload: dict, reason: str, cause: str) -> None:
    loaded: Loaded = await eng.store.load(run_id)
    if loaded.exists:
        return
    workflow = payload.get("workflow")
    state = RunState(
        run_id=run_id,
        workflow=workflow if isinstance(workflow, str) else "?",
        pattern="?",
        status="failed",
        reason=reason,
        trace_id=str(payload.get("trace_id") or run_id),
    )
    await create(eng, loaded, state, cause)
