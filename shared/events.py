"""The event contract: one pydantic model per event, validated on publish and on receipt.

Events never carry file content, only `ObjectRef`s to objects in the shared bucket. Every event has a
`type` (the discriminator) and a `schema_version`; new fields are only ever added with defaults.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from . import telemetry

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
RunId = Annotated[str, Field(pattern=ID_PATTERN, description="Run id; also the run's workspace folder.")]


def new_id() -> str:
    """32 random hex digits. From `random` (seeded by the OS, re-seeded in a forked child), not `uuid4`:
    ids must be unique, not secret, and os.urandom costs a system call per id (two ids per task)."""
    return f"{random.getrandbits(128):032x}"


def utcnow() -> datetime:
    return datetime.now(UTC)


class ObjectRef(BaseModel):
    """A reference to one version of one object: what events carry instead of content."""

    model_config = ConfigDict(frozen=True)

    bucket: str = Field(description="Bucket holding the object.")
    key: str = Field(description="Object key.")
    version_id: str | None = Field(None, description="Exact version to read; None on unversioned stores.")
    etag: str | None = Field(None, description="ETag of that version, checked on read.")
    size: int | None = Field(None, ge=0, description="Size in bytes.")
    content_type: str | None = Field(None, description="MIME type, when known.")

    def uri(self) -> str:
        uri = f"s3://{self.bucket}/{quote(self.key)}"
        return f"{uri}?versionId={self.version_id}" if self.version_id else uri


class Usage(BaseModel):
    """What a task cost."""

    seconds: float = Field(0.0, ge=0, description="Wall-clock seconds the agent ran.")
    prompt_tokens: int = Field(0, ge=0, description="Model prompt tokens, if a model was used.")
    completion_tokens: int = Field(0, ge=0, description="Model completion tokens, if a model was used.")
    cost: float | None = Field(
        None, ge=0, description="Model cost from the agent's price table; None when no price is configured."
    )

    def __add__(self, other: Usage) -> Usage:
        costs = [c for c in (self.cost, other.cost) if c is not None]
        return Usage(
            seconds=self.seconds + other.seconds,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cost=sum(costs) if costs else None,
        )


class BaseEvent(BaseModel):
    """Fields every event carries."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = Field(1, description="Version of this event's schema.")
    event_id: str = Field(default_factory=new_id, description="Unique id of this event (idempotency key).")
    run_id: RunId | None = Field(None, description="The run this event belongs to.")
    task_id: str | None = Field(None, description="The task this event is about.")
    parent_task_id: str | None = Field(None, description="The parent task, in a hierarchy.")
    attempt: int = Field(1, ge=1, description="Attempt number of the task.")
    sender: str = Field("unknown", description="Service or consumer that sent the event.")
    created_at: datetime = Field(default_factory=utcnow, description="When the event was created (UTC).")
    trace_id: str = Field(default_factory=new_id, description="Correlates every event of one run.")
    traceparent: str | None = Field(
        default_factory=telemetry.current_traceparent,
        pattern=telemetry.TRACEPARENT_FORMAT.pattern,
        description="W3C trace context of the span that made this event (None when tracing is off).",
    )


class RunSubmitted(BaseEvent):
    """A client asks for a workflow to run on some inputs."""

    type: Literal["run.submitted"] = "run.submitted"
    run_id: RunId
    workflow: str = Field(description="Name of a workflow in the workflow file.")
    inputs: dict[str, ObjectRef] = Field(default_factory=dict, description="Named input objects.")
    inputs_manifest: ObjectRef | None = Field(
        None,
        description="More inputs than one event holds: a JSON object in the run's workspace mapping names to "
        "ObjectRefs, read by the supervisor into the run's inputs (with `inputs`, which win on a name).",
    )
    params: dict[str, Any] = Field(default_factory=dict, description="Free-form workflow parameters.")


class RunStarted(BaseEvent):
    """The supervisor accepted a run and knows its plan."""

    type: Literal["run.started"] = "run.started"
    run_id: RunId
    workflow: str
    pattern: str
    stages: list[str] = Field(default_factory=list, description="Agents in order (sequential).")


class HumanAnswer(BaseModel):
    """A person's answer, handed back to the agent that asked for it."""

    approved: bool = Field(description="The response's decision: approve (True) or reject (False).")
    text: str = Field("", description="What the person wrote.")
    response: ObjectRef = Field(description="The response file.")


