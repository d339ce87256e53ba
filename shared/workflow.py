"""The workflow file: agents and the workflows that delegate to them (YAML, validated by pydantic)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .events import ID_PATTERN
from .workspace import normalize_prefix

AgentName = Annotated[str, Field(pattern=ID_PATTERN)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AgentSpec(_Strict):
    """One agent: what it is, and which workspace prefixes it may read and write."""

    kind: Literal["python"] = Field("python", description="How the agent runs (python: a handler).")
    handler: str | None = Field(None, description="`module:function` of a python agent.")
    description: str = ""
    reads: list[str] | None = Field(None, description="Workspace prefixes it may read; None = all.")
    writes: list[str] = Field(default_factory=lambda: ["outputs/"], description="Prefixes it may write.")

    @field_validator("reads", "writes")
    @classmethod
    def _prefixes(cls, value):
        if value is None:
            return value
        try:
            return [normalize_prefix(p) for p in value]
        except ValueError as exc:
            raise ValueError(str(exc)) from exc

    @model_validator(mode="after")
    def _handler_required(self):
        if self.kind == "python":
            if not self.handler or ":" not in self.handler:
                raise ValueError("a python agent needs `handler: module:function`")
        return self

    def load_handler(self):
        module, _, name = (self.handler or "").partition(":")
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"handler {self.handler!r} cannot be imported: {exc}") from exc


class StageSpec(_Strict):
    """One step of a sequential pipeline: a fixed agent, or an intent for the router to resolve."""

    agent: AgentName | None = None
    intent: str | None = None
    instruction: str = ""

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


class SequentialWorkflow(_Strict):
    """A pipeline: each stage gets the run's inputs and the outputs of the stages before it."""

    pattern: Literal["sequential"]
    description: str = ""
    stages: list[StageSpec] = Field(min_length=1)
    max_attempts: int = Field(2, ge=1, le=20, description="Attempts per stage for retryable failures.")
    trigger: TriggerSpec | None = None

    @field_validator("stages", mode="before")
    @classmethod
    def _short_stages(cls, value):
        # `stages: [outliner, writer]` is shorthand for `[{agent: outliner}, {agent: writer}]`.
        if isinstance(value, list):
            return [{"agent": v} if isinstance(v, str) else v for v in value]
        return value


Workflow = Annotated[SequentialWorkflow, Field(discriminator="pattern")]


class WorkflowFile(_Strict):
    """The whole file: agents, workflows, and the router's static route table."""

    agents: dict[AgentName, AgentSpec] = Field(min_length=1)
    workflows: dict[AgentName, Workflow] = Field(default_factory=dict)
    routes: dict[str, AgentName] = Field(
        default_factory=dict, description="Intent label -> agent, for stages given by intent."
    )

    @model_validator(mode="after")
    def _references(self):
        for label, agent in self.routes.items():
            if agent not in self.agents:
                raise ValueError(f"routes.{label}: unknown agent {agent!r}")
        for name, wf in self.workflows.items():
            for i, stage in enumerate(wf.stages):
                if stage.agent and stage.agent not in self.agents:
                    raise ValueError(f"workflows.{name}.stages.{i}: unknown agent {stage.agent!r}")
                if stage.intent and not stage.agent and stage.intent not in self.routes:
                    raise ValueError(f"workflows.{name}.stages.{i}: intent {stage.intent!r} has no route")
        return self

    def triggers(self) -> list[tuple[str, SequentialWorkflow]]:
        return [(name, wf) for name, wf in self.workflows.items() if wf.trigger]


def parse_workflows(text: str, source: str = "<workflow file>") -> WorkflowFile:
    """Parse and validate a workflow file; errors name the file and the offending field."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with `agents:` and `workflows:`")
    try:
        return WorkflowFile.model_validate(data)
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
    return parse_workflows(text, str(path))
