from pathlib import Path

import pytest

from shared.errors import ConfigError
from shared.workflow import load_workflows, parse_workflows

ROOT = Path(__file__).resolve().parents[2]


def test_example_workflow_file_is_valid_and_handlers_import():
    wf = load_workflows(ROOT / "examples" / "workflows.yaml")
    assert [s.agent for s in wf.workflows["content-factory"].stages] == ["outliner", "writer", "seo"]
    for spec in wf.agents.values():
        assert callable(spec.load_handler())
    assert wf.workflows["content-factory"].trigger.prefix == "briefs/"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "agents: {a: {handler: 'x:y'}}\nworkflows: {w: {pattern: sequential, stages: [b]}}",
            "workflows.w.stages.0: unknown agent 'b'",
        ),
        ("agents: {a: {handler: 'nocolon'}}", "agents.a: Value error, a python agent needs `handler"),
        ("agents: {a: {handler: 'x:y', writes: ['../up']}}", "agents.a.writes"),
        ("agents: {a: {handler: 'x:y'}}\nworkflows: {w: {pattern: star, stages: [a]}}", "workflows.w"),
        ("agents: {a: {handler: 'x:y', colour: red}}", "agents.a.colour: Extra inputs are not permitted"),
        (
            "agents: {a: {handler: 'x:y'}}\nworkflows: {w: {pattern: sequential, stages: [a], "
            "trigger: {prefix: runs/x}}}",
            "must be outside `runs/`",
        ),
        ("agents: [", "not valid YAML"),
        ("- just a list", "expected a mapping"),
    ],
)
def test_invalid_workflow_files_name_the_bad_field(text, message):
    with pytest.raises(ConfigError) as info:
        parse_workflows(text, "wf.yaml")
    assert "wf.yaml" in str(info.value)
    assert message in str(info.value)


def test_handler_that_cannot_be_imported_is_a_config_error():
    wf = parse_workflows("agents: {a: {handler: 'no.such.module:f'}}")
    with pytest.raises(ConfigError, match="cannot be imported"):
        wf.agents["a"].load_handler()


def test_an_agents_retry_policy_overrides_its_workflows_field_by_field():
    files = parse_workflows(
        """
agents:
  plain: {handler: "x:y"}
  picky: {handler: "x:y", retry: {max_attempts: 5, permanent_errors: [QuotaError]}}
workflows:
  w: {pattern: sequential, stages: [plain, picky], max_attempts: 2, retry_backoff: 0.25,
      permanent_errors: [ValueError]}
"""
    )
    wf = files.workflows["w"]
    plain, picky = wf.retry_policy(files.agents["plain"]), wf.retry_policy(files.agents["picky"])
    assert (plain.max_attempts, plain.backoff, plain.permanent_errors) == (2, 0.25, ("ValueError",))
    assert (picky.max_attempts, picky.backoff, picky.permanent_errors) == (5, 0.25, ("QuotaError",))
    assert wf.retry_policy(None) == plain
    assert picky.retries(True, "ConnectionError: reset", 4)
    assert not picky.retries(True, "ConnectionError: reset", 5)  # out of attempts
    assert not picky.retries(True, "QuotaError: over the limit", 1)  # permanent for this agent
    assert not picky.retries(False, "ConnectionError: reset", 1)  # the worker said not retryable
    assert plain.retries(True, "QuotaError: over the limit", 1)  # not permanent for the other


def test_a_bad_retry_policy_is_refused_with_its_path():
    with pytest.raises(ConfigError, match="agents.a.retry.max_attempts"):
        parse_workflows("agents: {a: {handler: 'x:y', retry: {max_attempts: 0}}}")
