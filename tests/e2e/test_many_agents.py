"""A team of 150 agents on one worker (about 30x the examples' teams): each agent is a consumer with its own
blocking read, and none of them may starve the worker's writes."""

from __future__ import annotations

import asyncio

import pytest

from baton import client
from baton.dev import settings_kwargs
from shared.settings import Settings
from tests.helpers import wait_for_end
from tests.llm_fixtures import own_stack

pytestmark = pytest.mark.e2e

AGENTS = [f"a{i:03d}" for i in range(150)]


@pytest.mark.parametrize("batch", ["100", "0"], ids=["batched", "per-message"])
def test_a_worker_hosting_150_agents_runs_a_run_through_every_one(real_servers, tmp_path, batch):
    """Each of the worker's 150 consumers blocks in its own XREADGROUP. Batched, when they shared the pool
    of the worker's other commands (100 connections), the reads held every connection and the tasks'
    outcomes waited for one until they timed out: the run failed; now the reads have connections of their
    own. Per message (FastStream's subscribers, BATON_BATCH=0), its client's pool of 100 refused the
    worker its start; now it holds a connection for each subscriber besides."""
    workflows = tmp_path / "many.yaml"
    lines = ["agents:", *(f'  {a}: {{handler: "tests.agents:noop"}}' for a in AGENTS), "workflows:"]
    lines += ["  everyone:", "    pattern: sequential", f"    stages: [{', '.join(AGENTS)}]"]
    workflows.write_text("\n".join(lines) + "\n")
    env = {"BATON_BATCH": batch}
    with own_stack(real_servers, workflows, tmp_path / "stack", db=9, bucket="baton-many", env=env) as stack:
        settings = Settings(**settings_kwargs(stack.env))

        async def one_run():
            run_id = await client.submit(settings, "everyone", {})
            return await wait_for_end(settings, run_id, timeout=120)

        events = asyncio.run(one_run())  # (a test of its own loop: the stack starts outside any)
        log = "".join(stack.log_path(h).read_text() for h in stack.procs if h.startswith("worker"))
    assert events[-1].type == "run.completed", events[-1]
    assert [e.agent for e in events if e.type == "task.completed"] == AGENTS
    assert '"read_failed"' not in log and '"handler_failed"' not in log
