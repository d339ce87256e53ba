"""The path protocol: which keys exist, and who may touch them.

Every run owns `runs/<run_id>/`; inside it an agent may read and write only its declared prefixes. These
are pure functions so that the rules are tested without a server.
"""

from __future__ import annotations

import re

from .errors import KeyValidationError

MAX_KEY_BYTES = 1024
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")


def validate_key(key: str) -> str:
    """Return `key` if it is a clean relative key, else raise naming what is wrong."""
    if not isinstance(key, str) or not key:
        raise KeyValidationError("object key is empty")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise KeyValidationError(f"object key {key[:60]!r}... is longer than {MAX_KEY_BYTES} bytes")
    if key.startswith("/"):
        raise KeyValidationError(f"object key {key!r} is absolute; keys are relative to the bucket")
    if _BAD_CHARS.search(key):
        raise KeyValidationError(f"object key {key!r} contains a control character or a backslash")
    parts = key.split("/")
    if any(p in ("..", ".") for p in parts):
        raise KeyValidationError(f"object key {key!r} contains a '.' or '..' segment")
    if any(p == "" for p in parts[:-1]):
        raise KeyValidationError(f"object key {key!r} contains an empty segment ('//')")
    return key


def run_prefix(run_id: str) -> str:
    return f"runs/{run_id}/"


def run_of_key(key: str) -> str | None:
    """The run a workspace key belongs to, or None for keys outside `runs/`."""
    parts = key.split("/")
    return parts[1] if len(parts) > 2 and parts[0] == "runs" and parts[1] else None


def normalize_prefix(prefix: str) -> str:
    validate_key(prefix.rstrip("/") or "x")
    return prefix if prefix.endswith("/") else prefix + "/"


def workspace_key(run_id: str, relative: str, allowed: list[str] | None = None) -> str:
    """Turn a path inside a run's workspace into a bucket key, checking the agent's prefixes.

    `allowed` lists the prefixes (relative to the workspace) the caller may use; None allows the whole
    workspace.
    """
    validate_key(relative)
    if relative.startswith("runs/"):
        raise KeyValidationError(f"path {relative!r} must be relative to the run's workspace, not the bucket")
    if allowed is not None and not any(relative.startswith(normalize_prefix(p)) for p in allowed):
        raise KeyValidationError(
            f"path {relative!r} is outside the allowed prefixes {sorted(allowed)} of this agent"
        )
    return run_prefix(run_id) + relative


def check_in_workspace(run_id: str, key: str, allowed: list[str] | None = None) -> str:
    """Check that a full bucket key lies in the run's workspace (and the allowed prefixes)."""
    validate_key(key)
    prefix = run_prefix(run_id)
    if not key.startswith(prefix):
        raise KeyValidationError(f"key {key!r} is outside the workspace {prefix!r} of run {run_id}")
    workspace_key(run_id, key[len(prefix) :], allowed)
    return key
