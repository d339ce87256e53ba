"""Which bucket changes in a run's workspace the supervisor reads the run's state for
(services/supervisor/objects.py `may_move_a_run`): only a bidirectional workflow's shared document and its
approvals; every other file a run writes (each agent's outputs) is let go without a read."""

from pathlib import Path

import pytest
import structlog

from services.supervisor.engine import Engine
from services.supervisor.objects import may_move_a_run
from shared.settings import Settings
from shared.workflow import load_workflows

WORKFLOWS = Path(__file__).parents[1] / "workflows.yaml"


@pytest.fixture(scope="module")
def eng():
    return engine(WORKFLOWS)


def engine(path: Path) -> Engine:
    return Engine(Settings(), load_workflows(path), structlog.get_logger(), "supervisor-test")


@pytest.mark.parametrize("path", ["drafts/doc.md", "approvals/editor2.txt"])
def test_a_collaborations_document_and_approvals_may_move_a_run(eng, path):
    assert may_move_a_run(eng, path)


@pytest.mark.parametrize("path", ["work/out.txt", "drafts/doc.md.bak", "drafts/other.md", "reviews/r.md"])
def test_other_files_are_let_go(eng, path):
    assert not may_move_a_run(eng, path)


def test_without_a_bidirectional_workflow_nothing_in_a_run_is_read(tmp_path):
    only = tmp_path / "w.yaml"
    only.write_text(
        "agents:\n  a: {handler: 'tests.agents:noop', writes: [work/]}\n"
        "workflows:\n  w: {pattern: sequential, stages: [a]}\n"
    )
    assert not may_move_a_run(engine(only), "drafts/doc.md")
