"""The model-backed examples (examples/llm-workflows.yaml) as a user runs them, on the local model (with
shorter replies): the LLM content factory, and the support desk with a model classifier and model
specialists."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from baton.dev import settings_kwargs
from shared.settings import Settings
from shared.storage import Storage
from tests.helpers import of_type, run
from tests.llm_fixtures import own_stack

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "llm-workflows.yaml"
BRIEF = ROOT / "examples" / "briefs" / "topic.md"
pytestmark = pytest.mark.e2e


MAX_TOKENS = 64  # the tiny model rambles to its limit: keep the suite fast on 2 busy cores


def capped_copy(folder: Path) -> Path:
    """The example file and its prompts, unchanged but for `max_tokens` (at most MAX_TOKENS)."""
    data = yaml.safe_load(EXAMPLES.read_text())
    for spec in data["agents"].values():
        if spec.get("kind") == "llm":
            spec["max_tokens"] = min(spec.get("max_tokens", MAX_TOKENS), MAX_TOKENS)
    shutil.copytree(EXAMPLES.parent / "prompts", folder / "prompts")
    path = folder / EXAMPLES.name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def example_settings(real_servers, llm_server, tmp_path_factory) -> Settings:
    env = {"BATON_LLM_BASE_URL": llm_server.base_url, "BATON_LLM_MODEL": llm_server.model}
    root = tmp_path_factory.mktemp("llm-examples")
    workflows = capped_copy(tmp_path_factory.mktemp("llm-examples-file"))
    with own_stack(real_servers, workflows, root, db=8, bucket="baton-llm-examples", env=env) as stack:
        yield Settings(**settings_kwargs(stack.env))


async def test_llm_content_factory_publishes_an_article_with_its_cost(example_settings):
    run_id, events = await run(example_settings, "content-factory-llm", {"brief": BRIEF}, timeout=240)
    end = events[-1]
    assert end.type == "run.completed", end
    done = {e.agent: e for e in of_type(events, "task.completed")}
    assert list(done) == ["outliner-llm", "writer-llm", "seo"]
    assert done["outliner-llm"].outputs["outline"].key == f"runs/{run_id}/drafts/outline.md"
    assert done["writer-llm"].outputs["draft"].key == f"runs/{run_id}/drafts/draft.md"
    assert end.outputs["article"].key == f"runs/{run_id}/published/topic.md"
    model = [done["outliner-llm"].usage, done["writer-llm"].usage]
    assert end.usage.prompt_tokens == sum(u.prompt_tokens for u in model) > 0
    assert end.usage.completion_tokens == sum(u.completion_tokens for u in model) > 0
    assert end.usage.cost == pytest.approx(sum(u.cost for u in model)) and end.usage.cost > 0
    async with Storage.connect(example_settings) as storage:
        assert (await storage.get(end.outputs["article"])).decode().startswith("---\ntitle:")


@pytest.mark.parametrize(
    ("text", "via"),
    [
        ("Where is the invoice for my last order?", "rules"),  # a keyword rule: the model is not asked
        ("My laptop will not connect to the office wifi since the update.", "intent-model"),
    ],
)
async def test_llm_support_desk_routes_and_a_model_replies(example_settings, text, via):
    _run_id, events = await run(example_settings, "support-llm", params={"text": text}, timeout=120)
    assert events[-1].type == "run.completed", events[-1]
    (routed,) = of_type(events, "route.decided")
    assert routed.classifier == via
    routes = {"billing": "billing-llm", "it": "it-llm"}
    expected = routes[routed.label] if routed.label in routes and routed.confidence >= 0.5 else "triage-llm"
    assert routed.agent == expected, routed
    (done,) = of_type(events, "task.completed")
    assert done.agent == routed.agent and "reply" in done.outputs
    assert done.usage.completion_tokens > 0
