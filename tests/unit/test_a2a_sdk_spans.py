"""a2a-sdk's own per-function spans: off in Baton's services unless the operator turns them on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SETTING = "OTEL_INSTRUMENTATION_A2A_SDK_ENABLED"
PROBE = (
    "import services.gateway.app, services.worker.a2a; from a2a.utils import telemetry; "
    "print(telemetry.otel_enabled)"
)


@pytest.mark.parametrize(("given", "enabled"), [(None, "False"), ("true", "True"), ("false", "False")])
def test_a2a_sdk_spans_are_off_unless_asked_for(given, enabled):
    env = {k: v for k, v in os.environ.items() if k != SETTING}
    if given is not None:
        env[SETTING] = given
    probe = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=ROOT, capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert probe.stdout.strip() == enabled
