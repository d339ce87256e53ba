"""The runtime of every `kind: llm` agent: prompt template + input slice -> model -> output object.

The agent never sees the run's history. Its prompt is its template rendered with what the task hands it:
the instruction, its input objects (read by reference, exact versions, each cut at `max_input_chars` with
a recorded note), the acceptance criteria and the output format. The reply is validated (JSON schema for
structured outputs, pydantic always) and written under the agent's `writes` prefixes like any agent's.

Template placeholders, `{{ name }}`:
  instruction, acceptance_criteria, output_format, agent, description,
  inputs (every input, each in an <input> block), input.NAME (one input's text), params.KEY.
A template that leaves out the instruction, the inputs or the output format gets them appended, so every
prompt carries its task and its slice.
"""

from __future__ import annotations

import importlib
import json
import posixpath
import re
import string
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel

from shared.errors import ConfigError
from shared.llm import (
    Classification,
    Endpoint,
    classification_schema,
    cut,
    parse_classification,
    parse_json,
)
from shared.settings import Settings
from shared.workflow import AgentSpec, register_runtime

from .runtime import AgentContext

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][\w.-]*)\s*\}\}")
SIMPLE = {"instruction", "acceptance_criteria", "output_format", "agent", "description", "inputs"}
ROLE_MODELS = {
    "verdict": "services.supervisor.hierarchical:Verdict",
    "plan": "services.supervisor.hierarchical:Plan",
}
OUTPUT_FIELDS = {"agent", "stem", "stems", "stage"}


@dataclass(frozen=True)
class OutputKind:
    """What the reply must be: free text, any JSON object, or a schema (built-in role or pydantic model)."""

    name: str
    model: type[BaseModel] | None = None

    @property
    def structured(self) -> bool:
        return self.name != "text"

    @property
    def default_name(self) -> str | None:
        return self.name if self.name in ("classification", "verdict", "plan") else None

    def schema(self, params: dict) -> dict | None:
        if self.name == "text":
            return None
        if self.name == "json":
            return {"type": "object"}
        if self.name == "classification" and params.get("labels"):
            return classification_schema([str(x) for x in params["labels"]])
        return self.model.model_json_schema()

    def validator(self, params: dict) -> Callable[[str], str]:
        """Validates a reply and returns what is written (normalised JSON for structured outputs)."""
        if self.name == "text":

            def text(reply: str) -> str:
                if not reply.strip():
                    raise ValueError("the reply is empty")
                return reply if reply.endswith("\n") else reply + "\n"

            return text
        if self.name == "json":

            def any_json(reply: str) -> str:
                value = parse_json(reply)
                if not isinstance(value, dict):
                    raise ValueError(f"expected a JSON object, got {type(value).__name__}")
                return json.dumps(value, indent=2, ensure_ascii=False) + "\n"

            return any_json
        if self.name == "classification" and params.get("labels"):
            labels = [str(x) for x in params["labels"]]
            return lambda reply: parse_classification(reply, labels).model_dump_json(indent=2) + "\n"
        model = self.model
        return lambda reply: model.model_validate(parse_json(reply)).model_dump_json(indent=2) + "\n"


def output_kind(spec: AgentSpec) -> OutputKind:
    if spec.output in ("text", "json"):
        return OutputKind(spec.output)
    if spec.output == "classification":
        return OutputKind("classification", Classification)
    target = ROLE_MODELS.get(spec.output, spec.output)
    module, _, name = target.partition(":")
    try:
        model = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"output {spec.output!r}: {target} cannot be imported: {exc}") from exc
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise ConfigError(f"output {spec.output!r}: {target} is not a pydantic model")
    return OutputKind(spec.output, model)


def check_template(template: str) -> set[str]:
    """The placeholders a template uses; ConfigError for an unknown one."""
    used = set(PLACEHOLDER.findall(template))
    unknown = sorted(p for p in used if p not in SIMPLE and not re.fullmatch(r"(input|params)\.[\w.-]+", p))
    if unknown:
        raise ConfigError(
            f"prompt template uses unknown placeholders {unknown}; known: {sorted(SIMPLE)}, "
            "input.NAME, params.KEY"
        )
    return used


