"""Every example workflow in examples/ runs as documented, on its own Redis, MinIO and services."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest

from baton import client, servers
from baton.client import init_workspace
from baton.dev import Stack, acl_credentials, local_env, new_passwords, settings_kwargs
from examples import a2a_reviewer
from shared.settings import Settings
from shared.storage import Storage
from tests.a2a_agents import AgentsServer
from tests.conftest import acl_refusals
from tests.helpers import of_type, run, wait_for_end

ROOT = Path(__file__).resolve().parents[2]
BRIEF = ROOT / "examples" / "briefs" / "topic.md"
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("examples")
    port, token = servers.free_port(), secrets.token_hex(8)
    redis = servers.start_redis(tmp / "redis", password=secrets.token_urlsafe(16))
    minio = servers.start_minio(tmp / "minio", f"http://127.0.0.1:{port}/minio/events", token)
    env = local_env(redis.url, minio.url, ROOT / "examples" / "workflows.yaml", port, token)
    env["BATON_CWD"] = str(ROOT)
    env["REVIEWER_URL"] = f"http://127.0.0.1:{servers.free_port()}"  # examples/a2a_reviewer.py, below
    passwords = new_passwords()  # every service as its own least-privilege users, as in `baton dev up`
    stack = Stack(tmp / "stack", env, credentials=acl_credentials(env, passwords))
    reviewer = AgentsServer(env["REVIEWER_URL"], app=a2a_reviewer.build_app(env["REVIEWER_URL"])).start()
    try:
        asyncio.run(init_workspace(Settings(**settings_kwargs(env), acl_passwords=passwords)))
        for name in ("notifier", "supervisor", "router", "worker", "worker"):
            stack.start(name)
        yield Settings(**settings_kwargs(env))
        stack.stop_all()
        assert not asyncio.run(acl_refusals(env["REDIS_URL"])), "a service lacks a grant (ACL LOG)"
    finally:
        reviewer.stop()
        stack.stop_all()
        minio.stop()
        redis.stop()


async def _text(settings, ref) -> str:
    async with Storage.connect(settings) as storage:
        return (await storage.get(ref)).decode()


async def test_support_routes_by_rule_by_classifier_and_to_a_person(examples, tmp_path):
    _r, events = await run(examples, "support", {}, {"text": "I want a refund for this invoice"})
    assert of_type(events, "route.decided")[0].classifier == "rules"
    assert "Reply from Billing" in await _text(examples, events[-1].outputs["reply"])
    _r, events = await run(examples, "support", {}, {"text": "my laptop login is locked"})
    decided = of_type(events, "route.decided")[0]
    assert (decided.agent, decided.classifier) == ("it-helpdesk", "intent-scorer")
    run_id = await client.submit(examples, "support", {}, {"text": "hello there"})
    await asyncio.sleep(1.5)
    assert any(r["run_id"] == run_id for r in await client.list_runs(examples, waiting=True))
    await client.respond(examples, run_id, approve=True, text="answered by phone")
    assert (await wait_for_end(examples, run_id))[-1].type == "run.completed"


async def test_report_plans_reviews_retries_and_integrates(examples):
    _r, events = await run(examples, "report", {"brief": BRIEF}, timeout=60)
    assert events[-1].type == "run.completed", events[-1]
    verdicts = of_type(events, "review.verdict")
    assert any(not v.accepted for v in verdicts) and sum(v.accepted for v in verdicts) == 4
    report = await _text(examples, events[-1].outputs["report"])
    assert report.startswith("# Report") and report.count("In practice") == 4


async def test_co_write_converges(examples, tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("# Plan\n\n- Use streams\n- Pass references\n")
    _r, events = await run(examples, "co-write", {"document": doc}, timeout=40)
    assert events[-1].ended_by == "converged", events[-1]
    text = await _text(examples, events[-1].outputs["document"])
    assert "really" not in text and "- Use streams: this matters" in text


async def test_reviewed_content_waits_for_approval_then_publishes(examples):
    run_id = await client.submit(examples, "reviewed-content", {"brief": BRIEF})
    for _ in range(100):
        if any(r["run_id"] == run_id for r in await client.list_runs(examples, waiting=True)):
            break
        await asyncio.sleep(0.1)
    await client.respond(examples, run_id, approve=True)
    events = await wait_for_end(examples, run_id)
    assert events[-1].type == "run.completed" and "article" in events[-1].outputs


async def _until(settings, run_id: str, type_: str, timeout: float = 60):
    async def find():
        async for event in client.follow(settings, run_id, block_ms=500):
            if event.type == type_:
                return event

    return await asyncio.wait_for(find(), timeout)


async def test_reviewed_draft_asks_the_person_what_its_remote_reviewer_asks_and_writes_its_review(examples):
    run_id = await client.submit(examples, "reviewed-draft", {"brief": BRIEF})
    asked = await _until(examples, run_id, "human.requested")
    assert asked.question == "remote-reviewer asks: Who is the article for?"
    await client.respond(examples, run_id, approve=True, text="engineers new to Baton")
    events = await wait_for_end(examples, run_id, timeout=60)
    assert events[-1].type == "run.completed", events[-1]
    review = events[-1].outputs["review"]
    assert review.key == f"runs/{run_id}/reviews/review.md"
    async with Storage.connect(examples) as storage:
        text = (await storage.get(review)).decode()
    assert text.startswith("# Review for engineers new to Baton\n") and " words, " in text
