"""Baton's services: each its own process and its own FastStream app."""

import os

# a2a-sdk wraps most of its functions (the gateway's request handling, a `kind: a2a` agent's client) in an
# OpenTelemetry span whenever OpenTelemetry is installed, as it is for Baton's tracing, and each wrap costs
# even when no trace is sampled: 1.2-2.1 ms of the gateway's CPU a task (`python -m bench --only a2a`:
# 13.1-13.8 ms a task without, 15.0-15.2 with). Baton's own spans cover a task; a2a-sdk's per-function
# spans come back with OTEL_INSTRUMENTATION_A2A_SDK_ENABLED=true (its own setting, read when it is imported).
os.environ.setdefault("OTEL_INSTRUMENTATION_A2A_SDK_ENABLED", "false")
