"""The optional local model in Docker (profile llm): the stack with docker-compose.llm.yml builds, the
`model` service serves the assembled GGUF, and a model-backed workflow completes."""

from __future__ import annotations

import asyncio
import os

import pytest

from baton import client
from tests.compose.conftest import ROOT, Compose, require_engine
from tests.helpers import wait_for_end

pytestmark = [pytest.mark.compose, pytest.mark.timeout(1200)]
MODEL = ROOT / ".cache" / "models" / "gemma-3-270m-q4_k_m.gguf"


def test_llm_profile_builds_and_answers(tmp_path):
    require_engine()
    if not MODEL.is_file():
        message = f"no {MODEL.relative_to(ROOT)}: `make llm` assembles it"
        if os.environ.get("BATON_REQUIRE_LLM") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    stack = Compose.create(tmp_path, prefix="baton-test-llm")
    stack.files = (ROOT / "docker-compose.yml", ROOT / "docker-compose.llm.yml")
    try:
        stack("--profile", "llm", "up", "-d", "--build", "--wait", "--wait-timeout", "300", timeout=1200)
        (model,) = stack.containers("model")
        assert model["State"] == "running", model
        cfg = stack.settings()
        brief = ROOT / "examples" / "briefs" / "topic.md"
        run_id = asyncio.run(client.submit(cfg, "content-factory-llm", {"brief": brief}))
        events = asyncio.run(wait_for_end(cfg, run_id, timeout=600))
        assert events[-1].type == "run.completed", (events[-1], stack.logs("worker", "model"))
        assert events[-1].usage.prompt_tokens > 0, "no model answered"
    finally:
        stack("--profile", "llm", "down", "-v", "--remove-orphans", "--timeout", "10", check=False,
              timeout=300)
