"""The router: resolves which agent gets a task and forwards it to that agent's stream."""

from __future__ import annotations

import asyncio
import contextlib

from services.worker import llm as _llm  # noqa: F401 - registers the runtime of `kind: llm` agents
from shared import faults, metrics, streams, telemetry
from shared.batch import Batched
from shared.broker import client_of, make_broker, subscribe
from shared.classification import ClassifyRequest
from shared.events import RouteDecided, TaskAssigned, TaskFailed
from shared.logging import configure_logging
from shared.service import Resources, build_app, run
from shared.settings import Settings
from shared.workflow import HUMAN, RouterWorkflow, load_workflows

from .routing import Route, call_classifier, choose, decide, match_rules

SERVICE = "router"
MAX_TEXT = 20_000  # characters of a request a classifier sees
DECISION_TTL_S = 7 * 24 * 3600  # a stored decision outlives any redelivery of its task


def create_app(settings: Settings | None = None):
    settings = settings or Settings()
    log = configure_logging(SERVICE, settings.log_format, settings.log_level)
    workflows = load_workflows(settings.workflows)
    broker = make_broker(settings, SERVICE)
    res = Resources(settings)
    # Batch mode (the default, as for the workers): tasks to route are read `batch` at a time and routed
    # concurrently, and what the router writes for a whole batch (decisions, forwards, acks) reaches Redis
    # in one round trip. With `batch` 0: one FastStream handler call per task.
    batched = Batched(settings, SERVICE) if settings.batch else None

    def outbox():
        return batched.outbox if batched else res.outbox

    # Declared for the AsyncAPI document; the run's results partition is resolved at publish time.
    broker.publisher(
        stream=streams.RESULTS_DOC,
        title="results",
        schema=TaskFailed | RouteDecided,
        description="Routing failures, and decisions that hand a request to a person.",
    )
    # Declared for the AsyncAPI document; the per-run stream name is resolved at publish time.
    broker.publisher(
        stream=streams.run_events("{run_id}"),
        title="run-events",
        schema=RouteDecided,
        description="RouteDecided, per run.",
    )
    for name in workflows.agents:  # (declared for the AsyncAPI document; written through the outbox)
        broker.publisher(stream=streams.agent_stream(name), title=f"agent:{name}", schema=TaskAssigned)
    classifiers = {
        name: wf.classifier and workflows.agents[wf.classifier].load_handler(settings)
        for name, wf in workflows.workflows.items()
        if isinstance(wf, RouterWorkflow)
    }
    # A classifier agent's `concurrency` bounds its calls in flight in this router (a batch routes up to
    # BATON_BATCH requests at once: a model endpoint with a rate limit may want fewer).
    limits = {
        wf.classifier: asyncio.Semaphore(workflows.agents[wf.classifier].concurrency)
        for wf in workflows.workflows.values()
        if isinstance(wf, RouterWorkflow) and wf.classifier and workflows.agents[wf.classifier].concurrency
    }

    async def request_text(event: TaskAssigned, wf: RouterWorkflow) -> str:
        if isinstance(event.params.get("text"), str):
            return event.params["text"][:MAX_TEXT]
        ref = event.inputs.get(wf.input)
        if ref is None:
            raise ValueError(f"the request needs an input named {wf.input!r} or a `text` parameter")
        # (only its beginning is read: a classifier sees MAX_TEXT characters, of at most 4 bytes each)
        return (await res.storage.get_start(ref, 4 * MAX_TEXT)).decode("utf-8", "replace")[:MAX_TEXT]

    async def classify(event: TaskAssigned, wf: RouterWorkflow) -> Route:
        try:
            text = await request_text(event, wf)
        except Exception as exc:  # a missing or unreadable request is the fallback's problem
            return choose(wf, None, "input", f"cannot read the request: {exc}")
        found = match_rules(text, wf)
        if found is not None:
            return choose(wf, found, "rules")
        if not wf.classifier:
            return choose(wf, None, "rules")
        request = ClassifyRequest(text=text, labels=sorted(wf.routes), run_id=event.run_id)
        try:
            async with limits.get(wf.classifier) or contextlib.nullcontext():
                found = await call_classifier(classifiers[event.workflow], request)
        except Exception as exc:  # a crashing classifier sends the request to the fallback, with why
            log.warning("classifier_failed", classifier=wf.classifier, error=str(exc))
            return choose(wf, None, wf.classifier, f"{type(exc).__name__}: {exc}")
        return choose(wf, found, wf.classifier)

    async def decide_once(event: TaskAssigned) -> Route:
        """The decision for this attempt of the task, made once: a redelivery (the router died before
        acknowledging) reads the stored one instead of classifying again, so it forwards to the same
        agent. SET NX GET is one command on one key in the run's slot."""
        redis = client_of(broker)
        key = streams.route_decision(event.run_id, event.task_id, event.attempt)
        wf = workflows.workflows.get(event.workflow)
        if not event.agent and not event.intent and isinstance(wf, RouterWorkflow):
            stored = await redis.get(key)  # a classifier may be a paid model: not asked twice
            if stored is not None:
                log.info("route_already_decided")
                return Route.loads(stored)
            decision = await classify(event, wf)
        else:
            decision = decide(event, workflows)
        stored = await redis.set(key, decision.dumps(), nx=True, get=True, ex=DECISION_TTL_S)
        if stored is not None:
            log.info("route_already_decided")
            return Route.loads(stored)
        return decision

    async def route(event: TaskAssigned) -> None:
        """Pick the agent for a task (once per attempt) and hand it over."""
        with telemetry.span("router classify", baton__workflow=event.workflow) as span:
            decision = await decide_once(event)
            telemetry.set_attributes(
                span,
                baton__route__agent=decision.agent,
                baton__route__label=decision.label,
                baton__route__confidence=decision.confidence,
                baton__route__classifier=decision.classifier,
            )
        metrics.ROUTES.labels(agent=decision.agent or "none", decided_by=decision.classifier or "none").inc()
        faults.point("router.after_decision")
        sender = f"{SERVICE}:{settings.consumer}"
        common = dict(
            run_id=event.run_id,
            task_id=event.task_id,
            attempt=event.attempt,
            trace_id=event.trace_id,
            sender=sender,
        )
        if decision.agent is None:
            log.warning("route_failed", reason=decision.reason)
            await outbox().publish(
                streams.results_of(event.run_id, settings.result_partitions),
                TaskFailed(**common, error=f"router: {decision.reason}"),
            )
            return
        decided = RouteDecided(
            **common,
            agent=decision.agent,
            label=decision.label,
            confidence=decision.confidence,
            classifier=decision.classifier,
            reason=decision.reason or None,
            usage=decision.usage,
        )
        if decision.agent == HUMAN or decision.usage is not None:
            # Through the supervisor, which records it in the run's stream: it pauses the run for a
            # person, or counts the model classifier's usage in the run's.
            await outbox().publish(streams.results_of(event.run_id, settings.result_partitions), decided)
        else:  # observability only: straight to the run's stream
            await outbox().publish(streams.run_events(event.run_id), decided)
        # After the decision is recorded: the supervisor counts a classifier's usage only while the task
        # is outstanding. A redelivery may record it twice (the supervisor counts it once per attempt).
        if decision.agent != HUMAN:
            # (the worker span below is a child of the router span)
            here = telemetry.current_traceparent() or event.traceparent
            await outbox().publish(
                streams.agent_stream(decision.agent),
                event.model_copy(update={"agent": decision.agent, "sender": sender, "traceparent": here}),
            )
        log.info("routed", agent=decision.agent, classifier=decision.classifier, reason=decision.reason)

    if batched:
        batched.subscribe(broker, streams.ROUTE, streams.ROUTER_GROUP, TaskAssigned, route)
    else:
        subscribe(
            broker,
            streams.ROUTE,
            streams.ROUTER_GROUP,
            settings,
            route,
            title="route",
            description="Tasks waiting for a route.",
        )
    # What the router writes goes through an outbox (one pipeline per loop turn), so that with
    # BATON_REDIS_WAIT_REPLICAS its forwards are acknowledged only once replicas have them, as the
    # supervisor's and the workers' writes are: a failover then loses no task the router took. Batched,
    # the consumer's own outbox does that; FastStream's is only for the per-message path.
    app = build_app(
        broker, res, log, service=SERVICE, consumer=settings.consumer, outbox=not batched, partitions=True
    )
    if batched:
        batched.attach(app)
    return app


def main() -> None:
    settings = Settings()
    run(create_app(settings).run(), settings)
