"""The workflow file: agents and the workflows that delegate to them (YAML, validated by pydantic)."""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import ConfigError
from .events import ID_PATTERN
from .llm import ENV_NAME, LLMConfig, Price
from .settings import Settings
from .workspace import normalize_prefix, validate_key

# Runtimes of agent kinds other than `python`, registered by the layer that implements them
# (`services/worker/llm.py` registers `llm`), so this module does not reach up into the services.
RUNTIMES: dict[str, Callable[[AgentSpec, Settings | None], Callable]] = {}


def register_runtime(kind: str, factory: Callable[[AgentSpec, Settings | None], Callable]) -> None:
    """Make `kind: <kind>` agents loadable: `factory(spec, settings)` returns the agent's handler (the
    settings of the service that loads it; None: the environment's)."""
    RUNTIMES[kind] = factory


AgentName = Annotated[str, Field(pattern=ID_PATTERN)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RetrySpec(_Strict):
    """An agent's own retry policy; what it leaves out comes from the workflow."""

    max_attempts: int | None = Field(None, ge=1, le=20, description="Attempts per task of this agent.")
    backoff: float | None = Field(None, ge=0, description="Seconds before the 2nd attempt (doubles, jitter).")
    max_delay: float | None = Field(None, ge=0, description="Longest wait between attempts, in seconds.")
    permanent_errors: list[str] | None = Field(
        None, description="Exception names never retried for this agent (instead of the workflow's)."
    )


@dataclass(frozen=True)
class RetryPolicy:
    """The retry policy in force for one agent in one workflow."""

    max_attempts: int
    backoff: float
    max_delay: float
    permanent_errors: tuple[str, ...]

    def retries(self, retryable: bool, error: str, attempt: int) -> bool:
        """Whether a failed `attempt` gets another: the worker's verdict, overruled by
        `permanent_errors` (matched on the exception name before the first colon)."""
        name = error.split(":", 1)[0].strip()
        return retryable and name not in self.permanent_errors and attempt < self.max_attempts


class AgentSpec(_Strict):
    """One agent: what it is, and which workspace prefixes it may read and write.

    `kind: python` runs `handler`; `kind: llm` sends `prompt` (rendered with the task's instruction and
    the agent's input objects) to `model` at any OpenAI-compatible `base_url` and writes the reply;
    `kind: a2a` hands the task to the remote A2A agent at `url` and writes the artifacts it returns.
    Swapping the model (or the agent) is a config change as long as it reads and writes the same paths.
    """

    kind: Literal["python", "llm", "a2a"] = Field(
        "python",
        description="How the agent runs: python (a handler), llm (a prompt sent to a model) or a2a (a remote "
        "A2A agent).",
    )
    handler: str | None = Field(None, description="`module:function` of a python agent.")
    description: str = ""
    reads: list[str] | None = Field(None, description="Workspace prefixes it may read; None = all.")
    writes: list[str] = Field(default_factory=lambda: ["outputs/"], description="Prefixes it may write.")
    retry: RetrySpec | None = Field(
        None,
        description="This agent's retry policy (attempts, backoff, permanent errors) over the workflow's.",
    )
    time_limit: float | None = Field(
        None,
        gt=0,
        description="Most seconds one task of this agent may run; default BATON_HANDLER_TIMEOUT_S. Past it "
        "the task is stopped and fails as retryable (the workflow's retry policy decides what follows).",
    )
    concurrency: int | None = Field(
        None,
        ge=1,
        description="Most tasks of this agent one worker process runs at once (and reads at once); "
        "default BATON_BATCH. 1 spreads a fan-out over worker processes: for CPU-bound handlers.",
    )
    url: str | None = Field(
        None,
        description="kind a2a: the remote agent's base URL; its card is read from "
        "`<url>/.well-known/agent-card.json` (`${VAR}` and `${VAR:-default}` read the environment).",
    )
    max_inline_bytes: int = Field(
        256 * 1024,
        ge=0,
        description="kind a2a: input files up to this size are sent as bytes, larger ones as presigned URLs "
        "of their exact versions.",
    )
    max_artifact_bytes: int = Field(
        100 * 1024 * 1024,
        ge=1,
        description="kind a2a: the largest file part a remote agent may return (bytes or URL); a larger one "
        "fails the task (permanently) instead of filling the worker's memory.",
    )
    # kind: llm (a python agent may carry these too, and call the model itself via `llm_config()`).
    prompt: str | None = Field(
        None,
        description="Prompt template: a file (one line ending in .md, .txt, .prompt, .tmpl, .j2 or .jinja, "
        "relative to the workflow file) or the template text itself.",
    )
    model: str | None = Field(None, description="Model name as the endpoint knows it.")
    base_url: str | None = Field(
        None, description="OpenAI-compatible base URL (`${VAR}` and `${VAR:-default}` read the environment)."
    )
    api_key_env: str | None = Field(
        None,
        description="Name of the environment variable holding the API key (never the key itself); for an "
        "a2a agent, the bearer token the remote agent's card asks for.",
    )
    temperature: float = Field(0.2, ge=0, le=2)
    max_tokens: int = Field(512, ge=1, description="Most tokens the model may generate per reply.")
    timeout: float = Field(
        60.0,
        gt=0,
        description="Seconds one model request may take; for an a2a agent, to connect and to fetch the card "
        "(the remote task itself is bounded by `time_limit`).",
    )
    max_retries: int = Field(3, ge=0, le=20, description="Extra tries for timeouts, 429 and 5xx.")
    max_input_chars: int = Field(
        20_000, ge=1, description="Characters of each input that go into the prompt; longer ones are cut."
    )
    output: str = Field(
        "text",
        description="text, json, or a schema the reply must validate against: classification, verdict, plan "
        "or `module:PydanticModel`.",
    )
    output_path: str | None = Field(
        None,
        description="Where the reply is written, relative to the run's workspace and inside `writes` "
        "(placeholders {agent}, {stem}, {stems[NAME]}); default `<writes[0]><agent>.md` (.json).",
    )
    output_name: str | None = Field(None, description="Name of the output (default: from the output kind).")
    response_format: Literal["auto", "json_schema", "json_object", "none"] = Field(
        "auto", description="How a JSON schema is sent to the endpoint (auto tries what it accepts)."
    )
    price: Price | None = Field(None, description="Price per million prompt/completion tokens -> cost.")

    _base_dir: Path | None = PrivateAttr(None)

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data):
        if isinstance(data, dict) and "api_key" in data:
            raise ValueError(
                "never put an API key in the workflow file: set `api_key_env` to the name of the "
                "environment variable that holds it"
            )
        return data

    @field_validator("reads", "writes")
    @classmethod
    def _prefixes(cls, value):
        if value is None:
            return value
        try:
            return [normalize_prefix(p) for p in value]
        except ValueError as exc:
            raise ValueError(str(exc)) from exc

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value):
        if value is not None and not re.fullmatch(ENV_NAME, value):
            raise ValueError(
                "api_key_env names an environment variable (e.g. OPENAI_API_KEY); it never holds the key"
            )
        return value

    @model_validator(mode="after")
    def _handler_required(self, info: ValidationInfo):
        context = info.context if isinstance(info.context, dict) else {}
        base = context.get("base_dir")
        self._base_dir = Path(base) if base else None
        if self.kind == "python":
            if not self.handler or ":" not in self.handler:
                raise ValueError("a python agent needs `handler: module:function`")
            return self
        if self.handler:
            raise ValueError(f"an {self.kind} agent has no `handler` (it is run by the {self.kind} runtime)")
        if self.kind == "a2a":
            if not self.url:
                raise ValueError("an a2a agent needs `url`: the remote agent's base URL")
            return self
        missing = [f for f in ("prompt", "model", "base_url") if not getattr(self, f)]
        if missing:
            raise ValueError(
                f"an llm agent needs `prompt`, `model` and `base_url` (missing: {', '.join(missing)})"
            )
        if self.output not in OUTPUT_KINDS and not re.fullmatch(r"[\w.]+:\w+", self.output):
            raise ValueError(
                f"output {self.output!r}: expected one of {sorted(OUTPUT_KINDS)} or module:Model"
            )
        if self.output_path is not None:
            try:
                validate_key(self.output_path)
            except ValueError as exc:
                raise ValueError(f"output_path: {exc}") from exc
            fixed = self.output_path.split("{", 1)[0]
            if "{" not in self.output_path.split("/", 1)[0] and not any(
                fixed.startswith(p) or p.startswith(fixed) for p in self.writes
            ):
                raise ValueError(f"output_path {self.output_path!r} is outside `writes` {self.writes}")
        if self.prompt_file() is not None and not self.prompt_file().is_file():
            raise ValueError(f"prompt file {self.prompt!r} not found at {self.prompt_file()}")
        return self

    def prompt_file(self) -> Path | None:
        """The prompt template's file, when `prompt` names one (relative to the workflow file's folder)."""
        prompt = (self.prompt or "").strip()
        if not prompt or "\n" in prompt or "{{" in prompt or not prompt.endswith(PROMPT_SUFFIXES):
            return None
        path = Path(prompt).expanduser()
        return path if path.is_absolute() else (self._base_dir or Path.cwd()) / path

    def prompt_template(self) -> str:
        """The prompt template's text (read from its file, or inline)."""
        path = self.prompt_file()
        if path is None:
            return self.prompt or ""
        try:
            return path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"prompt file {path} cannot be read: {exc}") from exc

    def llm_config(self) -> LLMConfig:
        """How to call this agent's model; `${VAR}` in `base_url` and `model` is read from the environment."""
        if not self.model or not self.base_url:
            raise ConfigError("this agent has no `model` and `base_url`")
        return LLMConfig(
            model=expand_env(self.model, "model"),
            base_url=expand_env(self.base_url, "base_url"),
            api_key_env=self.api_key_env,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            timeout=self.timeout,
            max_retries=self.max_retries,
            response_format=self.response_format,
            price=self.price,
        )

    def load_handler(self, settings: Settings | None = None):
        """The agent's handler; a runtime's (`llm`, `a2a`) made with the loading service's `settings`."""
        if self.kind != "python":
            factory = RUNTIMES.get(self.kind)
            if factory is None:
                raise ConfigError(
                    f"agent kind {self.kind!r} has no runtime here; registered: {sorted(RUNTIMES)}"
                )
            return factory(self, settings)
        module, _, name = (self.handler or "").partition(":")
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"handler {self.handler!r} cannot be imported: {exc}") from exc