class TaskAssigned(BaseEvent):
    """One slice of work for one agent. If `agent` is empty the router picks it from `intent`."""

    type: Literal["task.assigned"] = "task.assigned"
    run_id: RunId
    task_id: str
    workflow: str = Field(description="Workflow this task is part of.")
    stage: int = Field(0, ge=0, description="Index of the stage in its workflow.")
    agent: str | None = Field(None, description="Agent that must do the work; None lets the router decide.")
    intent: str | None = Field(None, description="Label the router maps to an agent when `agent` is None.")
    instruction: str = Field("", description="What to do, in words.")
    inputs: dict[str, ObjectRef] = Field(default_factory=dict, description="Input objects, by name.")
    inputs_manifest: ObjectRef | None = Field(
        None,
        description="Inputs too many for one event: a JSON object of name -> ObjectRef in the run's "
        "workspace, read by the worker into the handler's inputs (with `inputs`).",
    )
    output_prefix: str = Field(description="Workspace prefix under which outputs are written.")
    output_format: str | None = Field(None, description="Expected output format, e.g. text/markdown.")
    acceptance_criteria: str | None = Field(None, description="What a reviewer will check.")
    params: dict[str, Any] = Field(default_factory=dict, description="The run's parameters.")
    deadline: datetime | None = Field(None, description="When the task is considered late.")
    answer: HumanAnswer | None = Field(
        None, description="A person's answer to the question this task's agent asked (`task.input_required`)."
    )
    resume: dict[str, str] = Field(
        default_factory=dict,
        description="What the agent's runtime kept to go on after its question (e.g. the remote A2A task).",
    )


class RouteDecided(BaseEvent):
    """The router chose an agent for a task."""

    type: Literal["route.decided"] = "route.decided"
    run_id: RunId
    task_id: str
    agent: str = Field(description="Chosen agent.")
    label: str | None = Field(None, description="Intent label that led there.")
    confidence: float = Field(1.0, ge=0, le=1, description="Classifier confidence.")
    classifier: str = Field("static", description="Which classifier decided.")
    reason: str | None = Field(None, description="Why the fallback was taken, when it was.")
    usage: Usage | None = Field(
        None, description="Model tokens/cost a model classifier spent (counted in the run's usage)."
    )


class TaskStarted(BaseEvent):
    """A worker took a task."""

    type: Literal["task.started"] = "task.started"
    run_id: RunId
    task_id: str
    agent: str


class TaskProgress(BaseEvent):
    """A worker reports progress on a long task."""

    type: Literal["task.progress"] = "task.progress"
    run_id: RunId
    task_id: str
    agent: str
    message: str = ""
    percent: float | None = Field(None, ge=0, le=100)


class TaskCompleted(BaseEvent):
    """A task finished; its outputs are in the bucket."""

    type: Literal["task.completed"] = "task.completed"
    run_id: RunId
    task_id: str
    agent: str
    outputs: dict[str, ObjectRef] = Field(default_factory=dict, description="Output objects, by name.")
    outputs_manifest: ObjectRef | None = Field(
        None,
        description="More outputs than one event holds: a JSON object of ObjectRefs by name in the run's "
        "manifests/, read by the supervisor into the task's outputs (with `outputs`, which win on a name).",
    )
    usage: Usage = Field(default_factory=Usage)


class TaskFailed(BaseEvent):
    """A task failed."""

    type: Literal["task.failed"] = "task.failed"
    run_id: RunId
    task_id: str
    agent: str | None = None
    error: str = Field(description="What went wrong, for a person.")
    retryable: bool = Field(False, description="Whether another attempt may succeed.")


class TaskInputRequired(BaseEvent):
    """An agent needs a person's answer to go on: the run waits for one (`human.requested`), and the task
    is assigned again with the answer and `resume` (a new attempt, not counted as a retry)."""

    type: Literal["task.input_required"] = "task.input_required"
    run_id: RunId
    task_id: str
    agent: str
    question: str = Field(description="What the agent asks, for a person.")
    resume: dict[str, str] = Field(
        default_factory=dict, description="What the agent's runtime needs to go on (kept in the run's state)."
    )


class ObjectChanged(BaseEvent):
    """An object in the bucket was created or removed (from a bucket notification)."""

    type: Literal["object.changed"] = "object.changed"
    bucket: str
    key: str
    version_id: str | None = None
    etag: str | None = None
    size: int | None = None
    content_type: str | None = None
    event_name: str = Field(description="S3 event name, e.g. s3:ObjectCreated:Put.")
    sequencer: str | None = Field(None, description="Orders events on one key.")

    @property
    def created(self) -> bool:
        return "ObjectCreated" in self.event_name

    def ref(self) -> ObjectRef:
        return ObjectRef(
            bucket=self.bucket,
            key=self.key,
            version_id=self.version_id,
            etag=self.etag,
            size=self.size,
            content_type=self.content_type,
        )


