"""Routing decisions: plain functions, tested without a broker."""

from __future__ import annotations

from dataclasses import dataclass

from shared.events import TaskAssigned
from shared.workflow import WorkflowFile


@dataclass(frozen=True)
class Route:
    agent: str | None
    label: str | None
    confidence: float
    classifier: str
    reason: str = ""


def decide(task: TaskAssigned, workflows: WorkflowFile) -> Route:
    """A fixed agent goes straight through; an intent is looked up in the static route table."""
    if task.agent:
        if task.agent not in workflows.agents:
            return Route(None, None, 0.0, "fixed", f"unknown agent {task.agent!r}")
        return Route(task.agent, task.intent, 1.0, "fixed")
    if task.intent and task.intent in workflows.routes:
        return Route(workflows.routes[task.intent], task.intent, 1.0, "static")
    return Route(None, task.intent, 0.0, "static", f"no route for intent {task.intent!r}")
