"""The console's pure parts: how files are shown, the plan's layout, diffs, sessions and CSRF tokens."""

from __future__ import annotations

from services.console import auth, render
from shared.runs import Subtask, SubtaskState


def test_markdown_is_rendered_with_its_html_escaped():
    shown = render.show(b"# Title\n\n<script>alert(1)</script>\n\n[x](javascript:alert(1))", "a.md")
    assert shown.kind == "markdown"
    assert "<h1>Title</h1>" in shown.body
    assert "<script>" not in shown.body and "&lt;script&gt;" in shown.body
    assert 'href="javascript' not in shown.body


def test_json_is_pretty_printed_and_text_and_binary_are_left_alone():
    assert render.show(b'{"a": [1, 2]}', "x.json").body == '{\n  "a": [\n    1,\n    2\n  ]\n}'
    assert render.show(b"<b>plain</b>", "x.txt") == render.Shown("text", "<b>plain</b>")  # escaped later
    assert render.show(b"\xff\xfe\x00", "x.bin").kind == "binary"
    assert render.show(b"x" * (render.MAX_VIEW_BYTES + 1), "x.txt").kind == "too-big"


def _sub(id_, *deps, status="pending"):
    return SubtaskState(
        spec=Subtask(id=id_, agent="maker", depends_on=list(deps)), agent="maker", status=status
    )


def test_a_plan_is_laid_out_in_layers_of_its_dependencies():
    subs = {s.spec.id: s for s in (_sub("c", "a", "b"), _sub("a"), _sub("b", "a"), _sub("d"))}
    assert render.layers(subs) == {"a": 0, "d": 0, "b": 1, "c": 2}
    graph = render.plan_graph(subs)
    assert len(graph.nodes) == 4 and len(graph.edges) == 3
    x = {n.id: n.x for n in graph.nodes}
    assert x["a"] == x["d"] < x["b"] < x["c"]
    assert graph.width > x["c"] and graph.truncated == 0


def test_a_huge_plan_is_drawn_in_part():
    subs = {f"s{i}": _sub(f"s{i}") for i in range(render.MAX_DRAWN + 5)}
    graph = render.plan_graph(subs)
    assert len(graph.nodes) == render.MAX_DRAWN and graph.truncated == 5


def test_a_diff_marks_added_and_removed_lines():
    lines = render.diff("a\nb\n", "a\nc\n", "v1", "v2")
    assert ("del", "-b") in lines and ("add", "+c") in lines


def test_a_session_is_bound_to_the_token_and_its_csrf_token_reveals_neither():
    cookie = auth.new_session("secret-token")
    nonce = auth.session_nonce("secret-token", cookie)
    assert nonce and auth.session_nonce("another-token", cookie) is None
    assert auth.session_nonce("secret-token", nonce + ".0000") is None
    assert auth.session_nonce("secret-token", None) is None
    csrf = auth.csrf_token("secret-token", nonce)
    assert "secret-token" not in csrf and csrf != cookie.partition(".")[2]


def test_baton_dev_up_prints_the_consoles_address_and_token(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from baton import cli

    env = {
        "REDIS_URL": "redis://x", "S3_ENDPOINT_URL": "http://s3", "S3_ACCESS_KEY": "a", "S3_SECRET_KEY": "s",
        "BATON_BUCKET": "b", "BATON_WORKFLOWS": "w.yaml", "BATON_CONSOLE_PORT": "9914",
        "BATON_CONSOLE_TOKEN": "t0ken",
    }  # fmt: skip
    monkeypatch.setattr(cli.dev, "up", lambda root, workflows, workers, **_options: env)
    result = CliRunner().invoke(cli.app, ["dev", "up"])
    assert result.exit_code == 0, result.output
    assert "# console: http://127.0.0.1:9914/ token t0ken" in result.output