def check_output_path(path: str) -> None:
    fields = {f.split("[", 1)[0].split(".", 1)[0] for _, f, _, _ in string.Formatter().parse(path) if f}
    unknown = sorted(fields - OUTPUT_FIELDS)
    if unknown:
        raise ConfigError(
            f"output_path {path!r}: unknown placeholders {unknown}; known: {sorted(OUTPUT_FIELDS)}"
        )


def make_handler(
    spec: AgentSpec, settings: Settings | None = None
) -> Callable[[AgentContext], Awaitable[None]]:
    """The handler the worker runs for a `kind: llm` agent (config errors surface here, at start-up); its
    endpoint is the agent's own (`settings` unused)."""
    template = spec.prompt_template()
    used = check_template(template)
    kind = output_kind(spec)
    cfg = spec.llm_config()
    if spec.output_path:
        check_output_path(spec.output_path)

    endpoint = Endpoint(cfg)  # one HTTP client for all the agent's calls

    async def run_llm_agent(ctx: AgentContext) -> Any:
        if not isinstance(ctx, AgentContext):  # the router asks a classifier agent directly
            return await classify_request(ctx, template, used, spec, endpoint)
        notes: list[str] = []
        schema = kind.schema(ctx.params)
        values = await _inputs(ctx, spec, used, notes)
        prompt = render(
            template,
            used,
            {
                "instruction": ctx.instruction,
                "acceptance_criteria": ctx.task.acceptance_criteria or "",
                "output_format": output_format(ctx.task.output_format, schema),
                "agent": ctx.agent,
                "description": spec.description,
            },
            {name: (ctx.workspace_path(ctx.inputs[name]), text) for name, text in values.items()},
            ctx.params,
        )
        for note in notes:
            await ctx.progress(f"input cut: {note}")
        host = urlsplit(cfg.base_url).netloc or cfg.base_url
        await ctx.progress(f"asking {cfg.model} at {host} ({len(prompt)} characters of prompt)", 10)
        async with endpoint.client(ctx.agent) as llm:
            try:
                content, _result = await llm.complete(
                    [{"role": "user", "content": prompt}],
                    kind.validator(ctx.params),
                    schema=schema,
                    schema_name=kind.name if kind.model is None else kind.model.__name__,
                )
            finally:
                ctx.record_usage(llm.usage.to_usage(seconds=0))
        usage = llm.usage
        path = output_path(ctx, spec, kind)
        name = spec.output_name or kind.default_name or posixpath.splitext(posixpath.basename(path))[0]
        content_type = "application/json" if kind.structured else None
        await ctx.write(path, content, name=name, content_type=content_type)
        if notes:
            # Recorded next to the output (not handed to the next stage: it is about this prompt).
            note_path = posixpath.splitext(path)[0] + ".notes.txt"
            await ctx.write(note_path, "".join(f"{n}\n" for n in notes), name="__notes__")
            ctx.outputs.pop("__notes__", None)
        await ctx.progress(
            f"{cfg.model}: {usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens "
            f"in {usage.seconds:.2f}s -> {path}",
            100,
        )

    run_llm_agent.__name__ = "run_llm_agent"
    run_llm_agent.__qualname__ = "run_llm_agent"
    return run_llm_agent


async def _inputs(ctx: AgentContext, spec: AgentSpec, used: set[str], notes: list[str]) -> dict[str, str]:
    """The text of the inputs the prompt shows (all of them for `{{ inputs }}` or when none is named)."""
    named = {p.split(".", 1)[1] for p in used if p.startswith("input.")}
    wanted = list(ctx.inputs) if ("inputs" in used or not named) else []
    wanted += [n for n in named if n not in wanted]
    values = {}
    for name in wanted:
        raw = await ctx.read(name)  # KeyError naming the inputs this task has, if absent
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            ctype = ctx.inputs[name].content_type or "unknown type"
            values[name] = f"[binary content: {len(raw)} bytes of {ctype}, not shown]"
            notes.append(f"input {name!r} is not UTF-8 text ({len(raw)} bytes): left out of the prompt")
            continue
        shown, note = cut(text, spec.max_input_chars, f"input {name!r}")
        values[name] = shown
        if note:
            notes.append(note)
    return values


