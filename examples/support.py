"""The support desk (router pattern): a keyword-scoring classifier and two specialists."""

from __future__ import annotations

import re

from services.worker.runtime import AgentContext
from shared.classification import Classification, ClassifyRequest

VOCABULARY = {
    "billing": {"invoice", "refund", "charge", "charged", "payment", "bill", "price", "subscription"},
    "it": {"password", "laptop", "vpn", "login", "email", "printer", "wifi", "account", "locked"},
}


def score_intent(request: ClassifyRequest) -> Classification:
    """Share of the request's known words that belong to each label; the best share is the confidence."""
    words = set(re.findall(r"[a-z]+", request.text.lower()))
    hits = {label: len(words & VOCABULARY.get(label, set())) for label in request.labels}
    total = sum(hits.values())
    if total == 0:
        return Classification(label="unknown", confidence=0.0)
    label = max(hits, key=hits.get)
    return Classification(label=label, confidence=hits[label] / total)


async def _reply(ctx: AgentContext, team: str, steps: list[str]) -> None:
    request = (await ctx.read_text("request")) if "request" in ctx.inputs else str(ctx.params.get("text", ""))
    quoted = "\n".join(f"> {line}" for line in request.strip().splitlines())
    body = [f"# Reply from {team}", "", quoted, "", "Here is what happens next:", ""]
    body += [f"{i}. {step}" for i, step in enumerate(steps, 1)]
    await ctx.write("replies/reply.md", "\n".join(body) + "\n", name="reply")


async def billing(ctx: AgentContext) -> None:
    await _reply(
        ctx,
        "Billing",
        [
            "We look up the charge on your account.",
            "If it is wrong, the refund reaches you within 5 working days.",
        ],
    )


async def it_helpdesk(ctx: AgentContext) -> None:
    await _reply(
        ctx,
        "IT helpdesk",
        ["We reset the affected account or device.", "You get a one-time link to set a new password."],
    )
