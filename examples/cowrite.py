"""Co-writing one document (bidirectional pattern): one agent expands, the other tightens, until a turn
changes nothing."""

from __future__ import annotations

import re

FILLER = re.compile(r"\b(very|really|just|basically|actually|quite)\s+", re.IGNORECASE)


async def expand(ctx) -> None:
    """Give every bullet without an explanation one sentence."""

    def change(old: bytes) -> str:
        lines = []
        for line in old.decode().splitlines():
            if line.startswith("- ") and ":" not in line:
                line = f"{line}: this really matters because it is a very basic part of the design."
            lines.append(line)
        return "\n".join(lines) + "\n"

    await ctx.update("document", change)


async def tighten(ctx) -> None:
    """Remove filler words."""
    await ctx.update("document", lambda old: FILLER.sub("", old.decode()))
