"""The runtime of every `kind: a2a` agent: the task handed to a remote A2A agent, its artifacts written back.

The remote agent gets what any agent gets, and no more: one message with the instruction (and acceptance
criteria) as text, the params as a data part, and each input file as a file part (bytes up to
`max_inline_bytes`, else a presigned URL of the exact version). Its status updates become the task's
progress; the artifacts it returns are written under the agent's first `writes` prefix and named after
the artifact, so the next stage sees them like any agent's outputs.

Remote states map onto Baton's outcomes: `completed` -> the task completes; `failed` and `canceled` ->
`A2ATaskFailed`, retryable unless the agent lists it in `retry.permanent_errors`; `rejected` ->
`A2ATaskRejected` (permanent); `input-required` -> a question to a person in the run (`InputRequired`,
with the remote task and context ids as `resume`): the supervisor asks it like a workflow's `human` step,
and the person's answer comes back as the next attempt of this task, which sends it as the next message
on the same remote task and follows that task on. `auth-required` -> `A2AInputRequired` (permanent: a
person's credentials are not relayed). A card that cannot be read as an agent card is permanent, and so is
a refused token (HTTP 401/403), an artifact over `max_artifact_bytes`, and an artifact URL or a card's
interface on an address the worker does not connect to for it (shared/fetch.py); an agent that cannot be
reached is retryable. When the task stops early (its time limit, the run cancelled, seen every `POLL_S`) the
remote task is cancelled too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import mimetypes
import os
import posixpath
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx
from a2a.client import A2ACardResolver, A2AClientError, AgentCardResolutionError, ClientConfig, ClientFactory
from a2a.types import (
    AgentCard,
    Artifact,
    CancelTaskRequest,
    GetTaskRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    StreamResponse,
    TaskState,
)
from a2a.utils.errors import TaskNotFoundError
from google.protobuf import json_format, struct_pb2

from shared.errors import ConfigError, InputRequired, PermanentError, RetryableError
from shared.fetch import Fetcher, FetchError, Policy, Refused, TooLarge
from shared.settings import Settings
from shared.workflow import AgentSpec, expand_env, register_runtime

from .runtime import AgentContext

CARD_TTL_S = 300.0  # a card is read again after this long (an agent may move or change its skills)
POLL_S = 1.0  # how often a task is polled when not streamed to its end, and the run checked for a cancel
QUESTION_CHARS = 4000  # a remote agent's question, as far as it is relayed to a person
# What a question keeps for the answer's attempt (`TaskAssigned.resume`): the remote task to answer.
RESUME_TASK, RESUME_CONTEXT = "a2a_task_id", "a2a_context_id"
CANCEL_S = 5.0  # time given to cancelling the remote task when ours stops early
STATES = {
    TaskState.TASK_STATE_SUBMITTED: "submitted",
    TaskState.TASK_STATE_WORKING: "working",
    TaskState.TASK_STATE_COMPLETED: "completed",
    TaskState.TASK_STATE_FAILED: "failed",
    TaskState.TASK_STATE_CANCELED: "canceled",
    TaskState.TASK_STATE_REJECTED: "rejected",
    TaskState.TASK_STATE_INPUT_REQUIRED: "input-required",
    TaskState.TASK_STATE_AUTH_REQUIRED: "auth-required",
}
DONE = {
    TaskState.TASK_STATE_COMPLETED,
    TaskState.TASK_STATE_FAILED,
    TaskState.TASK_STATE_CANCELED,
    TaskState.TASK_STATE_REJECTED,
    TaskState.TASK_STATE_INPUT_REQUIRED,
    TaskState.TASK_STATE_AUTH_REQUIRED,
}
_UNSAFE = re.compile(r"[^\w.-]+")


class A2AUnreachable(RetryableError):
    """The remote A2A agent (or its card) could not be reached."""


class A2ACardError(PermanentError):
    """The remote agent's card is not a valid A2A agent card."""


class A2ATaskFailed(RetryableError):
    """The remote agent's task failed or was cancelled on its side."""


class A2ATaskRejected(PermanentError):
    """The remote agent rejected the task."""


