"""`kind: llm` agents: validation in the workflow file, prompt templates, and hosting by the worker."""

from __future__ import annotations

from pathlib import Path

import pytest

from baton import docs
from services.worker.llm import check_template, output_format, render
from shared import streams
from shared.errors import ConfigError
from shared.workflow import load_workflows, parse_workflows

ROOT = Path(__file__).resolve().parents[2]
LLM = "kind: llm, model: m, base_url: 'http://127.0.0.1:9/v1'"


def one_agent(body: str) -> str:
    return f"agents:\n  w: {{{body}}}\n"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "kind: llm, prompt: hi",
            "agents.w: Value error, an llm agent needs `prompt`, `model` and `base_url` "
            "(missing: model, base_url)",
        ),
        (f"{LLM}, prompt: hi, api_key: sk-abc", "never put an API key in the workflow file"),
        (f"{LLM}, prompt: hi, api_key_env: sk-abc123", "api_key_env names an environment variable"),
        (f"{LLM}, prompt: hi, handler: 'x:y'", "an llm agent has no `handler`"),
        (f"{LLM}, prompt: hi, output: xml", "output 'xml': expected one of"),
        (f"{LLM}, prompt: hi, writes: [drafts/], output_path: published/x.md", "is outside `writes`"),
        (f"{LLM}, prompt: hi, output_path: ../x.md", "output_path"),
        (f"{LLM}, prompt: prompts/missing.md", "prompt file 'prompts/missing.md' not found"),
        (f"{LLM}, prompt: hi, temperature: 5", "agents.w.temperature"),
        (f"{LLM}, prompt: hi, price: {{prompt: -1}}", "agents.w.price.prompt"),
    ],
)
def test_invalid_llm_agents_name_the_problem(body, message):
    with pytest.raises(ConfigError) as info:
        parse_workflows(one_agent(body), "wf.yaml")
    assert message in str(info.value)


def test_prompt_files_are_relative_to_the_workflow_file(tmp_path, monkeypatch):
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "w.md").write_text("Do this: {{ instruction }}\n{{ inputs }}\n")
    wf_file = tmp_path / "wf.yaml"
    wf_file.write_text(one_agent(f"{LLM}, prompt: prompts/w.md"))
    monkeypatch.chdir(ROOT)  # not the workflow file's folder
    spec = load_workflows(wf_file).agents["w"]
    assert spec.prompt_file() == tmp_path / "prompts" / "w.md"
    assert spec.prompt_template().startswith("Do this: {{ instruction }}")
    assert callable(spec.load_handler())


def test_inline_prompts_and_environment_in_the_endpoint(monkeypatch):
    text = one_agent(
        "kind: llm, prompt: 'Summarise {{ input.doc }}', model: '${TEST_LLM_MODEL:-small}', "
        "base_url: '${TEST_LLM_URL}', api_key_env: TEST_LLM_KEY, price: {prompt: 0.15, completion: 0.6}"
    )
    spec = parse_workflows(text).agents["w"]
    assert spec.prompt_file() is None and spec.prompt_template() == "Summarise {{ input.doc }}"
    monkeypatch.delenv("TEST_LLM_URL", raising=False)
    with pytest.raises(ConfigError, match="needs the environment variable TEST_LLM_URL"):
        spec.llm_config()
    monkeypatch.setenv("TEST_LLM_URL", "http://models.internal:8000/v1")
    monkeypatch.delenv("TEST_LLM_MODEL", raising=False)
    cfg = spec.llm_config()
    assert (cfg.model, cfg.base_url) == ("small", "http://models.internal:8000/v1")
    assert cfg.api_key_env == "TEST_LLM_KEY"
    assert cfg.price.cost(1_000_000, 1_000_000) == pytest.approx(0.75)


def test_unknown_template_placeholders_fail_at_start_up():
    spec = parse_workflows(one_agent(f"{LLM}, prompt: 'Hi {{{{ nonsense }}}}'")).agents["w"]
    with pytest.raises(ConfigError, match=r"unknown placeholders \['nonsense'\]"):
        spec.load_handler()
    assert check_template("{{instruction}} {{ input.brief }} {{ params.tone }}") == {
        "instruction", "input.brief", "params.tone"
    }


