"""How the console shows things: files by type, a plan as a layered graph, a diff between versions.

Everything here returns plain data or text that the templates escape; markdown is rendered with raw
HTML off (markdown-it's `js-default`: HTML in a document shows as text, links are checked for scheme).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field

from markdown_it import MarkdownIt
from markupsafe import Markup

from shared.runs import SubtaskState

MAX_VIEW_BYTES = 512 * 1024  # larger files are offered for download only
_MD = MarkdownIt("js-default")  # no raw HTML, no unsafe link schemes


@dataclass
class Shown:
    """One file, ready for a page: `kind` picks the template's rendering."""

    kind: str  # markdown | json | text | binary | too-big
    body: str | Markup = ""


def show(data: bytes, key: str, content_type: str | None = None) -> Shown:
    if len(data) > MAX_VIEW_BYTES:
        return Shown("too-big")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return Shown("binary")
    ctype = (content_type or "").split(";")[0].strip()
    if key.endswith((".md", ".markdown")) or ctype == "text/markdown":
        return Shown("markdown", Markup(_MD.render(text)))  # raw HTML off: escaped by markdown-it
    if key.endswith(".json") or ctype == "application/json":
        try:
            return Shown("json", json.dumps(json.loads(text), indent=2, ensure_ascii=False))
        except ValueError:
            pass
    return Shown("text", text)


def diff(old: str, new: str, old_name: str, new_name: str) -> list[tuple[str, str]]:
    """A unified diff as (css class, line) pairs: `add`, `del`, `hunk` or ``."""
    lines = difflib.unified_diff(
        old.splitlines(), new.splitlines(), fromfile=old_name, tofile=new_name, lineterm="", n=2
    )
    out = []
    for line in lines:
        if line.startswith(("+++", "---")):
            continue
        kind = {"+": "add", "-": "del", "@": "hunk"}.get(line[:1], "")
        out.append((kind, line))
    return out


# --- the plan as a graph ---------------------------------------------------------------------------

BOX_W, BOX_H, GAP_X, GAP_Y, PAD = 150, 48, 60, 18, 10
MAX_DRAWN = 300  # a plan bigger than this is listed, not drawn


@dataclass
class Node:
    id: str
    agent: str
    status: str
    attempt: int
    rejections: int
    tried: list[str]
    x: int = 0
    y: int = 0


@dataclass
class Graph:
    nodes: list[Node] = field(default_factory=list)
    edges: list[tuple[int, int, int, int]] = field(default_factory=list)  # x1, y1, x2, y2
    width: int = 0
    height: int = 0
    truncated: int = 0  # subtasks not drawn


def layers(subtasks: dict[str, SubtaskState]) -> dict[str, int]:
    """Each subtask's layer: the length of the longest chain of dependencies before it."""
    depth: dict[str, int] = {}
    for sid in _topological(subtasks):
        deps = [d for d in subtasks[sid].spec.depends_on if d in subtasks]
        deps += [i for i in subtasks[sid].spec.inputs if i in subtasks and i not in deps]
        depth[sid] = 1 + max((depth[d] for d in deps), default=-1)
    return depth


def _topological(subtasks: dict[str, SubtaskState]) -> list[str]:
    waiting = {}
    dependents: dict[str, list[str]] = {}
    for sid, sub in subtasks.items():
        deps = {d for d in (*sub.spec.depends_on, *sub.spec.inputs) if d in subtasks}
        waiting[sid] = len(deps)
        for d in deps:
            dependents.setdefault(d, []).append(sid)
    ready = sorted(s for s, n in waiting.items() if n == 0)
    order = []
    while ready:
        current = ready.pop(0)
        order.append(current)
        for nxt in dependents.get(current, ()):
            waiting[nxt] -= 1
            if waiting[nxt] == 0:
                ready.append(nxt)
    return order + sorted(s for s in subtasks if s not in set(order))  # a cycle: appended, unlayered


def plan_graph(subtasks: dict[str, SubtaskState]) -> Graph:
    """A left-to-right layered layout: one column per layer, dependencies as edges."""
    graph = Graph()
    if not subtasks:
        return graph
    depth = layers(subtasks)
    drawn = dict(sorted(depth.items(), key=lambda kv: (kv[1], kv[0]))[:MAX_DRAWN])
    graph.truncated = len(subtasks) - len(drawn)
    rows: dict[int, int] = {}
    at: dict[str, Node] = {}
    for sid, layer in drawn.items():
        sub = subtasks[sid]
        row = rows.get(layer, 0)
        rows[layer] = row + 1
        node = Node(
            id=sid,
            agent=sub.agent,
            status=sub.status,
            attempt=sub.attempt,
            rejections=len(sub.rejections),
            tried=list(sub.tried),
            x=PAD + layer * (BOX_W + GAP_X),
            y=PAD + row * (BOX_H + GAP_Y),
        )
        graph.nodes.append(node)
        at[sid] = node
    for node in graph.nodes:
        spec = subtasks[node.id].spec
        for dep in dict.fromkeys((*spec.depends_on, *spec.inputs)):
            if dep in at:
                src = at[dep]
                graph.edges.append((src.x + BOX_W, src.y + BOX_H // 2, node.x, node.y + BOX_H // 2))
    graph.width = PAD * 2 + (max(drawn.values()) + 1) * (BOX_W + GAP_X) - GAP_X
    graph.height = PAD * 2 + max(rows.values()) * (BOX_H + GAP_Y) - GAP_Y
    return graph
