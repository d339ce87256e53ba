"""The worker subscribes each agent's stream with its own limits, passed by name."""

from __future__ import annotations

from pathlib import Path

from services.worker import app as worker_app
from shared.batch import Batched
from shared.settings import Settings

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows.yaml"


def test_batched_agent_streams_keep_the_event_limit_and_get_the_time_limit(monkeypatch):
    # A positional time limit (930.0 s) once landed in `max_event_bytes`: every task over 930 bytes
    # (a content-factory writer's, a reviewer's) was dead-lettered as oversized.
    calls = []
    monkeypatch.setattr(Batched, "subscribe", lambda self, *a, **kw: calls.append((a, kw)))
    monkeypatch.setenv("A2A_TEST_TOKEN", "x")  # the guarded test agent's token (tests/conftest.py)
    monkeypatch.setenv("A2A_GATEWAY_TOKEN", "x")  # remote-baton's (tests/e2e/test_a2a_both_ways.py)
    settings = Settings(workflows=WORKFLOWS, handler_timeout_s=900)
    worker_app.create_app(settings)
    agents = {a[2]: kw for a, kw in calls if a[1].startswith("baton:agent:")}
    assert "writer" in agents and "hang" in agents
    for args, _kw in calls:
        assert len(args) <= 5, f"{args[2]}: limits must be passed by name, got {args[5:]}"
    assert agents["writer"].get("max_event_bytes") in (None, settings.max_event_bytes)
    assert agents["writer"]["timeout"] == 900 + worker_app.OUTCOME_GRACE_S
    assert agents["hang"]["timeout"] == 1 + worker_app.OUTCOME_GRACE_S  # its agent's time_limit: 1