class ReviewVerdict(BaseEvent):
    """A reviewer's judgement of one subtask's result."""

    type: Literal["review.verdict"] = "review.verdict"
    run_id: RunId
    task_id: str = Field(description="The reviewed subtask's task id.")
    subtask: str = Field(description="Id of the subtask in the plan.")
    agent: str = Field(description="Agent whose work was reviewed.")
    accepted: bool
    feedback: str = ""
    feedback_ref: ObjectRef | None = Field(None, description="The reviewer's feedback file.")


class HumanInputRequested(BaseEvent):
    """The run waits for a person: answer by writing a file under `runs/<run_id>/human/responses/`."""

    type: Literal["human.requested"] = "human.requested"
    run_id: RunId
    task_id: str
    question: str = Field(description="What the person is asked.")
    request: ObjectRef = Field(description="The request file, with the inputs to look at.")
    inputs: dict[str, ObjectRef] = Field(default_factory=dict)


class HumanInputReceived(BaseEvent):
    """A person answered."""

    type: Literal["human.received"] = "human.received"
    run_id: RunId
    task_id: str
    approved: bool
    text: str = ""
    response: ObjectRef = Field(description="The response file.")


class RunCompleted(BaseEvent):
    """A run finished; these are its outputs."""

    type: Literal["run.completed"] = "run.completed"
    run_id: RunId
    outputs: dict[str, ObjectRef] = Field(default_factory=dict)
    usage: Usage = Field(default_factory=Usage)
    ended_by: str | None = Field(
        None, description="Why a collaboration ended: approved, converged, oscillation or max_rounds."
    )


class RunCancelRequested(BaseEvent):
    """A client asks to stop a run (`baton cancel`)."""

    type: Literal["run.cancel"] = "run.cancel"
    run_id: RunId
    reason: str = Field("cancelled by a user", description="Why, for the run's history.")


class RunCancelled(BaseEvent):
    """A run was stopped before it ended; queued tasks are dropped, running ones stop at a checkpoint."""

    type: Literal["run.cancelled"] = "run.cancelled"
    run_id: RunId
    reason: str


class RunFailed(BaseEvent):
    """A run ended without its result."""

    type: Literal["run.failed"] = "run.failed"
    run_id: RunId
    reason: str


Event = Annotated[
    RunSubmitted
    | RunStarted
    | TaskAssigned
    | RouteDecided
    | TaskStarted
    | TaskProgress
    | TaskCompleted
    | TaskFailed
    | TaskInputRequired
    | ObjectChanged
    | ReviewVerdict
    | HumanInputRequested
    | HumanInputReceived
    | RunCompleted
    | RunFailed
    | RunCancelRequested
    | RunCancelled,
    Field(discriminator="type"),
]
RunRequest = Annotated[RunSubmitted | RunCancelRequested, Field(discriminator="type")]
TaskResult = Annotated[
    TaskStarted | TaskProgress | TaskCompleted | TaskFailed | TaskInputRequired | RouteDecided,
    Field(discriminator="type"),
]

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)
TERMINAL_RUN_EVENTS = ("run.completed", "run.failed", "run.cancelled")


def parse_event(data: bytes | str) -> Event:
    """Validate one event from its JSON wire form."""
    return EVENT_ADAPTER.validate_json(data)


async def each_once_until_end(raws: AsyncIterator[bytes | None]) -> AsyncIterator[Event]:
    """A run stream's events (their JSON; None for an entry without one) as a follower yields them: each
    once, up to and including the run's terminal event. A supervisor that dies before acknowledging a
    message records its event again when the message is redelivered (same event id): that copy is
    skipped."""
    seen: set[str] = set()
    async for raw in raws:
        if raw is None:
            continue
        event = parse_event(raw)
        if event.event_id in seen:
            continue
        seen.add(event.event_id)
        yield event
        if event.type in TERMINAL_RUN_EVENTS:
            return


class DeadLetter(BaseModel):
    """A message Baton could not handle, kept with the reason (stream `baton:dlq`)."""

    type: Literal["dead.letter"] = "dead.letter"
    event_id: str = Field(default_factory=new_id)
    stream: str = Field(description="Stream the message was read from.")
    group: str | None = Field(None, description="Consumer group that read it.")
    message_id: str | None = Field(None, description="Stream entry id of the original message.")
    service: str = Field(description="Service that refused it.")
    reason: str = Field(description="Why it was refused, for a person.")
    raw: str = Field(description="The whole original payload (non-UTF-8 bytes escaped).")
    run_id: str | None = Field(None, description="Run id, if one could be read from the payload.")
    created_at: datetime = Field(default_factory=utcnow)