def output_format(declared: str | None, schema: dict | None) -> str:
    if schema is None:
        fmt = declared or "Markdown"
        return f"Write the result as {fmt}. Reply with the result only, without any preamble."
    return "Reply with only a JSON object that matches this JSON schema:\n" + json.dumps(schema)


def render(
    template: str, used: set[str], fields: dict[str, str], inputs: dict[str, tuple[str, str]], params: dict
) -> str:
    """Fill the template; `inputs` maps a name to (workspace path, text as shown)."""
    blocks = "\n\n".join(
        f'<input name="{name}" path="{path}">\n{text}\n</input>' for name, (path, text) in inputs.items()
    )
    simple = {**fields, "inputs": blocks}

    def one(match: re.Match) -> str:
        key = match.group(1)
        if key in simple:
            return simple[key]
        group, _, name = key.partition(".")
        if group == "input":
            if name not in inputs:
                raise KeyError(f"the prompt template names input {name!r}; this task has {sorted(inputs)}")
            return inputs[name][1]
        value: Any = params.get(name, "")
        return value if isinstance(value, str) else json.dumps(value)

    text = PLACEHOLDER.sub(one, template).strip()
    named_inputs = any(p.startswith("input.") for p in used)
    extra = []
    if fields.get("instruction") and "instruction" not in used:
        extra.append(f"Instruction: {fields['instruction']}")
    if fields.get("acceptance_criteria") and "acceptance_criteria" not in used:
        extra.append(f"Acceptance criteria: {fields['acceptance_criteria']}")
    if blocks and "inputs" not in used and not named_inputs:
        extra.append(f"Inputs:\n{blocks}")
    if "output_format" not in used:
        extra.append(fields["output_format"])
    return "\n\n".join([text, *extra]).strip() + "\n"


async def classify_request(
    request: Any, template: str, used: set[str], spec: AgentSpec, endpoint: Endpoint
) -> dict:
    """The agent as the router's classifier: `request` has `text` and `labels`; returns {label, confidence}.
    A reply that does not validate, twice, raises LLMOutputError (the router then takes its fallback)."""
    labels = [str(label) for label in request.labels]
    text, _note = cut(str(request.text), spec.max_input_chars, "request")
    schema = classification_schema(labels)
    fields = {
        "instruction": f"Classify the request into exactly one of these labels: {', '.join(labels)}.",
        "acceptance_criteria": "",
        "output_format": 'Reply with only a JSON object {"label": one of the labels, "confidence": 0 to 1} '
        "that matches this JSON schema:\n" + json.dumps(schema),
        "agent": "classifier",
        "description": spec.description,
    }
    prompt = render(template, used, fields, {"request": ("request", text)}, {"labels": labels})
    async with endpoint.client("classifier") as llm:
        found, _ = await llm.complete(
            [{"role": "user", "content": prompt}],
            lambda reply: parse_classification(reply, labels),
            schema=schema,
            schema_name="classification",
        )
    return {**found.model_dump(), "spent": llm.usage.to_usage().model_dump()}


def output_path(ctx: AgentContext, spec: AgentSpec, kind: OutputKind) -> str:
    stems = {name: ctx.input_stem(name) for name in ctx.inputs}
    if spec.output_path:
        try:
            return spec.output_path.format(
                agent=ctx.agent,
                stem=next(iter(stems.values()), ctx.agent),
                stems=stems,
                stage=ctx.task.stage,
            )
        except (KeyError, IndexError) as exc:
            raise KeyError(f"output_path {spec.output_path!r}: this task has no input {exc}") from None
    return f"{spec.writes[0]}{ctx.agent}{'.json' if kind.structured else '.md'}"


register_runtime("llm", make_handler)
