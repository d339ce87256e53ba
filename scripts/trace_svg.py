"""Draw one trace from Jaeger's query API as an SVG waterfall (Jaeger's own UI assets are not in a Go
build of it). The README's picture: `python scripts/trace_svg.py TRACE.json -o docs/trace.svg`, where
TRACE.json is `GET <jaeger>/api/traces/<trace id>` (or pass that URL instead of a file).
"""

from __future__ import annotations

import argparse
import json
import urllib.request
from html import escape
from pathlib import Path

COLOURS = {
    "baton-cli": "#6c757d",
    "baton-supervisor": "#1f77b4",
    "baton-router": "#9467bd",
    "baton-worker": "#2ca02c",
    "baton-notifier": "#ff7f0e",
    "baton-indexer": "#8c564b",
}
ROW, LABEL_W, BAR_W, PAD = 17, 430, 640, 10


def load(source: str) -> dict:
    if source.startswith("http"):
        with urllib.request.urlopen(source, timeout=10) as response:
            data = json.loads(response.read())
    else:
        data = json.loads(Path(source).read_text())
    return data["data"][0] if "data" in data else data


def ordered(trace: dict) -> list[tuple[int, dict]]:
    """Spans depth-first from the root, children by start time: (depth, span)."""
    children: dict[str | None, list[dict]] = {}
    ids = {s["spanID"] for s in trace["spans"]}
    for span in trace["spans"]:
        refs = [r["spanID"] for r in span.get("references", []) if r["refType"] == "CHILD_OF"]
        parent = refs[0] if refs and refs[0] in ids else None
        children.setdefault(parent, []).append(span)
    out: list[tuple[int, dict]] = []

    def walk(parent: str | None, depth: int) -> None:
        for span in sorted(children.get(parent, []), key=lambda s: s["startTime"]):
            out.append((depth, span))
            walk(span["spanID"], depth + 1)

    walk(None, 0)
    return out


def svg(trace: dict, title: str) -> str:
    rows = ordered(trace)
    start = min(s["startTime"] for _d, s in rows)
    end = max(s["startTime"] + s["duration"] for _d, s in rows)
    total = max(end - start, 1)
    services = {pid: p["serviceName"] for pid, p in trace["processes"].items()}
    height = PAD * 2 + 58 + ROW * len(rows) + 30
    width = PAD * 2 + LABEL_W + BAR_W + 40
    x0, y0 = PAD + LABEL_W, PAD + 58
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{PAD}" y="{PAD + 14}" font-size="14" font-weight="bold">{escape(title)}</text>',
        f'<text x="{PAD}" y="{PAD + 30}" fill="#555">trace {trace["traceID"]}: {len(rows)} spans, '
        f'{len(set(services.values()))} services, {total / 1000:.0f} ms</text>',
    ]
    for k in range(6):  # time axis
        x = x0 + BAR_W * k / 5
        out.append(f'<line x1="{x:.1f}" y1="{y0 - 4}" x2="{x:.1f}" y2="{height - 30}" stroke="#eee"/>')
        out.append(f'<text x="{x:.1f}" y="{y0 - 6}" fill="#777" text-anchor="middle">'
                   f'{total * k / 5 / 1000:.0f} ms</text>')
    for i, (depth, span) in enumerate(rows):
        y = y0 + i * ROW
        service = services[span["processID"]]
        tags = {t["key"]: t["value"] for t in span.get("tags", [])}
        error = tags.get("error") is True or tags.get("otel.status_code") == "ERROR"
        colour = COLOURS.get(service, "#17becf")
        label = f'{service.removeprefix("baton-")}: {span["operationName"]}'
        if "baton.attempt" in tags and "process" in span["operationName"]:
            label += f' (attempt {tags["baton.attempt"]})'
        if "gen_ai.usage.input_tokens" in tags:
            label += f' [{tags["gen_ai.usage.input_tokens"]}+{tags["gen_ai.usage.output_tokens"]} tokens]'
        out.append(f'<text x="{PAD + depth * 10}" y="{y + 12}" fill="{"#c00" if error else "#222"}">'
                   f'{escape(label[:78])}</text>')
        x = x0 + BAR_W * (span["startTime"] - start) / total
        w = max(BAR_W * span["duration"] / total, 1.5)
        stroke = ' stroke="#c00" stroke-width="2"' if error else ""
        out.append(f'<rect x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="{ROW - 6}" rx="2" '
                   f'fill="{colour}"{stroke}/>')
        ms = span["duration"] / 1000
        tx, anchor = (x + w + 3, "start") if x + w + 60 < x0 + BAR_W else (x - 3, "end")
        out.append(f'<text x="{tx:.1f}" y="{y + 12}" fill="#555" text-anchor="{anchor}">{ms:.1f} ms</text>')
    ly = height - 14
    lx = PAD
    for service in sorted(set(services.values())):
        colour = COLOURS.get(service, "#17becf")
        out.append(f'<rect x="{lx}" y="{ly - 9}" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{lx + 14}" y="{ly}">{escape(service)}</text>')
        lx += 24 + 7 * len(service)
    out.append(f'<text x="{lx + 10}" y="{ly}" fill="#c00">red: span with error status</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("source", help="a file of Jaeger's /api/traces/<id> JSON, or that URL")
    p.add_argument("-o", "--out", type=Path, required=True)
    p.add_argument("--title", default="A Baton run in Jaeger")
    args = p.parse_args()
    args.out.write_text(svg(load(args.source), args.title))


if __name__ == "__main__":
    main()
