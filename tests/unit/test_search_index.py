"""The full-text index and the search contract, without servers."""

from __future__ import annotations

import pytest

from services.indexer.index import SearchIndex, decode_text, fts_query, is_text
from services.mcp.app import BearerAuth, is_loopback
from shared.search import SearchRequest


@pytest.fixture
def index(tmp_path):
    idx = SearchIndex(tmp_path / "files.sqlite3")
    yield idx
    idx.close()


@pytest.mark.parametrize(
    ("typed", "query"),
    [
        ("agent teams", '"agent" "teams"'),
        ('"event driven" redis', '"event driven" "redis"'),
        ("event-driven", '"event driven"'),
        ("deleg*", '"deleg"*'),
        ("a OR b", '"a" OR "b"'),
        ("OR a OR OR b OR", '"a" OR "b"'),
        ('NEAR(a b) col:x "unterminated', '"NEAR a" "b" "col x" "unterminated"'),
        ("!!! --- ()", ""),
        ("", ""),
    ],
)
def test_what_a_person_types_becomes_a_safe_fts5_query(typed, query):
    assert fts_query(typed) == query


def test_put_replaces_and_remove_forgets(index):
    index.put("shared/a.md", "the old words", version_id="v1", etag="e1", size=13)
    assert [h.key for h in index.search("old")] == ["shared/a.md"]
    index.put("shared/a.md", "entirely new text", version_id="v2", etag="e2", size=17)
    assert index.search("old") == []
    (hit,) = index.search("new")
    assert (hit.version_id, hit.etag, hit.size) == ("v2", "e2", 17)
    assert index.get("shared/a.md").version_id == "v2"
    assert index.count() == 1
    assert index.remove("shared/a.md") is True
    assert index.search("new") == [] and index.get("shared/a.md") is None
    assert index.remove("shared/a.md") is False


def test_hits_are_ranked_with_snippets_and_filtered_by_prefixes(index):
    filler = " ".join(f"word{i}" for i in range(200))
    index.put("runs/r1/drafts/a.md", f"handover once. {filler}")
    index.put("runs/r1/drafts/b.md", "handover, handover and handover: the whole note")
    index.put("shared/handover.md", "nothing else")  # the key matches too
    index.put("shared/other.md", "unrelated")
    hits = index.search("handover")
    assert {h.key for h in hits} == {"runs/r1/drafts/a.md", "runs/r1/drafts/b.md", "shared/handover.md"}
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert hits[-1].key == "runs/r1/drafts/a.md"  # one mention in a long text ranks last
    assert "**handover**" in next(h for h in hits if h.key.endswith("b.md")).snippet
    assert [h.key for h in index.search("handover", prefix="shared/")] == ["shared/handover.md"]
    assert {h.key for h in index.search("handover", prefixes=["runs/r1/", "nope/"])} == {
        "runs/r1/drafts/a.md",
        "runs/r1/drafts/b.md",
    }
    assert len(index.search("handover", limit=1)) == 1
    # stemming: a word matches its other forms
    assert {h.key for h in index.search("handovers")} == {h.key for h in hits}


def test_index_survives_reopening(tmp_path):
    first = SearchIndex(tmp_path / "files.sqlite3")
    first.put("shared/kept.md", "durable words", version_id="v1", etag="e1")
    first.close()
    again = SearchIndex(tmp_path / "files.sqlite3")
    try:
        assert again.etags() == {"shared/kept.md": "e1"}
        assert [h.key for h in again.search("durable")] == ["shared/kept.md"]
    finally:
        again.close()


@pytest.mark.parametrize(
    ("key", "ctype", "text"),
    [
        ("a.md", None, True),
        ("a.MARKDOWN", None, True),
        ("a.txt", "application/octet-stream", True),
        ("a.json", None, True),
        ("a.csv", None, True),
        ("a.png", "image/png", False),
        ("notes", "text/plain; charset=utf-8", True),
        ("data", "application/json", True),
        ("blob", "application/octet-stream", False),
        ("blob", None, False),
    ],
)
def test_text_objects_are_recognised_by_extension_or_content_type(key, ctype, text):
    assert is_text(key, ctype) is text


def test_binary_content_is_not_text():
    assert decode_text("héllo".encode()) == "héllo"
    assert decode_text(b"\xef\xbb\xbfbom") == "bom"
    assert decode_text(b"\x89PNG\r\n\x1a\n\x00\x00") is None
    assert decode_text(b"\xff\xfe\xfa") is None


def test_search_requests_may_only_reply_to_search_reply_lists():
    SearchRequest(query="x", reply_to="baton:search:reply:abc")
    for bad in ("baton:runs", "baton:{r1}:state", "baton:search:reply:", "baton:search:reply:a b"):
        with pytest.raises(ValueError):
            SearchRequest(query="x", reply_to=bad)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("localhost", True), ("0.0.0.0", False)],
)
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


async def test_bearer_auth_refuses_missing_and_wrong_tokens():
    calls = []

    async def app(scope, receive, send):
        calls.append(scope["path"])

    class Log:
        def warning(self, *a, **kw):
            calls.append("warned")

    auth = BearerAuth(app, "s3cret", Log())

    async def status(path: str, headers: list) -> int | None:
        sent = []

        async def send(message):
            sent.append(message)

        await auth({"type": "http", "path": path, "headers": headers}, None, send)
        return sent[0]["status"] if sent else None

    assert await status("/mcp", []) == 401
    assert await status("/mcp", [(b"authorization", b"Bearer wrong")]) == 401
    assert await status("/mcp", [(b"authorization", b"s3cret")]) == 401  # the scheme is required
    assert await status("/health", []) == 200
    assert await status("/mcp", [(b"authorization", b"Bearer s3cret")]) is None  # passed on to the app
    assert calls == ["warned", "warned", "warned", "/mcp"]