class A2AInputRequired(PermanentError):
    """The remote agent asked for authentication, which a Baton task does not relay to a person."""


class A2AUnauthorized(PermanentError):
    """The remote agent refused our credentials (HTTP 401 or 403)."""


class A2ATaskLost(PermanentError):
    """The remote task a person's answer was for no longer exists there."""


class A2AArtifactTooLarge(PermanentError):
    """A remote agent returned a file part over the agent's `max_artifact_bytes`."""


class A2AArtifactRefused(PermanentError):
    """A remote agent named an artifact URL on an address the worker does not fetch from (shared/fetch.py)."""


class A2AAddressRefused(PermanentError):
    """A remote agent's card names an interface on an address the worker does not connect to for it."""


def caused_by(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """`exc` or the first of its causes (or contexts) that is a `kind`."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kind):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


@dataclass
class CardCache:
    """One agent's card, read on first use and again after `CARD_TTL_S` or a failed connection."""

    url: str
    card: AgentCard | None = None
    read_at: float = 0.0

    async def get(self, http: httpx.AsyncClient) -> AgentCard:
        if self.card is not None and time.monotonic() - self.read_at < CARD_TTL_S:
            return self.card
        try:
            card = await A2ACardResolver(http, self.url).get_agent_card()
        except AgentCardResolutionError as exc:
            cause = exc.__cause__
            if isinstance(cause, httpx.RequestError) or (exc.status_code or 0) >= 500:
                raise A2AUnreachable(f"A2A agent at {self.url} cannot be reached: {exc}") from exc
            raise A2ACardError(f"A2A agent at {self.url}: {exc}") from exc
        if not card.supported_interfaces:
            raise A2ACardError(
                f"A2A agent at {self.url}: its card lists no interface (`supportedInterfaces`)"
            )
        self.card, self.read_at = card, time.monotonic()
        return card

    def forget(self) -> None:
        self.card = None


@dataclass
class Outcome:
    """What the remote agent has said so far about our task."""

    task_id: str | None = None
    context_id: str | None = None
    state: TaskState = TaskState.TASK_STATE_SUBMITTED
    last_text: str = ""
    artifacts: dict[str, Artifact] = field(default_factory=dict)

    def take_artifact(self, artifact: Artifact, append: bool = False) -> None:
        held = self.artifacts.get(artifact.artifact_id)
        if append and held is not None:
            held.parts.extend(artifact.parts)
        else:
            self.artifacts[artifact.artifact_id] = artifact


def text_of(message: Message) -> str:
    return " ".join(p.text for p in message.parts if p.HasField("text")).strip()


def make_handler(
    spec: AgentSpec, settings: Settings | None = None
) -> Callable[[AgentContext], Awaitable[None]]:
    """The handler the worker runs for a `kind: a2a` agent, with the worker's `settings` (None: the
    environment's); a bad `url` or token variable fails here."""
    url = expand_env(spec.url or "", "url").rstrip("/") + "/"
    token_env = spec.api_key_env
    if token_env and not os.environ.get(token_env):
        raise ConfigError(f"a2a agent at {url}: api_key_env {token_env!r} is not set in the environment")
    cards = CardCache(url)
    # Where the remote agent may make the worker connect (shared/fetch.py; a malformed setting fails here,
    # at start-up). Its messages, with our token: the agent's own origin, public addresses and
    # BATON_A2A_FETCH_HOSTS, so that a card whose interface names another address on the worker's network
    # (a cloud's metadata address, a private service) is refused where the connection would be made.
    # Artifact URLs: the same and the store's endpoint (presigned URLs), through one client made on the
    # first URL an agent names.
    settings = settings or Settings()
    try:
        talking = Policy(settings.a2a_fetch_hosts, {"the agent": url})
        policy = Policy(settings.a2a_fetch_hosts, {"the store": settings.s3_endpoint_url, "the agent": url})
    except ValueError as exc:
        raise ConfigError(f"a2a agent at {url}: {exc}") from exc
    # The whole remote task is bounded by the agent's time limit (the worker's), not by a read timeout.
    timeout = httpx.Timeout(spec.timeout, read=None)
    fetching = Fetcher(policy, timeout)
    # The agent's messages: one client for all its tasks, made on the first (a TLS context costs ~10-20 ms
    # of CPU; idle connections are reused), our token on every request.
    headers = {"Authorization": f"Bearer {os.environ[token_env]}"} if token_env else {}
    talking_to = Fetcher(talking, timeout, headers=headers, follow_redirects=False)

    async def run_a2a_agent(ctx: AgentContext) -> None:
        http = talking_to.client()
        card = await cards.get(http)
        client = ClientFactory(ClientConfig(httpx_client=http, streaming=True)).create(card)
        outcome = Outcome()
        if ctx.resume.get(RESUME_TASK):  # a person answered the remote agent's question: go on
            outcome.task_id = ctx.resume[RESUME_TASK]
            outcome.context_id = ctx.resume.get(RESUME_CONTEXT) or None
            message, said = answer_message(ctx, outcome), "answer sent to"
        else:
            message, said = await build_message(ctx, spec), "sent to"

        async def exchange() -> None:
            async for response in client.send_message(SendMessageRequest(message=message)):
                await follow(ctx, card, response, outcome)
            while outcome.state not in DONE:  # a remote agent that returned before it was done
                if outcome.task_id is None:
                    raise A2ATaskFailed(
                        f"A2A agent {card.name!r} at {url} returned neither a task nor a message"
                    )
                await asyncio.sleep(POLL_S)
                task = await client.get_task(GetTaskRequest(id=outcome.task_id))
                await follow(ctx, card, StreamResponse(task=task), outcome)

        try:
            await ctx.progress(f"{said} A2A agent {card.name!r} at {url}", 1)
            await until_cancelled(ctx, exchange())
        except TaskNotFoundError as exc:
            raise A2ATaskLost(
                f"A2A agent {card.name!r} at {url} no longer has task {outcome.task_id}: {exc}"
            ) from exc
        except (httpx.RequestError, A2AClientError, Refused) as exc:
            if (refused := caused_by(exc, Refused)) is not None:  # permanent: the card says so
                interface = card.supported_interfaces[0].url if card.supported_interfaces else "?"
                raise A2AAddressRefused(
                    f"A2A agent {card.name!r} at {url}: its card's interface {interface}: {refused}"
                ) from exc
            cards.forget()
            cause = exc.__cause__
            if isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code in (401, 403):
                raise A2AUnauthorized(
                    f"A2A agent {card.name!r} at {url} refused our credentials "
                    f"(HTTP {cause.response.status_code}; token from {token_env or 'no api_key_env'})"
                ) from exc
            raise A2AUnreachable(f"A2A agent {card.name!r} at {url}: {type(exc).__name__}: {exc}") from exc
        except BaseException:
            # Our task stops early (time limit, run cancelled, worker stopping): so does the remote one.
            if outcome.task_id and outcome.state not in DONE:
                await cancel_remote(client, outcome.task_id)
            raise
        await settle(ctx, spec, card, url, outcome, fetching)

    run_a2a_agent.__name__ = "run_a2a_agent"
    run_a2a_agent.__qualname__ = "run_a2a_agent"
    return run_a2a_agent


async def until_cancelled(ctx: AgentContext, work: Awaitable[None]) -> None:
    """Run `work`, checking every `POLL_S` that the run was not cancelled (a remote agent may stay silent
    for long): a cancel stops `work` with the checkpoint's error."""
    job = asyncio.ensure_future(work)
    try:
        while not job.done():
            await asyncio.wait({job}, timeout=POLL_S)
            if not job.done():
                await ctx.checkpoint()
        job.result()
    finally:
        if not job.done():
            job.cancel()
            with contextlib.suppress(BaseException):
                await job


def answer_message(ctx: AgentContext, outcome: Outcome) -> Message:
    """A person's answer, as the next message on the remote task that asked for it."""
    answer = ctx.answer
    approved = answer is None or answer.approved
    decision = "approve" if approved else "reject"
    parts = [Part(text=(answer.text if answer is not None and answer.text else decision))]
    parts.append(Part(data=json_format.ParseDict({"decision": decision}, struct_pb2.Value())))
    task = ctx.task
    message = Message(
        role=Role.ROLE_USER,
        message_id=f"{task.task_id}.{task.attempt}",
        task_id=outcome.task_id or "",
        parts=parts,
        metadata={"baton_run_id": task.run_id, "baton_task_id": task.task_id, "baton_attempt": task.attempt},
    )
    if outcome.context_id:
        message.context_id = outcome.context_id
    return message


async def build_message(ctx: AgentContext, spec: AgentSpec) -> Message:
    """The one message the remote agent gets: instruction, params, and the input files."""
    text = ctx.instruction or f"Task {ctx.task.task_id} of run {ctx.task.run_id}."
    if ctx.task.acceptance_criteria:
        text += f"\n\nAcceptance criteria: {ctx.task.acceptance_criteria}"
    if ctx.task.output_format:
        text += f"\n\nOutput format: {ctx.task.output_format}"
    parts = [Part(text=text)]
    if ctx.params:
        parts.append(Part(data=json_format.ParseDict(json.loads(json.dumps(ctx.params)), struct_pb2.Value())))
    for name, ref in ctx.inputs.items():
        filename = posixpath.basename(ref.key)
        media_type = (ref.content_type or "application/octet-stream").split(";")[0].strip()
        meta = {"name": name, "key": ctx.workspace_path(ref)}
        if ref.size is not None and ref.size > spec.max_inline_bytes:
            link = await ctx.storage.presign(ref)
            parts.append(Part(url=link, filename=filename, media_type=media_type, metadata=meta))
            continue
        data = await ctx.read(name)
        if len(data) > spec.max_inline_bytes:
            link = await ctx.storage.presign(ref)
            parts.append(Part(url=link, filename=filename, media_type=media_type, metadata=meta))
        else:
            parts.append(Part(raw=data, filename=filename, media_type=media_type, metadata=meta))
    task = ctx.task
    return Message(
        role=Role.ROLE_USER,
        message_id=f"{task.task_id}.{task.attempt}",
        # One context per Baton task: every attempt of it is one conversation on the remote side.
        context_id=f"{task.run_id}.{task.task_id}",
        parts=parts,
        metadata={"baton_run_id": task.run_id, "baton_task_id": task.task_id, "baton_attempt": task.attempt},
    )


async def follow(ctx: AgentContext, card: AgentCard, response: StreamResponse, outcome: Outcome) -> None:
    """Take one streamed event: remember the task's state and artifacts, report its messages as progress."""
    kind = response.WhichOneof("payload")
    if kind == "task":
        task = response.task
        outcome.task_id, outcome.context_id = task.id, task.context_id or outcome.context_id
        outcome.state = task.status.state
        for artifact in task.artifacts:
            outcome.take_artifact(artifact)
        said = text_of(task.status.message) if task.status.HasField("message") else ""
    elif kind == "status_update":
        update = response.status_update
        outcome.task_id = update.task_id or outcome.task_id
        outcome.context_id = update.context_id or outcome.context_id
        outcome.state = update.status.state
        said = text_of(update.status.message) if update.status.HasField("message") else ""
    elif kind == "artifact_update":
        update = response.artifact_update
        outcome.take_artifact(update.artifact, append=update.append)
        await ctx.progress(f"{card.name}: artifact {update.artifact.name or update.artifact.artifact_id}")
        return
    elif kind == "message":  # a direct answer, without a task: its parts are the result
        message = response.message
        outcome.take_artifact(Artifact(artifact_id="reply", name="reply", parts=message.parts))
        outcome.state = TaskState.TASK_STATE_COMPLETED
        return
    else:
        return
    if said:
        outcome.last_text = said
    state = STATES.get(outcome.state, str(outcome.state))
    await ctx.progress(f"{card.name} ({state}): {said}" if said else f"{card.name}: {state}")


async def cancel_remote(client, task_id: str) -> None:
    try:
        await asyncio.wait_for(client.cancel_task(CancelTaskRequest(id=task_id)), CANCEL_S)
    except Exception:  # best effort: the remote agent may already be gone
        pass


async def settle(
    ctx: AgentContext, spec: AgentSpec, card: AgentCard, url: str, outcome: Outcome, fetching: Fetcher
) -> None:
    """Write the artifacts of a completed task, or raise the error its final state maps to."""
    said = f": {outcome.last_text}" if outcome.last_text else ""
    who = f"A2A agent {card.name!r} at {url}"
    state = outcome.state
    if state == TaskState.TASK_STATE_REJECTED:
        raise A2ATaskRejected(f"{who} rejected task {outcome.task_id}{said}")
    if state in (TaskState.TASK_STATE_FAILED, TaskState.TASK_STATE_CANCELED):
        raise A2ATaskFailed(f"{who}: task {outcome.task_id} {STATES[state]}{said}")
    if state == TaskState.TASK_STATE_INPUT_REQUIRED:  # the run asks a person; the answer comes back
        question = outcome.last_text or f"{card.name} asks for input (task {outcome.task_id})"
        await ctx.progress(f"{card.name}: waits for a person's answer")
        raise InputRequired(
            question[:QUESTION_CHARS],
            {RESUME_TASK: outcome.task_id or "", RESUME_CONTEXT: outcome.context_id or ""},
        )
    if state == TaskState.TASK_STATE_AUTH_REQUIRED:
        raise A2AInputRequired(
            f"{who} needs authentication for task {outcome.task_id}{said} (not relayed to a person)"
        )
    if not outcome.artifacts:
        raise A2ATaskFailed(f"{who} completed task {outcome.task_id} without any artifact{said}")
    written = 0
    for artifact in outcome.artifacts.values():
        for i, part in enumerate(artifact.parts):
            filename = part_filename(artifact, part, i)
            data = await part_bytes(part, fetching, spec.max_artifact_bytes, f"{who}: artifact {filename!r}")
            if data is None:
                continue
            name = (
                artifact.name
                if artifact.name and len(artifact.parts) == 1
                else posixpath.splitext(filename)[0]
            )
            ctype = part.media_type or None
            await ctx.write(f"{spec.writes[0]}{filename}", data, name=name, content_type=ctype)
            written += 1
    await ctx.progress(f"{card.name}: {written} artifact file(s) written under {spec.writes[0]}", 100)


async def part_bytes(part: Part, fetching: Fetcher, limit: int, what: str) -> bytes | None:
    if part.HasField("raw"):
        data = part.raw
    elif part.HasField("text"):
        data = part.text.encode("utf-8")
    elif part.HasField("data"):
        data = (json.dumps(json_format.MessageToDict(part.data), indent=2) + "\n").encode()
    elif part.HasField("url"):
        data = await download(part.url, fetching, limit, what)
    else:
        return None
    if len(data) > limit:
        raise A2AArtifactTooLarge(f"{what} is {len(data)} bytes, over max_artifact_bytes={limit}")
    return data


async def download(link: str, fetching: Fetcher, limit: int, what: str) -> bytes:
    """An artifact's URL, read up to `limit` bytes (without our bearer token: the URL may point anywhere),
    from where the policy allows (a refusal is permanent: the same URL would be refused again)."""
    try:
        with await fetching.fetch(link, limit) as body:
            return body.read()
    except TooLarge as exc:
        raise A2AArtifactTooLarge(f"{what}: {exc} (max_artifact_bytes={limit})") from exc
    except Refused as exc:
        raise A2AArtifactRefused(f"{what}: {exc}") from exc
    except FetchError as exc:
        raise A2ATaskFailed(f"{what}: {exc}") from exc


def part_filename(artifact: Artifact, part: Part, index: int) -> str:
    if part.filename:
        base = posixpath.basename(part.filename)
    else:
        stem = artifact.name or artifact.artifact_id or "artifact"
        if len(artifact.parts) > 1:
            stem = f"{stem}-{index + 1}"
        ext = ".json" if part.HasField("data") else None
        if ext is None:
            media = part.media_type or ("text/markdown" if part.HasField("text") else "")
            ext = ".md" if media == "text/markdown" else mimetypes.guess_extension(media or "") or ".txt"
        base = stem + ext
    base = _UNSAFE.sub("-", base).strip(".-") or f"artifact-{index + 1}"
    return base


register_runtime("a2a", make_handler)
