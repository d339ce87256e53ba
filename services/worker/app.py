"""The worker: one generic runtime hosting the agents of the workflow file.

Each hosted agent is a consumer group (named after the agent) on `baton:agent:<name>`; N worker processes
share each group, so adding processes spreads the work. A worker is stateless: it reads its inputs by
reference, writes its outputs, and reports completed / failed on `baton:{r<N>}:results` (started and progress
go straight to the run's own stream `baton:{<run_id>}:events`).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import time
from concurrent.futures import ThreadPoolExecutor

from shared import manifests, metrics, streams, telemetry
from shared.batch import Batched
from shared.broker import CURRENT_ENTRY, client_of, encode, make_broker, subscribe
from shared.errors import ConfigError, InputRequired, KeyValidationError, PermanentError, RetryableError
from shared.events import (
    TaskAssigned,
    TaskCompleted,
    TaskFailed,
    TaskInputRequired,
    TaskProgress,
    TaskResult,
    TaskStarted,
    Usage,
)
from shared.logging import configure_logging
from shared.service import Resources, build_app, run
from shared.settings import Settings
from shared.workflow import load_workflows
from shared.workspace import run_prefix

from . import a2a as _a2a  # noqa: F401 - registers the runtime of `kind: a2a` agents
from . import llm as _llm  # noqa: F401 - registers the runtime of `kind: llm` agents
from .runtime import AgentContext

SERVICE = "worker"
EMPTY_USAGE = Usage()
RUNTIME_KINDS = ("python", "llm", "a2a")  # the agent kinds a worker hosts
OUTCOME_GRACE_S = 30.0  # past an agent's time limit, time to write the task's outcome


def create_app(settings: Settings | None = None):
    settings = settings or Settings()
    log = configure_logging(SERVICE, settings.log_format, settings.log_level)
    workflows = load_workflows(settings.workflows)
    hosted = settings.agent_list or [n for n, a in workflows.agents.items() if a.kind in RUNTIME_KINDS]
    unknown = [a for a in hosted if a not in workflows.agents]
    if unknown:
        raise ConfigError(f"BATON_AGENTS names unknown agents {unknown}; known: {sorted(workflows.agents)}")
    handlers = {name: workflows.agents[name].load_handler(settings) for name in hosted}

    # (on the per-message path each agent is a FastStream subscriber: a read, and a connection, apiece)
    broker = make_broker(settings, SERVICE, readers=0 if settings.batch else len(hosted))
    # Declared for the AsyncAPI document: events are written with `publish` below.
    broker.publisher(
        stream=streams.RESULTS_DOC, title="results", schema=TaskResult, description="Task outcomes."
    )
    broker.publisher(
        stream=streams.run_events("{run_id}"),
        title="task-news",
        schema=TaskStarted | TaskProgress,
        description="Starts and progress, to the run's stream (to results if its workflow times tasks).",
    )
    res = Resources(settings)
    # Batch mode (the default): each agent's consumer reads up to `batch` tasks at a time and runs them
    # concurrently, and every event goes through one outbox, so the events of a whole batch reach Redis in
    # one round trip. With `batch` 0: one FastStream handler call per task.
    batched = Batched(settings, SERVICE) if settings.batch else None

    def results(event) -> str:
        """The results partition of the event's run."""
        return streams.results_of(event.run_id, settings.result_partitions)

    async def publish(event, stream: str | None = None) -> None:
        """Write one result event (to its run's results partition unless `stream`); durable on return."""
        stream = stream or results(event)
        if batched:
            await batched.outbox.publish(stream, event)
        else:
            await broker.publish(event, stream=stream)

    def news_stream(event: TaskAssigned) -> str:
        """Where a task's start and progress go: straight to the run's own stream (only the supervisor
        would read them from `baton:{r<N>}:results`, to copy them there), unless the supervisor must see the
        start to time the task (its workflow has a `task_timeout`)."""
        wf = workflows.workflows.get(event.workflow)
        return results(event) if wf is not None and wf.task_timeout else streams.run_events(event.run_id)

    pools: list[ThreadPoolExecutor] = []

    def runner(agent: str):
        """How to call the agent's handler: awaited on the loop if it is async; in a thread of the agent's
        own pool (as many threads as it may run tasks at once) if it is a plain function, so a CPU-bound
        handler cannot starve the event loop, and with it every other task's heartbeat in this process."""
        func = handlers[agent]
        if inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(type(func).__call__):
            return func
        if not callable(func):
            raise ConfigError(f"handler of agent {agent!r} is not callable: {func!r}")
        size = workflows.agents[agent].concurrency or settings.batch or settings.max_records
        pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix=f"agent-{agent}")
        pools.append(pool)

        async def in_thread(ctx: AgentContext):
            loop = asyncio.get_running_loop()
            ctx._loop = loop
            call = functools.partial(contextvars.copy_context().run, func, ctx)  # log context goes along
            return await loop.run_in_executor(pool, call)

        return in_thread

    def time_limit(agent: str) -> float | None:
        return workflows.agents[agent].time_limit or settings.handler_timeout_s or None

    def make_handler(agent: str):
        spec = workflows.agents[agent]
        func = runner(agent)
        limit = time_limit(agent)

        async def run_task(event: TaskAssigned) -> None:
            """Run one task of this agent and report its outcome."""
            common = dict(
                run_id=event.run_id,
                task_id=event.task_id,
                parent_task_id=event.parent_task_id,
                attempt=event.attempt,
                trace_id=event.trace_id,
                sender=f"{SERVICE}:{settings.consumer}",
                agent=agent,
            )
            if event.agent != agent:
                await publish(
                    TaskFailed(**common, error=f"task for agent {event.agent!r} arrived at {agent!r}")
                )
                return

            async def redis(command: str, *args):
                if batched:  # rides the outbox's next pipeline with the other tasks' commands
                    return await batched.outbox.call(command, *args)
                return await getattr(client_of(broker), command)(*args)

            async def cancelled() -> bool:
                return bool(await redis("exists", streams.run_cancelled(event.run_id)))

            # An attempt whose outcome this group already sent (its worker died before acknowledging)
            # is acknowledged again, not done twice.
            done_key = streams.run_done(event.run_id, settings.result_partitions)
            attempt_id = f"{event.task_id}:{event.attempt}"
            # One entry owns an attempt: a second entry with the same work (a task sent again after a
            # supervisor, router or timer died between sending and acknowledging) is dropped, even while
            # the first one is still running; a redelivery of the owner's own entry goes on.
            entry = CURRENT_ENTRY.get() or event.event_id
            if batched:  # all reads in one round trip, as futures of the outbox (no task per read)
                done = batched.outbox.call("hexists", done_key, attempt_id)
                claim = batched.outbox.call("hsetnx", done_key, f"{attempt_id}@", entry)
                owner = batched.outbox.call("hget", done_key, f"{attempt_id}@")
                is_cancelled = batched.outbox.call("exists", streams.run_cancelled(event.run_id))
                await claim
                done, owner, is_cancelled = bool(await done), await owner, bool(await is_cancelled)
            else:
                done = await redis("hexists", done_key, attempt_id)
                await redis("hsetnx", done_key, f"{attempt_id}@", entry)
                owner, is_cancelled = await redis("hget", done_key, f"{attempt_id}@"), await cancelled()
            if done:
                log.info("already_done", attempt=event.attempt)
                return
            if owner is not None and owner.decode() != entry:
                log.info("duplicate_entry", attempt=event.attempt, owner=owner.decode())
                return

            if is_cancelled:  # a queued task of a cancelled run is dropped, with a trace
                await publish(TaskFailed(**common, error="run cancelled before the task started"))
                return
            started_written = None
            news = news_stream(event)
            telemetry.interval("task queue wait", event.created_at)  # the agent: in the parent span
            metrics.task_started(agent, event.created_at)
            if batched:  # written with the next pipeline: at the latest, in the same one as the outcome
                started_written = batched.outbox.send(news, TaskStarted(**common))
            else:
                await publish(TaskStarted(**common), news)

            async def report(outcome) -> None:
                """Write the outcome and the attempt's done-mark atomically (one script, or MULTI/EXEC):
                a worker dying at any instruction leaves either both or neither, so a redelivery either
                re-runs the task (no outcome was sent) or only acknowledges it (one was)."""
                mark = (done_key, attempt_id, outcome.type)
                metrics.task_ended(agent, outcome, time.perf_counter() - started)
                if isinstance(outcome, TaskFailed):
                    telemetry.mark_error(outcome.error)
                try:
                    if batched:
                        # (no EXPIRE per task: the supervisor expires the hash when the run ends)
                        await batched.outbox.send(results(outcome), outcome, mark=mark)
                    else:  # (the stream and the mark share the results partition's hash slot)
                        async with client_of(broker).pipeline(transaction=True) as pipe:
                            pipe.xadd(results(outcome), encode(outcome))
                            pipe.hset(*mark)
                            await pipe.execute()
                finally:
                    if started_written is not None:
                        await started_written

            ctx = AgentContext(
                event, agent, spec, res.storage, report=lambda p: publish(p, news), cancelled=cancelled
            )
            started = time.perf_counter()
            deadline = asyncio.timeout(limit)
            try:
                with telemetry.span("task run"):
                    await ctx.load_inputs()
                    async with deadline:
                        result = await func(ctx)
                        if inspect.isawaitable(result):
                            await result
            except InputRequired as exc:  # the run asks a person; the answer comes back as the next attempt
                log.info("task_input_required", agent=agent, question=exc.question)
                await report(TaskInputRequired(**common, question=exc.question, resume=exc.resume))
                return
            except (KeyValidationError, PermanentError, KeyError, TypeError, ValueError) as exc:
                log.warning("task_failed", agent=agent, error=str(exc), retryable=False)
                await report(TaskFailed(**common, error=f"{type(exc).__name__}: {exc}"))
                return
            except Exception as exc:  # an agent's bug or a transient fault: another attempt may work
                error = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, TimeoutError) and deadline.expired():
                    error = f"agent {agent!r} ran past its time limit of {limit:g} s and was stopped"
                    ctx.stop(error)
                    log.warning("task_timed_out", agent=agent, limit=limit)
                elif isinstance(exc, RetryableError):  # said by the agent: its message is the story
                    log.warning("task_retryable", agent=agent, error=error)
                else:  # a bug or an unforeseen fault: its traceback
                    log.exception("task_error", agent=agent)
                await report(TaskFailed(**common, error=error, retryable=True))
                return
            seconds = time.perf_counter() - started
            usage = Usage(seconds=round(seconds, 6))
            if ctx.usage != EMPTY_USAGE:  # model tokens/cost, if any
                usage += ctx.usage
            completed = TaskCompleted(**common, outputs=ctx.outputs, usage=usage)
            if len(completed.model_dump_json()) > settings.max_event_bytes and ctx.outputs:
                # More outputs than one event holds (an agent that split a document into a thousand parts):
                # their refs go in a manifest the supervisor reads (shared/manifests.py).
                key = f"{run_prefix(event.run_id)}manifests/{event.task_id}.{event.attempt}.outputs.json"
                body = manifests.encode(ctx.outputs)
                ref = await res.storage.put(key, body, content_type="application/json")
                completed = completed.model_copy(update={"outputs": {}, "outputs_manifest": ref})
            await report(completed)
            # Per task at DEBUG, like FastStream's per-message line: TaskCompleted already records it.
            log.debug("task_completed", agent=agent, seconds=round(seconds, 4), outputs=sorted(ctx.outputs))

        run_task.__name__ = f"agent_{agent}"
        return run_task

    for agent in hosted:
        # The task's own limit (above) writes its TaskFailed; this one only catches a worker stuck after
        # it, e.g. writing the outcome to a Redis that does not answer.
        limit = time_limit(agent)
        backstop = limit + OUTCOME_GRACE_S if limit else None
        if batched:
            size = workflows.agents[agent].concurrency
            batched.subscribe(
                broker,
                streams.agent_stream(agent),
                agent,
                TaskAssigned,
                make_handler(agent),
                size=size,
                timeout=backstop,
            )
            continue
        subscribe(
            broker,
            streams.agent_stream(agent),
            agent,
            settings,
            make_handler(agent),
            timeout=backstop,
            title=f"agent:{agent}",
            description=f"Tasks for agent {agent!r}.",
        )

    app = build_app(
        broker, res, log, service=SERVICE, agents=hosted, consumer=settings.consumer, partitions=True
    )
    if batched:
        batched.attach(app)

    @app.after_shutdown
    async def _stop_threads() -> None:
        for pool in pools:  # a thread cannot be interrupted: one still running ends with the process
            pool.shutdown(wait=False, cancel_futures=True)

    return app


def main() -> None:
    settings = Settings()
    run(create_app(settings).run(), settings)