OUTPUT_KINDS = {"text", "json", "classification", "verdict", "plan"}
PROMPT_SUFFIXES = (".md", ".txt", ".prompt", ".tmpl", ".j2", ".jinja")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: str, what: str = "value") -> str:
    """Replace `${VAR}` and `${VAR:-default}` with the environment's values."""

    def one(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        found = os.environ.get(name)
        if found:
            return found
        if default is not None:
            return default
        raise ConfigError(f"{what} {value!r} needs the environment variable {name}, which is not set")

    return _ENV_REF.sub(one, value)


HUMAN = "human"  # the reserved agent name for a person: the run pauses until their file lands


class StageSpec(_Strict):
    """One step of a sequential pipeline: a fixed agent (or `human`), or an intent for the router."""

    agent: AgentName | None = None
    intent: str | None = None
    instruction: str = ""
    on_reject: str = Field(
        "fail", description="For `agent: human`: `fail`, or the agent of an earlier stage to go back to."
    )

    @model_validator(mode="after")
    def _one_of(self):
        if not self.agent and not self.intent:
            raise ValueError("a stage needs an `agent` or an `intent`")
        return self


class TriggerSpec(_Strict):
    """Start a run when a file lands under `prefix` (outside `runs/`)."""

    prefix: str = Field(description="Bucket prefix to watch, e.g. `briefs/`.")
    input: str = Field("input", description="Name under which the landed file is handed to the run.")
    publish_to: str | None = Field(
        None, description="Copy the run's final outputs here, named after the landed file."
    )

    @field_validator("prefix", "publish_to")
    @classmethod
    def _prefix(cls, value):
        if value is None:
            return value
        value = normalize_prefix(value)
        if value.startswith("runs/"):
            raise ValueError("trigger prefixes must be outside `runs/` (that is where runs write)")
        return value


class _WorkflowBase(_Strict):
    description: str = ""
    max_attempts: int = Field(2, ge=1, le=20, description="Attempts per task for retryable failures.")
    retry_backoff: float = Field(
        0.5, ge=0, description="Seconds before the 2nd attempt; doubles each attempt, with jitter."
    )
    retry_max_delay: float = Field(30.0, ge=0, description="Longest wait between attempts, in seconds.")
    task_timeout: float | None = Field(
        None, gt=0, description="Seconds a task may run; past that it is re-assigned as a new attempt."
    )
    permanent_errors: list[str] = Field(
        default_factory=list, description="Exception names never retried, on top of the worker's own rule."
    )
    trigger: TriggerSpec | None = None

    def agents_used(self) -> list[str]:
        raise NotImplementedError

    def retry_policy(self, agent: AgentSpec | None) -> RetryPolicy:
        """The policy for tasks of `agent` in this workflow: the agent's `retry` over the workflow's."""
        own = agent.retry if agent is not None and agent.retry is not None else RetrySpec()
        pick = lambda mine, default: default if mine is None else mine  # noqa: E731
        return RetryPolicy(
            max_attempts=pick(own.max_attempts, self.max_attempts),
            backoff=pick(own.backoff, self.retry_backoff),
            max_delay=pick(own.max_delay, self.retry_max_delay),
            permanent_errors=tuple(pick(own.permanent_errors, self.permanent_errors)),
        )


class SequentialWorkflow(_WorkflowBase):
    """A pipeline: each stage gets the run's inputs and the outputs of the stages before it."""

    pattern: Literal["sequential"]
    stages: list[StageSpec] = Field(min_length=1)

    @field_validator("stages", mode="before")
    @classmethod
    def _short_stages(cls, value):
        # `stages: [outliner, writer]` is shorthand for `[{agent: outliner}, {agent: writer}]`.
        if isinstance(value, list):
            return [{"agent": v} if isinstance(v, str) else v for v in value]
        return value

    def agents_used(self) -> list[str]:
        return [s.agent for s in self.stages if s.agent]


class RuleSpec(_Strict):
    """A declarative routing rule: any keyword (case-insensitive) or the regular expression matches."""

    label: str
    keywords: list[str] = Field(default_factory=list)
    pattern: str | None = Field(None, description="A regular expression (Python syntax).")
    confidence: float = Field(1.0, ge=0, le=1)

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value):
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"pattern {value!r} is not a valid regular expression: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _something(self):
        if not self.keywords and not self.pattern:
            raise ValueError(f"rule for {self.label!r} needs `keywords` or a `pattern`")
        return self


