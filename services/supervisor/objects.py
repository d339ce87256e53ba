"""Bucket changes (`baton:objects`): triggers, a person's responses, turns of a collaboration."""

from __future__ import annotations

import json

from shared import streams
from shared.events import HumanInputReceived, ObjectChanged, ObjectRef, RunSubmitted
from shared.runs import CAUSE, RunState
from shared.workspace import run_of_key, run_prefix

from .decisions import Decision, answer_agent, ask_next
from .engine import Engine
from .runs import trigger_run_id


def responses_prefix(run_id: str) -> str:
    return f"{run_prefix(run_id)}human/responses/"


def parse_response(raw: bytes) -> tuple[bool, str]:
    """A response file: JSON `{"decision": "approve"|"reject", "text": ...}`, or plain text (approval,
    unless its first word is `reject`)."""
    text = raw.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        decision = str(data.get("decision", "approve")).lower()
        return decision not in ("reject", "rejected", "no"), str(data.get("text", ""))
    return not text.lower().startswith("reject"), text


def may_move_a_run(eng: Engine, path: str) -> bool:
    """Whether a file at `path` in a run's workspace can move its run, whatever the run's workflow: the
    shared document of a bidirectional workflow, or an approval under its prefix. Every other file a run
    writes (every agent's every output) is let go without reading the run's state (a burst of 10,000 runs
    of three stages writes 30,000)."""
    return path in eng.documents or path.startswith(eng.approvals)


async def on_object(eng: Engine, event: ObjectChanged) -> None:
    """A file changed in the bucket: a trigger, a person's response, or a turn in a collaboration."""
    if event.bucket != eng.settings.bucket:
        return
    run_id = run_of_key(event.key)
    if run_id is None:
        await maybe_trigger(eng, event)
        return
    if event.key.startswith(responses_prefix(run_id)):
        if event.created:
            await apply_response(eng, run_id, event.ref())
        return
    if not may_move_a_run(eng, event.key[len(run_prefix(run_id)) :]):
        return  # an agent's output: its run learns of it from the task's outcome, not from the bucket
    loaded = await eng.store.load(run_id, CAUSE + event.event_id)
    if not loaded.exists:
        return
    state = loaded.view()
    if not state.active:
        return
    wf, module = eng.pattern_of(state)
    if hasattr(module, "on_object"):
        await eng.decide(
            run_id,
            lambda s: (
                module.on_object(s, wf, eng.workflows, event)
                if s.active
                else Decision.ignore(f"run is {s.status}")
            ),
            cause=event.event_id,
            loaded=loaded,
        )


async def apply_response(eng: Engine, run_id: str, response: ObjectRef) -> bool:
    """Resume a run waiting for a person with this response file. A response that lands while the run is
    not waiting yet is kept, and applied when the run asks (`check_responses`)."""
    cause = f"response:{response.key}@{response.version_id}"
    loaded = await eng.store.load(run_id, CAUSE + cause)
    if not loaded.exists:
        return False
    state = loaded.view()
    if response.key in state.responses_used:  # applied before: a redelivery sends what it still owes
        await eng.redo(loaded, cause)
        return False
    if state.status != "waiting_for_human" or state.waiting is None:
        eng.log.info("response_kept", reason=f"run is {state.status}", key=response.key)
        return False
    approved, text = parse_response(await eng.storage.get(response))
    task_id = state.waiting.task_id
    wf, module = eng.pattern_of(state)

    def choose(s: RunState) -> Decision:
        if s.status != "waiting_for_human" or s.waiting is None or s.waiting.task_id != task_id:
            return Decision.ignore("no longer waiting for this response")
        if response.key in s.responses_used:
            return Decision.ignore("response already applied")
        s.responses_used.append(response.key)
        if s.waiting.agent is not None:  # an agent's question: the answer goes back to its task
            decision = answer_agent(s, approved, text, response)
        else:
            decision = module.on_human(s, wf, eng.workflows, approved, text, response)
        ask_next(s, decision)
        # with the decision's own events, so it is never recorded after the run's end
        decision.notes.insert(
            0,
            HumanInputReceived(
                run_id=run_id,
                task_id=task_id,
                approved=approved,
                text=text,
                response=response,
                trace_id=s.trace_id,
                sender=eng.sender,
            ),
        )
        return decision

    out = await eng.decide(run_id, choose, cause=cause, loaded=loaded)
    return out.state is not None


async def check_responses(eng: Engine, state: RunState) -> None:
    """A run just started waiting: a response already in the bucket (not applied before) answers it."""
    for ref in sorted(await eng.storage.list(responses_prefix(state.run_id)), key=lambda r: r.key):
        if ref.key in state.responses_used:
            continue
        current = await eng.storage.head(ref.key)
        if current is not None and await apply_response(eng, state.run_id, current):
            eng.log.info("response_applied_on_request", key=ref.key)
            return


async def maybe_trigger(eng: Engine, event: ObjectChanged) -> None:
    if not event.created:
        return
    for name, wf in eng.workflows.triggers():
        if event.key.startswith(wf.trigger.prefix):
            run_id = trigger_run_id(event.bucket, event.key, event.version_id or event.etag)
            submitted = RunSubmitted(
                run_id=run_id,
                workflow=name,
                inputs={wf.trigger.input: event.ref()},
                params={"trigger": wf.trigger.input},
                sender=eng.sender,
            )
            await eng.db.send(streams.RUNS, submitted)
            eng.log.info("run_triggered", workflow=name, key=event.key, triggered_run=run_id)
