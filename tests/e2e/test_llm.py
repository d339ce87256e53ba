"""Model-backed agents end to end: a real model (Gemma 3 270M on llama-cpp-python's OpenAI-compatible
server), real Redis, real MinIO, every service its own process.

The model is tiny and its text is poor, so these tests assert on plumbing: the request reached the model,
schema-valid JSON came back, usage was counted, the output object exists, the route is the right one for
the label. Failures a real model cannot produce on demand (a 400, a timeout, a malformed reply) come from
a scripted endpoint on a loopback socket.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from baton.dev import settings_kwargs
from services.supervisor.hierarchical import Verdict
from shared.llm import Classification, LLMClient, LLMConfig, classify
from shared.settings import Settings
from shared.storage import Storage
from tests.fake_llm import FakeEndpoint, Step, error, reply
from tests.helpers import of_type, run
from tests.llm_fixtures import own_stack

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / "tests" / "llm-workflows.yaml"
BRIEF = ROOT / "examples" / "briefs" / "topic.md"
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
async def fake_endpoint():
    async with FakeEndpoint() as fake:
        fake.script("bad-request", [error(400, "max_tokens is too large: 999999. This model supports 8192.")])
        fake.script("flaky", [Step(delay=2.5, body={}), reply("hello after a timeout")])
        fake.script("malformed", [reply("It is about billing, I would say.")])
        fake.script("unauthorized", [error(401, "Incorrect API key provided: not-th***key.")])
        fake.script("hello", [reply("Hello.")])
        yield fake


@pytest.fixture(scope="module")
def llm_stack(real_servers, llm_server, fake_endpoint, tmp_path_factory):
    env = {
        "BATON_TEST_LLM_URL": llm_server.base_url,
        "BATON_TEST_LLM_MODEL": llm_server.model,
        "BATON_TEST_LLM_WRONG_KEY": "not-the-key",
        "BATON_TEST_FAKE_URL": f"http://127.0.0.1:{fake_endpoint.port}",
    }
    root = tmp_path_factory.mktemp("llm-stack")
    with own_stack(real_servers, WORKFLOWS, root, db=7, bucket="baton-llm", env=env) as stack:
        yield stack


@pytest.fixture(scope="module")
def llm_settings(llm_stack) -> Settings:
    return Settings(**settings_kwargs(llm_stack.env))


def _real(llm_server, **kw) -> LLMConfig:
    return LLMConfig(
        model=llm_server.model, base_url=llm_server.base_url, temperature=0, **{"max_tokens": 48, **kw}
    )


async def test_sequential_run_with_an_llm_stage_completes_and_reports_usage(llm_settings, tmp_path):
    run_id, events = await run(llm_settings, "llm-pipeline", {"brief": BRIEF}, timeout=180)
    end = events[-1]
    assert end.type == "run.completed", end
    done = {e.agent: e for e in of_type(events, "task.completed")}
    assert list(done) == ["outliner", "writer-llm", "seo"]
    stage = done["writer-llm"].usage
    assert stage.prompt_tokens > 50 and stage.completion_tokens > 0 and stage.seconds > 0
    assert stage.cost == pytest.approx((stage.prompt_tokens * 0.15 + stage.completion_tokens * 0.60) / 1e6)
    # the run's result sums the stages: only the model stage has tokens and a cost
    assert end.usage.prompt_tokens == stage.prompt_tokens
    assert end.usage.completion_tokens == stage.completion_tokens
    assert end.usage.cost == pytest.approx(stage.cost)
    assert end.usage.seconds >= stage.seconds
    # the model's draft is an object like any agent's, at the python writer's path, and seo published it
    draft = done["writer-llm"].outputs["draft"]
    assert draft.key == f"runs/{run_id}/drafts/draft.md"
    async with Storage.connect(llm_settings) as storage:
        assert (await storage.get(draft)).strip()
        article = (await storage.get(end.outputs["article"])).decode()
    assert article.startswith("---\ntitle:")
    progress = [e.message for e in of_type(events, "task.progress") if e.agent == "writer-llm"]
    assert any("prompt + " in m and "completion tokens" in m for m in progress), progress


async def test_a_long_input_is_cut_with_a_recorded_note(llm_settings, tmp_path):
    long = tmp_path / "long-brief.md"
    long.write_text("# A long brief\n\n" + "Agents pass references, not content. " * 80)
    size = len(long.read_text())
    run_id, events = await run(llm_settings, "llm-cut", {"brief": long}, timeout=120)
    assert events[-1].type == "run.completed", events[-1]
    note = f"input 'brief': {size} characters, cut to the first 300 (max_input_chars)"
    assert f"input cut: {note}" in [e.message for e in of_type(events, "task.progress")]
    (completed,) = of_type(events, "task.completed")
    assert list(completed.outputs) == ["summary"]  # the note is recorded, not handed on
    assert completed.outputs["summary"].key == f"runs/{run_id}/work/long-brief-summary.md"
    async with Storage.connect(llm_settings) as storage:
        notes = await storage.head(f"runs/{run_id}/work/long-brief-summary.notes.txt")
        assert notes is not None
        assert (await storage.get(notes)).decode() == note + "\n"


async def test_a_reviewer_writes_a_schema_valid_verdict(llm_settings):
    _run_id, events = await run(llm_settings, "llm-review", {"draft": BRIEF}, timeout=120)
    assert events[-1].type == "run.completed", events[-1]
    (completed,) = of_type(events, "task.completed")
    ref = completed.outputs["verdict"]
    assert ref.content_type == "application/json"
    async with Storage.connect(llm_settings) as storage:
        Verdict.model_validate_json(await storage.get(ref))
    assert completed.usage.completion_tokens > 0


async def test_router_with_a_model_classifier_takes_the_route_of_its_label(llm_settings, tmp_path):
    request = tmp_path / "request.txt"
    request.write_text("My laptop cannot connect to the VPN since this morning and my password expired.\n")
    _run_id, events = await run(llm_settings, "support-model", {"request": request}, timeout=120)
    assert events[-1].type == "run.completed", events[-1]
    (routed,) = of_type(events, "route.decided")
    assert routed.classifier == "intent-model"
    assert routed.label in ("billing", "it") and 0 <= routed.confidence <= 1  # schema-valid JSON came back
    assert routed.agent == {"billing": "billing-desk", "it": "it-desk"}[routed.label]
    assert [e.agent for e in of_type(events, "task.completed")] == [routed.agent]
    # the classifier's tokens are in the run's usage, with the desk's
    (desk,) = of_type(events, "task.completed")
    assert routed.usage is not None and routed.usage.prompt_tokens > 0
    assert events[-1].usage.prompt_tokens == routed.usage.prompt_tokens + desk.usage.prompt_tokens


async def test_a_malformed_classifier_reply_goes_to_the_fallback(llm_settings, fake_endpoint, tmp_path):
    request = tmp_path / "request.txt"
    request.write_text("I was charged twice for my subscription.\n")
    before = len(fake_endpoint.requests["malformed"])
    _run_id, events = await run(llm_settings, "support-broken", {"request": request}, timeout=60)
    assert events[-1].type == "run.completed", events[-1]
    (routed,) = of_type(events, "route.decided")
    assert routed.agent == "fallback-desk" and routed.classifier == "intent-broken"
    assert "did not validate as classification after 2 tries" in (routed.reason or ""), routed.reason
    assert len(fake_endpoint.requests["malformed"]) - before == 2  # asked once more, with the error


async def test_an_endpoint_that_times_out_then_answers_is_retried(llm_settings, fake_endpoint):
    _run_id, events = await run(llm_settings, "llm-flaky", timeout=60)
    assert events[-1].type == "run.completed", events[-1]
    assert not of_type(events, "task.failed")
    assert len(fake_endpoint.requests["flaky"]) == 2


async def test_an_agents_tasks_share_its_connections_to_the_endpoint(llm_settings, fake_endpoint):
    """A model agent's tasks reuse one HTTP client and its idle connections (a client a task cost ~20 ms of
    CPU for its TLS context, and a new connection each time)."""
    for _ in range(4):
        _run_id, events = await run(llm_settings, "llm-hello", timeout=60)
        assert events[-1].type == "run.completed", events[-1]
    asked = fake_endpoint.requests["hello"]
    assert len(asked) == 4
    assert len({request["connection"] for request in asked}) <= 2, asked  # (one worker: one, unless idle 2 s)


async def test_a_400_fails_the_task_at_once_with_the_endpoints_message(llm_settings, fake_endpoint):
    _run_id, events = await run(llm_settings, "llm-bad-request", timeout=60)
    assert events[-1].type == "run.failed"
    (failed,) = of_type(events, "task.failed")
    assert not failed.retryable
    assert "400 Bad Request" in failed.error and "max_tokens is too large: 999999" in failed.error
    assert "max_tokens is too large" in events[-1].reason
    assert len(fake_endpoint.requests["bad-request"]) == 1


async def test_a_wrong_api_key_is_a_clear_permanent_error(llm_settings, fake_endpoint):
    _run_id, events = await run(llm_settings, "llm-wrong-key", timeout=60)
    assert events[-1].type == "run.failed"
    (failed,) = of_type(events, "task.failed")
    assert not failed.retryable
    assert "refused the credentials (401 Unauthorized): Incorrect API key provided" in failed.error
    assert "BATON_TEST_LLM_WRONG_KEY" in failed.error and "not-the-key" not in failed.error
    assert fake_endpoint.requests["unauthorized"][-1]["authorization"] == "Bearer not-the-key"


async def test_classify_with_the_real_model_returns_schema_valid_json(llm_server):
    labels = ["billing", "it", "sales"]
    found = await classify(_real(llm_server), "Please refund the second charge on my invoice.", labels)
    assert isinstance(found, Classification)
    assert found.label in labels and 0 <= found.confidence <= 1
    assert found.usage.prompt_tokens > 0 and found.usage.completion_tokens > 0 and found.usage.calls >= 1


async def test_structured_output_from_the_real_model_validates(llm_server):
    async with LLMClient(_real(llm_server, max_tokens=64)) as llm:
        verdict, result = await llm.structured(
            [{"role": "user", "content": "Is 'Hello world' a good title? Give a verdict."}], Verdict
        )
    assert isinstance(verdict, Verdict) and result.text.strip()
    assert llm.usage.prompt_tokens > 0 and llm.usage.completion_tokens > 0
