"""The research report (hierarchical pattern): plan one section per point of the brief, research each
in parallel, fact-check each (a short section is sent back), and integrate the accepted ones."""

from __future__ import annotations

import json
import re

from examples.content import parse_brief
from services.worker.runtime import AgentContext

MIN_WORDS = 40


def key_term(point: str) -> str:
    words = [w for w in re.findall(r"[A-Za-z]+", point) if len(w) > 3]
    return max(words, key=len).lower() if words else point.lower()


async def plan(ctx: AgentContext) -> None:
    title, points = parse_brief(await ctx.read_text("brief"))
    subtasks = [
        {
            "id": f"s{i}",
            "agent": "researcher",
            "instruction": point,
            "inputs": ["brief"],
            "acceptance_criteria": f"at least {MIN_WORDS} words and mentions '{key_term(point)}'",
        }
        for i, point in enumerate(points, 1)
    ]
    await ctx.write(
        "plans/plan.json", json.dumps({"title": title, "subtasks": subtasks}, indent=2), name="plan"
    )


def _section(point: str, thorough: bool) -> str:
    text = f"{point}. "
    if thorough:
        text += (
            f"In practice this means that {point[0].lower() + point[1:]}, which keeps each agent focused "
            "on one slice of the work while the rest of the team carries on. The benefit shows up as "
            "fewer tokens per call, clearer ownership of every file, and runs that can be replayed."
        )
    else:
        text += "This is important."
    return text + "\n"


async def research(ctx: AgentContext) -> None:
    """A junior researcher: brief on the first try, thorough once a reviewer sent feedback."""
    text = _section(ctx.instruction, "feedback" in ctx.inputs)
    await ctx.write(f"sections/{ctx.subtask}.md", text, name="section")


async def research_thoroughly(ctx: AgentContext) -> None:
    await ctx.write(f"sections/{ctx.subtask}.md", _section(ctx.instruction, True), name="section")


async def fact_check(ctx: AgentContext) -> None:
    """Checks the section against the subtask's acceptance criteria."""
    text = await ctx.read_text("section")
    words = len(re.findall(r"\w+", text))
    term = re.search(r"mentions '([^']+)'", ctx.task.acceptance_criteria or "")
    problems = []
    if words < MIN_WORDS:
        problems.append(f"only {words} words; write at least {MIN_WORDS}")
    if term and term.group(1) not in text.lower():
        problems.append(f"does not mention {term.group(1)!r}")
    verdict = {"accepted": not problems, "feedback": "; ".join(problems)}
    worker, attempt = ctx.params["worker"], ctx.params["worker_attempt"]
    await ctx.write(f"reviews/{ctx.subtask}-{worker}-{attempt}.json", json.dumps(verdict), name="verdict")


async def integrate(ctx: AgentContext) -> None:
    sections = [await ctx.read_text(n) for n in sorted(ctx.inputs, key=lambda n: int(n.split(".")[0][1:]))]
    await ctx.write("published/report.md", "# Report\n\n" + "\n".join(sections), name="report")
