"""The bidirectional pattern: turns driven by file-change events on one document, with loop guards."""

from __future__ import annotations

import asyncio

import pytest

from services.worker.runtime import AgentContext
from shared import streams
from shared.broker import DATA_FIELD
from shared.events import TaskAssigned, parse_event
from shared.redisconn import connect
from shared.storage import Storage
from shared.workflow import parse_workflows
from tests.helpers import of_type, run

pytestmark = pytest.mark.e2e


async def _collab(settings, tmp_path, workflow, text="first line\n"):
    seed = tmp_path / "doc.md"
    seed.write_text(text)
    return await run(settings, workflow, {"document": seed}, timeout=40)


async def _outcomes(settings, run_id: str, task_ids: set[str], timeout: float = 10) -> dict:
    """The turns' `task.completed`, from the run's whole stream. A turn's outcome is recorded when the
    supervisor reads it; the run may have moved on before that, on the version the turn reported writing
    (or its notification), and even ended: so an outcome can follow the run's end in its stream."""
    redis = connect(settings.redis_url)
    try:
        async with asyncio.timeout(timeout):
            while True:
                entries = await redis.xrange(streams.run_events(run_id))
                events = [parse_event(f[DATA_FIELD.encode()]) for _i, f in entries]
                found = {e.task_id: e for e in of_type(events, "task.completed") if e.task_id in task_ids}
                if len(found) == len(task_ids):
                    return found
                await asyncio.sleep(0.1)
    finally:
        await redis.aclose()


async def test_a_writer_editor_pair_converges_before_max_rounds(settings, tmp_path):
    run_id, events = await _collab(settings, tmp_path, "co-write")
    end = events[-1]
    assert end.type == "run.completed" and end.ended_by == "converged", end
    turns = of_type(events, "task.assigned")
    assert 1 < len(turns) < 6
    assert [t.agent for t in turns[:2]] == ["writer2", "editor2"]  # turns alternate
    # each turn was handed the exact version the previous turn wrote
    completed = await _outcomes(settings, run_id, {t.task_id for t in turns[:-1]})
    for prev, nxt in zip(turns, turns[1:], strict=False):
        assert nxt.inputs["document"].version_id == completed[prev.task_id].outputs["document"].version_id
    async with Storage.connect(settings) as storage:
        doc = (await storage.get(end.outputs["document"])).decode()
    assert doc.count("\n") == 4


async def test_the_oscillation_guard_stops_a_pair_that_would_argue_forever(settings, tmp_path):
    _run_id, events = await _collab(settings, tmp_path, "argue")
    assert events[-1].ended_by == "oscillation", events[-1]
    assert len(of_type(events, "task.assigned")) == 3  # A, B, then A again is caught


async def test_max_rounds_stops_a_pair_that_never_converges(settings, tmp_path):
    _run_id, events = await _collab(settings, tmp_path, "endless")
    assert events[-1].ended_by == "max_rounds", events[-1]
    assert len(of_type(events, "task.assigned")) == 4


async def test_an_approval_file_ends_the_collaboration(settings, tmp_path):
    _run_id, events = await _collab(settings, tmp_path, "sign-off")
    assert events[-1].ended_by == "approved", events[-1]


async def test_two_concurrent_writers_on_one_document_lose_nothing(settings):
    wf = parse_workflows("agents: {w: {handler: 'tests.agents:grow', writes: [drafts/]}}")
    async with Storage.connect(settings) as storage:
        seed = await storage.put("runs/r-race/drafts/doc.md", b"seed\n")
        task = TaskAssigned(
            run_id="r-race",
            task_id="t",
            workflow="x",
            inputs={"document": seed},
            output_prefix="runs/r-race/drafts/",
        )

        async def append(line: str):
            ctx = AgentContext(task, "w", wf.agents["w"], storage)
            await ctx.update("document", lambda old: old + line.encode())

        await asyncio.gather(*(append(f"line {i}\n") for i in range(6)))
        head = await storage.head("runs/r-race/drafts/doc.md")
        final = (await storage.get(head)).decode()
    assert final.startswith("seed\n")
    assert sorted(final.splitlines()[1:]) == [f"line {i}" for i in range(6)]
