"""The full-text index: SQLite FTS5 (BM25 ranking, snippets, Porter stemming) in one file.

One row per key, holding the version that was indexed. Replacing a key's text and removing a key are
single transactions, so a search never sees half an update. Only the indexer writes the file; clients
search through the indexer (see `shared/search.py`).
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from shared.search import SearchHit

SCHEMA_VERSION = 1
# Matches in the file's name count twice as much as matches in its text.
KEY_WEIGHT, BODY_WEIGHT = 2.0, 1.0
SNIPPET_TOKENS = 24

TEXT_EXTENSIONS = {
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".txt": "text/plain",
    ".text": "text/plain",
    ".json": "application/json",
    ".jsonl": "application/x-ndjson",
    ".ndjson": "application/x-ndjson",
    ".csv": "text/csv",
    ".tsv": "text/tab-separated-values",
}
TEXT_TYPES = ("text/", "application/json", "application/x-ndjson", "application/ndjson", "application/csv")
_WORD = re.compile(r"\w+")
_TERM = re.compile(r'"([^"]*)"?|(\S+)')


def extension(key: str) -> str:
    name = key.rsplit("/", 1)[-1]
    return "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""


def is_text(key: str, content_type: str | None) -> bool:
    """Markdown, text, JSON and CSV objects are indexed: by their extension, else by their content type."""
    if extension(key) in TEXT_EXTENSIONS:
        return True
    ctype = (content_type or "").split(";", 1)[0].strip().lower()
    return ctype.startswith(TEXT_TYPES)


def decode_text(data: bytes) -> str | None:
    """The text of an object, or None if it is not text after all (NUL bytes, not UTF-8)."""
    if b"\x00" in data:
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None


def fts_query(query: str) -> str:
    """Turn what a person types into a safe FTS5 query.

    Words must all match (`agent teams`), "quoted phrases" match in order, `word*` matches a prefix and
    `OR` between two terms matches either. Punctuation is never FTS5 syntax: `event-driven` is the phrase
    "event driven". Returns "" when nothing searchable is left.
    """
    items: list[str] = []
    for match in _TERM.finditer(query):
        phrase, term = match.group(1), match.group(2)
        if phrase is not None:
            words = _WORD.findall(phrase)
            if words:
                items.append('"' + " ".join(words) + '"')
            continue
        if term == "OR":
            if items and items[-1] != "OR":
                items.append("OR")
            continue
        words = _WORD.findall(term)
        if not words:
            continue
        star = "*" if term.endswith("*") else ""
        items.append('"' + " ".join(words) + '"' + star)
    while items and items[-1] == "OR":
        items.pop()
    return " ".join(items)


@dataclass(frozen=True)
class Indexed:
    key: str
    version_id: str | None
    etag: str | None
    size: int | None
    content_type: str | None


class SearchIndex:
    """The index file; not thread-safe (the indexer uses it from its event loop only)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None)  # autocommit; explicit BEGIN below
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS files (
                id INTEGER PRIMARY KEY,
                key TEXT NOT NULL UNIQUE,
                version_id TEXT,
                etag TEXT,
                size INTEGER,
                content_type TEXT,
                indexed_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
            );
            CREATE VIRTUAL TABLE IF NOT EXISTS files_fts USING fts5(
                key, body, tokenize = 'porter unicode61 remove_diacritics 2'
            );
            """
        )
        self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        self.db.close()

    def get(self, key: str) -> Indexed | None:
        row = self.db.execute(
            "SELECT key, version_id, etag, size, content_type FROM files WHERE key = ?", (key,)
        ).fetchone()
        return Indexed(*row) if row else None

    def etags(self) -> dict[str, str | None]:
        """Every indexed key with the ETag of its indexed version (to compare with a bucket listing)."""
        return dict(self.db.execute("SELECT key, etag FROM files"))

    def put(
        self,
        key: str,
        text: str,
        *,
        version_id: str | None = None,
        etag: str | None = None,
        size: int | None = None,
        content_type: str | None = None,
    ) -> None:
        """Index `text` as the content of `key`, replacing whatever version was indexed before."""
        with self._transaction():
            row = self.db.execute("SELECT id FROM files WHERE key = ?", (key,)).fetchone()
            if row:
                self.db.execute("DELETE FROM files_fts WHERE rowid = ?", (row[0],))
                self.db.execute(
                    "UPDATE files SET version_id = ?, etag = ?, size = ?, content_type = ?, "
                    "indexed_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?",
                    (version_id, etag, size, content_type, row[0]),
                )
                rowid = row[0]
            else:
                rowid = self.db.execute(
                    "INSERT INTO files (key, version_id, etag, size, content_type) VALUES (?, ?, ?, ?, ?)",
                    (key, version_id, etag, size, content_type),
                ).lastrowid
            self.db.execute("INSERT INTO files_fts (rowid, key, body) VALUES (?, ?, ?)", (rowid, key, text))

    def remove(self, key: str) -> bool:
        """Forget `key`; True if it was indexed."""
        with self._transaction():
            row = self.db.execute("SELECT id FROM files WHERE key = ?", (key,)).fetchone()
            if not row:
                return False
            self.db.execute("DELETE FROM files_fts WHERE rowid = ?", (row[0],))
            self.db.execute("DELETE FROM files WHERE id = ?", (row[0],))
            return True

    def search(
        self, query: str, *, prefix: str = "", prefixes: list[str] | None = None, limit: int = 10
    ) -> list[SearchHit]:
        """The best `limit` matches, best first. Raises ValueError for a query FTS5 cannot run."""
        match = fts_query(query)
        if not match:
            return []
        where, params = ["files_fts MATCH ?"], [match]
        if prefix:
            where.append("substr(f.key, 1, ?) = ?")
            params += [len(prefix), prefix]
        if prefixes:
            where.append("(" + " OR ".join("substr(f.key, 1, ?) = ?" for _ in prefixes) + ")")
            for p in prefixes:
                params += [len(p), p]
        sql = (
            "SELECT f.key, f.version_id, f.etag, f.size, f.content_type, "
            f"snippet(files_fts, 1, '**', '**', '…', {SNIPPET_TOKENS}), "
            f"bm25(files_fts, {KEY_WEIGHT}, {BODY_WEIGHT}) AS rank "
            "FROM files_fts JOIN files f ON f.id = files_fts.rowid "
            f"WHERE {' AND '.join(where)} ORDER BY rank LIMIT ?"
        )
        try:
            rows = self.db.execute(sql, (*params, limit)).fetchall()
        except sqlite3.OperationalError as exc:
            raise ValueError(f"cannot run the query {query!r}: {exc}") from exc
        return [
            SearchHit(
                key=key,
                version_id=version_id,
                etag=etag,
                size=size,
                content_type=content_type,
                snippet=snippet,
                score=round(-rank, 6),
            )
            for key, version_id, etag, size, content_type, snippet, rank in rows
        ]

    def count(self) -> int:
        return self.db.execute("SELECT count(*) FROM files").fetchone()[0]

    def _transaction(self):
        return _Transaction(self.db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
