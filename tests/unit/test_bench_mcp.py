"""The MCP scenario's table: a real result's rows, and a burst whose sessions did not all complete."""

from __future__ import annotations

import json
from pathlib import Path

from bench import mcp

ROOT = Path(__file__).resolve().parents[2]


def test_the_table_shows_each_burst_and_says_which_did_not_complete():
    results = json.loads((ROOT / "bench" / "results-mcp.json").read_text())
    bad = {**results["mcp"]["bursts"][-1], "completed": 97, "ok": False, "endings": {"completed": 97, "x": 3}}
    results["mcp"]["bursts"].append(bad)
    lines = mcp.table(results)
    rows = [line for line in lines if line.strip()[:1].isdigit()]
    assert len(rows) == len(results["mcp"]["bursts"])
    assert "NOT OK" in rows[-1] and "'x': 3" in rows[-1]
    assert not any("NOT OK" in row for row in rows[:-1])
    assert mcp.table({}) == []
