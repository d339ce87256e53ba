"""The MCP server's list of known workflows: read from the workflow file, again only when it changes."""

from __future__ import annotations

import os
from types import SimpleNamespace

from services.mcp.app import _known_workflows, _workflow_names

ONE = """
agents:
  a: {handler: "examples.content:outline"}
workflows:
  first: {pattern: sequential, stages: [a]}
"""


def test_the_workflow_file_is_parsed_once_and_again_when_it_changes(tmp_path):
    path = tmp_path / "workflows.yaml"
    path.write_text(ONE)
    settings = SimpleNamespace(workflows=path)
    _workflow_names.cache_clear()
    assert _known_workflows(settings) == {"first"}
    assert _known_workflows(settings) == {"first"}
    assert _workflow_names.cache_info().misses == 1  # the second call did not parse it again
    path.write_text(ONE + "  second: {pattern: sequential, stages: [a]}\n")
    os.utime(path, ns=(1, 1))  # (a different modification time, whatever the clock's resolution)
    assert _known_workflows(settings) == {"first", "second"}
    assert _known_workflows(SimpleNamespace(workflows=tmp_path / "none.yaml")) is None
