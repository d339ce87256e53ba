"""Routing decisions: plain functions, tested without a broker.

A task with a fixed agent goes straight through; a stage given by intent uses the static route table; a
request of a `router` workflow goes through the classifier chain: declarative rules first, then the
classifier agent. Below `min_confidence`, or with a label that has no route, it goes to the fallback —
never to a guess.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from dataclasses import asdict, dataclass

from pydantic import ValidationError

from shared.classification import Classification, ClassifyRequest
from shared.events import TaskAssigned, Usage
from shared.workflow import RouterWorkflow, WorkflowFile


@dataclass(frozen=True)
class Route:
    agent: str | None
    label: str | None
    confidence: float
    classifier: str
    reason: str = ""
    usage: Usage | None = None  # what a model classifier spent

    def dumps(self) -> str:
        return json.dumps({**asdict(self), "usage": self.usage and self.usage.model_dump(mode="json")})

    @classmethod
    def loads(cls, data: bytes | str) -> Route:
        fields = json.loads(data)
        usage = fields.pop("usage", None)
        return cls(**fields, usage=Usage.model_validate(usage) if usage else None)


def decide(task: TaskAssigned, workflows: WorkflowFile) -> Route:
    """Routes that need no request text: fixed agents and intents."""
    if task.agent:
        if task.agent not in workflows.agents:
            return Route(None, None, 0.0, "fixed", f"unknown agent {task.agent!r}")
        return Route(task.agent, task.intent, 1.0, "fixed")
    if task.intent and task.intent in workflows.routes:
        return Route(workflows.routes[task.intent], task.intent, 1.0, "static")
    return Route(None, task.intent, 0.0, "static", f"no route for intent {task.intent!r}")


def match_rules(text: str, wf: RouterWorkflow) -> Classification | None:
    lowered = text.lower()
    for rule in wf.rules:
        if any(k.lower() in lowered for k in rule.keywords) or (
            rule.pattern and re.search(rule.pattern, text, re.IGNORECASE)
        ):
            return Classification(label=rule.label, confidence=rule.confidence)
    return None


async def call_classifier(handler, request: ClassifyRequest) -> Classification:
    """Run a classifier handler (sync or async) and validate what it returns. A sync one runs in a thread:
    a slow classifier must not stall the router's other messages and their heartbeats."""
    if inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(type(handler).__call__):
        result = handler(request)
    else:
        result = await asyncio.to_thread(handler, request)
    if inspect.isawaitable(result):
        result = await result
    if isinstance(result, Classification):
        return result
    if isinstance(result, tuple) and len(result) == 2:
        result = {"label": result[0], "confidence": result[1]}
    try:
        return Classification.model_validate(result)
    except ValidationError as exc:
        raise ValueError(
            f"returned {result!r}, not {{label, confidence}}: {exc.errors()[0]['msg']}"
        ) from None


def choose(
    wf: RouterWorkflow, found: Classification | None, classifier: str, error: str | None = None
) -> Route:
    """Turn a classification into a route, or the fallback with the reason."""
    if error:
        return Route(wf.fallback, None, 0.0, classifier, f"classifier failed: {error}")
    if found is None:
        return Route(wf.fallback, None, 0.0, classifier, "no rule matched and no classifier is configured")
    if found.label not in wf.routes:
        return Route(
            wf.fallback,
            found.label,
            found.confidence,
            classifier,
            f"label {found.label!r} has no route",
            found.spent,
        )
    if found.confidence < wf.min_confidence:
        return Route(
            wf.fallback,
            found.label,
            found.confidence,
            classifier,
            f"confidence {found.confidence:.2f} is below {wf.min_confidence:.2f}",
            found.spent,
        )
    return Route(wf.routes[found.label], found.label, found.confidence, classifier, usage=found.spent)
