"""The router: resolves which agent gets a task and forwards it to that agent's stream."""

from __future__ import annotations

import asyncio

from shared import streams
from shared.broker import make_broker, subscribe
from shared.events import RouteDecided, TaskAssigned, TaskFailed
from shared.logging import configure_logging
from shared.service import Resources, build_app
from shared.settings import Settings
from shared.workflow import load_workflows

from .routing import decide

SERVICE = "router"


def create_app(settings: Settings | None = None):
    settings = settings or Settings()
    log = configure_logging(SERVICE, settings.log_format, settings.log_level)
    workflows = load_workflows(settings.workflows)
    broker = make_broker(settings, SERVICE)
    results = broker.publisher(
        stream=streams.RESULTS, title="results", schema=TaskFailed, description="Routing failures."
    )
    # Declared for the AsyncAPI document; the per-run stream name is resolved at publish time.
    broker.publisher(
        stream=streams.run_events("{run_id}"),
        title="run-events",
        schema=RouteDecided,
        description="RouteDecided, per run.",
    )
    agents = {
        name: broker.publisher(stream=streams.agent_stream(name), title=f"agent:{name}", schema=TaskAssigned)
        for name in workflows.agents
    }

    async def route(event: TaskAssigned) -> None:
        """Pick the agent for a task and hand it over."""
        decision = decide(event, workflows)
        sender = f"{SERVICE}:{settings.consumer}"
        if decision.agent is None:
            log.warning("route_failed", reason=decision.reason)
            await results.publish(
                TaskFailed(
                    run_id=event.run_id,
                    task_id=event.task_id,
                    attempt=event.attempt,
                    trace_id=event.trace_id,
                    sender=sender,
                    error=f"router: {decision.reason}",
                )
            )
            return
        routed = event.model_copy(update={"agent": decision.agent, "sender": sender})
        await agents[decision.agent].publish(routed)
        await broker.publish(
            RouteDecided(
                run_id=event.run_id,
                task_id=event.task_id,
                attempt=event.attempt,
                trace_id=event.trace_id,
                sender=sender,
                agent=decision.agent,
                label=decision.label,
                confidence=decision.confidence,
                classifier=decision.classifier,
            ),
            stream=streams.run_events(event.run_id),
        )
        log.info("routed", agent=decision.agent, classifier=decision.classifier)

    subscribe(
        broker,
        streams.ROUTE,
        streams.ROUTER_GROUP,
        settings,
        route,
        title="route",
        description="Tasks waiting for a route.",
    )
    return build_app(broker, Resources(settings), log, storage=False, consumer=settings.consumer)


def main() -> None:
    asyncio.run(create_app().run())