class RouterWorkflow(_WorkflowBase):
    """Send a request to the specialist for its intent; below `min_confidence`, to the fallback."""

    pattern: Literal["router"]
    routes: dict[str, AgentName] = Field(min_length=1, description="Label -> agent (or `human`).")
    fallback: AgentName = Field(description="Agent (or `human`) for unknown or unsure requests.")
    min_confidence: float = Field(0.6, ge=0, le=1)
    rules: list[RuleSpec] = Field(default_factory=list, description="Tried first, in order.")
    classifier: AgentName | None = Field(
        None, description="Agent whose handler returns {label, confidence}; tried when no rule matches."
    )
    input: str = Field("request", description="Input holding the request text (or param `text`).")

    def agents_used(self) -> list[str]:
        return [*self.routes.values(), self.fallback, *([self.classifier] if self.classifier else [])]


class HierarchicalWorkflow(_WorkflowBase):
    """A manager plans subtasks, workers do them (in parallel where independent), a reviewer checks
    each, and an aggregator integrates the accepted results."""

    pattern: Literal["hierarchical"]
    manager: AgentName = Field(description="Planner agent: writes a plan object (output `plan`).")
    workers: list[AgentName] = Field(min_length=1, description="Agents the plan may assign.")
    reviewer: AgentName | None = Field(None, description="Writes a verdict object (output `verdict`).")
    aggregator: AgentName | None = Field(None, description="Integrates accepted outputs into the result.")
    alternates: dict[AgentName, list[AgentName]] = Field(
        default_factory=dict, description="Who may take over a subtask after `max_attempts` rejections."
    )
    max_subtasks: int = Field(
        50, ge=1, le=100_000, description="Most subtasks a plan may have (a larger plan fails the run)."
    )

    def agents_used(self) -> list[str]:
        extra = [a for alts in self.alternates.values() for a in alts]
        return [
            self.manager,
            *self.workers,
            *([self.reviewer] if self.reviewer else []),
            *([self.aggregator] if self.aggregator else []),
            *extra,
        ]


