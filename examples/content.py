"""The content factory: outline -> draft -> SEO, as deterministic python agents.

They do real (if modest) text work on the brief, so a run's outputs can be checked by a test: the outline
has a section per point of the brief, the draft a paragraph per section, the SEO stage front matter with
keywords counted from the draft.
"""

from __future__ import annotations

import re
from collections import Counter

from services.worker.runtime import AgentContext

STOPWORDS = set(
    "a an and are as at be by for from has have how in is it its of on or that the this to was were what "
    "when where which who why will with you your we our can not but into than then them they their these "
    "those about also more most such each".split()
)


def parse_brief(text: str) -> tuple[str, list[str]]:
    """Title (first heading or line) and key points (bullets, else sentences) of a brief."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise ValueError("the brief is empty")
    title = lines[0].lstrip("#").strip()
    points = [
        re.sub(r"^[-*+]\s+|^\d+[.)]\s+", "", ln) for ln in lines[1:] if re.match(r"^([-*+]|\d+[.)])\s+", ln)
    ]
    if not points:
        body = " ".join(ln for ln in lines[1:] if not ln.startswith("#"))
        points = [s.strip() for s in re.split(r"(?<=[.!?])\s+", body) if s.strip()]
    return title, points


async def outline(ctx: AgentContext) -> None:
    """Turn the brief into a sectioned outline."""
    title, points = parse_brief(await ctx.read_text("brief"))
    await ctx.progress("outlining", 10)
    sections = ["Introduction", *(p.rstrip(".") for p in points), "Conclusion"]
    body = [f"# {title}", ""] + [f"{i}. {s}" for i, s in enumerate(sections, 1)]
    await ctx.write("drafts/outline.md", "\n".join(body) + "\n", name="outline")


def _sections(outline_text: str) -> tuple[str, list[str]]:
    lines = outline_text.splitlines()
    title = lines[0].lstrip("# ").strip()
    return title, [re.sub(r"^\d+\.\s+", "", ln) for ln in lines[1:] if re.match(r"^\d+\.\s+", ln)]


async def draft(ctx: AgentContext) -> None:
    """Write one paragraph per outline section."""
    title, sections = _sections(await ctx.read_text("outline"))
    _, points = parse_brief(await ctx.read_text("brief"))
    out = [f"# {title}", ""]
    for i, section in enumerate(sections):
        out.append(f"## {section}")
        if section == "Introduction":
            out.append(
                f"This article covers {title.lower()}: "
                + "; ".join(p.rstrip(".").lower() for p in points)
                + "."
            )
        elif section == "Conclusion":
            out.append(f"In short, {title.lower()} comes down to {len(points)} points, taken in order above.")
        else:
            out.append(
                f"{section}. This matters because it is point {i} of {len(points)} in the brief, "
                f"and each point builds on the one before it."
            )
        out.append("")
        await ctx.progress(f"section {i + 1}/{len(sections)}", 100 * (i + 1) / len(sections))
    await ctx.write("drafts/draft.md", "\n".join(out), name="draft")


def keywords(text: str, n: int = 5) -> list[str]:
    words = re.findall(r"[a-z][a-z'-]{2,}", text.lower())
    counts = Counter(w for w in words if w not in STOPWORDS)
    return [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


async def seo(ctx: AgentContext) -> None:
    """Add front matter (title, slug, keywords, description, reading time) and publish."""
    text = await ctx.read_text("draft")
    title = text.splitlines()[0].lstrip("# ").strip()
    body_lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    words = len(re.findall(r"\w+", text))
    description = " ".join(body_lines)[:155].rstrip()
    front = [
        "---",
        f"title: {title}",
        f"slug: {slugify(title)}",
        f"keywords: [{', '.join(keywords(text))}]",
        f"description: {description}",
        f"words: {words}",
        f"reading_minutes: {max(1, round(words / 200))}",
        "---",
        "",
    ]
    name = ctx.input_stem("brief") if "brief" in ctx.inputs else slugify(title)
    await ctx.write(f"published/{name}.md", "\n".join(front) + text, name="article")
