"""Structured logs: JSON lines in services, readable in a terminal; run and task ids bound per message."""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(service: str, fmt: str = "json", level: str = "INFO") -> structlog.stdlib.BoundLogger:
    """Configure structlog once per process and return the service's logger."""
    lvl = logging.getLevelName(level.upper())
    if not isinstance(lvl, int):
        lvl = logging.INFO
    renderer = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries that log through the standard library (botocore, uvicorn) stay quiet below WARNING.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)
    return structlog.get_logger()


def bind_event(event) -> None:
    """Put an event's run and task ids on every log line until the next message."""
    structlog.contextvars.bind_contextvars(
        run_id=getattr(event, "run_id", None),
        task_id=getattr(event, "task_id", None),
        event_type=getattr(event, "type", None),
    )
