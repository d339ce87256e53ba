"""The router pattern: rules first, then the classifier agent, and the fallback — never a guess."""

from __future__ import annotations

import asyncio

import pytest

from shared.storage import Storage
from tests.helpers import of_type, run

pytestmark = pytest.mark.e2e


async def _routed(settings, text, workflow="support", tmp_path=None):
    inputs, params = {}, {"text": text}
    if tmp_path is not None:  # the request as a file, read by reference
        path = tmp_path / "request.txt"
        path.write_text(text)
        inputs, params = {"request": path}, {}
    run_id, events = await run(settings, workflow, inputs, params)
    decided = of_type(events, "route.decided")
    assert len(decided) == 1, [e.type for e in events]
    return run_id, events, decided[0]


async def test_three_intents_reach_three_specialists(settings, tmp_path):
    results = await asyncio.gather(
        _routed(settings, "Where is my invoice for March?"),
        _routed(settings, "My laptop will not boot", tmp_path=tmp_path),
        _routed(settings, "The parcel delivery is late"),
    )
    agents = [decided.agent for _r, _e, decided in results]
    assert agents == ["billing", "it", "shipping"]
    assert [d.classifier for _r, _e, d in results] == ["kwclassifier", "kwclassifier", "rules"]
    async with Storage.connect(settings) as storage:
        for (_run_id, events, decided), agent in zip(results, agents, strict=True):
            assert events[-1].type == "run.completed"
            assert (await storage.get(events[-1].outputs["answer"])).decode() == f"handled by {agent}\n"
            assert decided.confidence >= 0.6


async def test_a_classifier_agents_concurrency_bounds_its_calls_in_a_burst(settings):
    """The router routes a batch of requests at once, but a classifier agent of `concurrency: 1` (a model
    endpoint with a rate limit) is asked one request at a time: no call overlaps another (an overlapping
    one would answer below the bar and send its request to the fallback)."""
    results = await asyncio.gather(
        *(_routed(settings, f"request {i}", workflow="support-serial") for i in range(12))
    )
    assert [d.agent for _r, _e, d in results] == ["billing"] * 12, [d.reason for _r, _e, d in results]


async def test_an_unsure_request_goes_to_the_fallback_with_the_reason(settings):
    _run_id, events, decided = await _routed(settings, "maybe something about money")
    assert decided.agent == "triage" and decided.label == "billing"
    assert "confidence 0.30 is below 0.60" in decided.reason
    assert events[-1].type == "run.completed"


async def test_a_label_without_a_route_goes_to_the_fallback(settings):
    _run_id, _events, decided = await _routed(settings, "how is the weather")
    assert decided.agent == "triage" and "label 'smalltalk' has no route" in decided.reason


async def test_a_crashing_classifier_sends_the_request_to_the_fallback_and_records_why(settings):
    _run_id, events, decided = await _routed(settings, "please explode")
    assert decided.agent == "triage"
    assert "classifier failed: RuntimeError: classifier blew up" in decided.reason
    assert events[-1].type == "run.completed"


async def test_a_request_file_far_larger_than_a_classifier_reads_is_routed_by_its_start(settings, tmp_path):
    """The router reads only the beginning of a request file (what a classifier sees: MAX_TEXT characters),
    with one ranged GET: a 64 MiB request is routed as quickly as a short one."""
    path = tmp_path / "request.txt"
    with path.open("w") as f:
        f.write("Where is my invoice for March?\n")
        f.write("filler " * (64 * 2**20 // 7))
    run_id, events = await run(settings, "support", {"request": path}, {}, timeout=60)
    decided = of_type(events, "route.decided")
    assert [d.agent for d in decided] == ["billing"], [e.type for e in events]
    assert events[-1].type == "run.completed"
