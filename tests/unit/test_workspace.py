import pytest

from shared.errors import KeyValidationError
from shared.workspace import check_in_workspace, run_of_key, validate_key, workspace_key


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("", "empty"),
        ("/etc/passwd", "absolute"),
        ("runs/r1/../r2/x", "'..' segment"),
        ("runs/r1/./x", "'.' or '..'"),
        ("runs//x", "empty segment"),
        ("runs/r1/a\\b", "backslash"),
        ("runs/r1/a\x00b", "control character"),
        ("x" * 1100, "longer than 1024"),
    ],
)
def test_bad_keys_are_refused_with_a_message_naming_the_problem(key, message):
    with pytest.raises(KeyValidationError, match=message):
        validate_key(key)


def test_agent_may_write_only_inside_its_prefixes():
    assert workspace_key("r1", "drafts/a.md", ["drafts/"]) == "runs/r1/drafts/a.md"
    with pytest.raises(KeyValidationError, match=r"outside the allowed prefixes \['drafts/'\]"):
        workspace_key("r1", "published/a.md", ["drafts/"])
    with pytest.raises(KeyValidationError, match="relative to the run's workspace"):
        workspace_key("r1", "runs/r2/drafts/a.md", None)


def test_prefix_match_is_by_folder_not_by_string():
    with pytest.raises(KeyValidationError):
        workspace_key("r1", "drafts-evil/a.md", ["drafts"])


def test_full_keys_must_lie_in_the_runs_workspace():
    assert check_in_workspace("r1", "runs/r1/inputs/a.md", ["inputs/"])
    with pytest.raises(KeyValidationError, match="outside the workspace 'runs/r1/'"):
        check_in_workspace("r1", "runs/r10/inputs/a.md")
    with pytest.raises(KeyValidationError, match="outside the allowed prefixes"):
        check_in_workspace("r1", "runs/r1/secrets/a.md", ["inputs/"])


def test_run_of_key():
    assert run_of_key("runs/abc/drafts/x.md") == "abc"
    assert run_of_key("briefs/x.md") is None
    assert run_of_key("runs/abc") is None