def test_output_roles_resolve_to_their_schemas():
    for output in ("classification", "verdict", "plan", "json", "text", "shared.llm:Classification"):
        spec = parse_workflows(one_agent(f"{LLM}, prompt: hi, output: '{output}'")).agents["w"]
        assert callable(spec.load_handler())
    spec = parse_workflows(one_agent(f"{LLM}, prompt: hi, output: 'shared.llm:nothing'")).agents["w"]
    with pytest.raises(ConfigError, match="cannot be imported"):
        spec.load_handler()


def test_render_fills_the_template_and_adds_what_it_leaves_out():
    fields = {
        "instruction": "Write the article.",
        "acceptance_criteria": "",
        "output_format": output_format(None, None),
        "agent": "writer",
        "description": "",
    }
    inputs = {"brief": ("inputs/topic.md", "# Topic"), "outline": ("drafts/outline.md", "1. Intro")}
    text = render("You are {{ agent }}.", {"agent"}, fields, inputs, {})
    assert text.startswith("You are writer.\n\nInstruction: Write the article.\n\nInputs:\n")
    assert '<input name="brief" path="inputs/topic.md">\n# Topic\n</input>' in text
    assert text.rstrip().endswith("Reply with the result only, without any preamble.")
    # a template that names its inputs gets only those, and its own instruction placement
    text = render(
        "Outline: {{ input.outline }}\n{{ instruction }}\n{{ output_format }}",
        {"input.outline", "instruction", "output_format"},
        fields,
        {"outline": inputs["outline"]},
        {},
    )
    assert "# Topic" not in text and text.count("Write the article.") == 1
    schema = {"type": "object", "properties": {"label": {"type": "string"}}}
    assert output_format(None, schema).startswith("Reply with only a JSON object that matches this JSON")


def test_the_worker_hosts_llm_agents_by_default(tmp_path):
    wf_file = tmp_path / "wf.yaml"
    wf_file.write_text(
        "agents:\n"
        "  py: {handler: 'examples.content:outline'}\n"
        f"  model: {{{LLM}, prompt: hi}}\n"
    )
    doc = docs.asyncapi_document("worker", docs.doc_settings(wf_file))
    assert {streams.agent_stream("py"), streams.agent_stream("model")} <= set(docs.channels(doc))


def test_example_llm_workflow_file_is_valid_and_its_agents_load(monkeypatch):
    monkeypatch.chdir(ROOT / "tests")  # prompt files resolve against the workflow file, not the cwd
    wf = load_workflows(ROOT / "examples" / "llm-workflows.yaml")
    for name, spec in wf.agents.items():
        assert callable(spec.load_handler()), name
    kinds = {spec.kind for spec in wf.agents.values()}
    assert kinds == {"python", "llm"}


def test_baton_watch_shows_tokens_and_cost():
    from baton.cli import describe
    from shared.events import ObjectRef, RunCompleted, TaskCompleted, Usage

    ref = ObjectRef(bucket="baton", key="runs/r-1/drafts/draft.md")
    usage = Usage(seconds=1.5, prompt_tokens=812, completion_tokens=96, cost=0.00018)
    line = describe(TaskCompleted(run_id="r-1", task_id="t", agent="writer-llm", outputs={"draft": ref},
                                  usage=usage))
    assert line.endswith("writer-llm completed in 1.50s, 812+96 tokens, cost 0.000180 -> draft.md")
    line = describe(RunCompleted(run_id="r-1", usage=usage + Usage(seconds=0.5)))
    assert "run completed; total 2.00s, 812+96 tokens, cost 0.000180" in line
    plain = describe(TaskCompleted(run_id="r-1", task_id="t", agent="seo", usage=Usage(seconds=0.25)))
    assert plain.endswith("seo completed in 0.25s -> ")
