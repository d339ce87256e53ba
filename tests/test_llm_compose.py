"""The optional local model in Docker: a `model` service behind the `llm` profile, and the override file
that points the services at it. No Docker engine needed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
OVERRIDE_FILE = ROOT / "docker-compose.llm.yml"
OVERRIDE = yaml.safe_load(OVERRIDE_FILE.read_text())


def test_model_service_is_optional_pinned_and_serves_the_assembled_model():
    model = COMPOSE["services"]["model"]
    assert model["profiles"] == ["llm"]
    image, _, tag = model["image"].rpartition(":")
    assert image == "ghcr.io/ggml-org/llama.cpp" and tag.startswith("server-b"), model["image"]
    args = model["command"]
    served = Path(args[args.index("-m") + 1])
    mounts = {v.split(":")[1]: v.split(":")[0] for v in model["volumes"]}
    assert mounts[str(served.parent)] == "./.cache/models"  # where `make llm` assembles the GGUF
    assert served.name == "gemma-3-270m-q4_k_m.gguf"


def test_override_points_the_services_at_the_llm_examples():
    services = OVERRIDE["services"]
    assert set(services) <= set(COMPOSE["services"])
    for name in ("supervisor", "router", "worker"):
        env = services[name]["environment"]
        assert env["BATON_WORKFLOWS"] == "/app/examples/llm-workflows.yaml"
        assert env["BATON_LLM_BASE_URL"].endswith("http://model:8080/v1}")
    assert (ROOT / "examples" / "llm-workflows.yaml").is_file()
    exe = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")
    proc = subprocess.run([exe, "--builtin-schema", "vendor.compose-spec", str(OVERRIDE_FILE)],
                          capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