class BidirectionalWorkflow(_WorkflowBase):
    """Participants take turns on one shared document; each new version gives the next one the turn."""

    pattern: Literal["bidirectional"]
    participants: list[AgentName] = Field(min_length=2)
    document: str = Field(description="The shared document, relative to the run's workspace.")
    input: str = Field("document", description="Input whose content seeds the document.")
    max_rounds: int = Field(6, ge=1, le=100, description="Turns at most, in all.")
    approval: str = Field(
        "approvals/", description="Prefix where a participant's approval file ends the run."
    )

    @field_validator("document")
    @classmethod
    def _doc(cls, value):
        validate_key(value)
        return value

    def agents_used(self) -> list[str]:
        return list(self.participants)


Workflow = Annotated[
    SequentialWorkflow | RouterWorkflow | HierarchicalWorkflow | BidirectionalWorkflow,
    Field(discriminator="pattern"),
]


class WorkflowFile(_Strict):
    """The whole file: agents, workflows, and the router's static route table."""

    agents: dict[AgentName, AgentSpec] = Field(min_length=1)
    workflows: dict[AgentName, Workflow] = Field(default_factory=dict)
    routes: dict[str, AgentName] = Field(
        default_factory=dict, description="Intent label -> agent, for stages given by intent."
    )

    @model_validator(mode="after")
    def _references(self):
        if HUMAN in self.agents:
            raise ValueError(f"agents.{HUMAN}: the name is reserved for a person")
        known = set(self.agents) | {HUMAN}
        for label, agent in self.routes.items():
            if agent not in known:
                raise ValueError(f"routes.{label}: unknown agent {agent!r}")
        for name, wf in self.workflows.items():
            if isinstance(wf, SequentialWorkflow):
                for i, stage in enumerate(wf.stages):
                    if stage.agent and stage.agent not in known:
                        raise ValueError(f"workflows.{name}.stages.{i}: unknown agent {stage.agent!r}")
                    if stage.intent and not stage.agent and stage.intent not in self.routes:
                        raise ValueError(f"workflows.{name}.stages.{i}: intent {stage.intent!r} has no route")
                    earlier = [s.agent for s in wf.stages[:i]]
                    if stage.on_reject != "fail" and stage.on_reject not in earlier:
                        raise ValueError(
                            f"workflows.{name}.stages.{i}.on_reject: {stage.on_reject!r} is "
                            "not `fail` or the agent of an earlier stage"
                        )
                continue
            for agent in wf.agents_used():
                if agent not in known:
                    raise ValueError(f"workflows.{name}: unknown agent {agent!r}")
            if isinstance(wf, HierarchicalWorkflow | BidirectionalWorkflow):
                people = [a for a in wf.agents_used() if a == HUMAN]
                if people:
                    raise ValueError(f"workflows.{name}: `human` cannot take part in a {wf.pattern} workflow")
        return self

    def triggers(self) -> list[tuple[str, _WorkflowBase]]:
        return [(name, wf) for name, wf in self.workflows.items() if wf.trigger]


def parse_workflows(text: str, source: str = "<workflow file>", base_dir: Path | None = None) -> WorkflowFile:
    """Parse and validate a workflow file; errors name the file and the offending field.
    `base_dir` is where relative prompt files are found (the workflow file's folder)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with `agents:` and `workflows:`")
    try:
        return WorkflowFile.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after"))
            lines.append(f"  {loc}: {err['msg']}")
        raise ConfigError(f"{source}: invalid workflow file:\n" + "\n".join(lines)) from exc


def load_workflows(path: str | Path) -> WorkflowFile:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"workflow file {path} cannot be read: {exc}") from exc
    return parse_workflows(text, str(path), path.resolve().parent)
