"""A small OpenAI-compatible chat client: any endpoint that speaks `POST {base_url}/chat/completions`.

OpenAI, Ollama (`/v1`), vLLM, llama.cpp's server and llama-cpp-python's server all do. What it adds to a
plain HTTP call:

- transient faults (timeouts, connection errors, 429 and 5xx) are retried with exponential backoff and
  jitter (honouring `Retry-After`); once the retries are spent the error is retryable for the task;
- any other 4xx fails at once with the endpoint's own message (401/403 name the API-key variable, never
  the key);
- structured replies: a JSON schema goes out as `response_format` (constrained decoding where the endpoint
  supports it) and every reply is validated with pydantic; a reply that does not validate is sent back once
  with the validation error, and a second bad reply is a clear, permanent error;
- usage: prompt and completion tokens, seconds, and a cost when a price is configured.

The API key is read from the environment variable the config names (`api_key_env`), never from a file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from shared.classification import Classification as BaseClassification

from . import metrics, telemetry
from .errors import BatonError, PermanentError, RetryableError
from .events import Usage
from .fetch import KEEPALIVE_CONNECTIONS, KEEPALIVE_S

ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


# --- configuration -----------------------------------------------------------------------------------


class Price(BaseModel):
    """What a model costs, per million tokens (any currency: costs are reported in the same one)."""

    model_config = ConfigDict(extra="forbid")

    prompt: float = Field(0.0, ge=0, description="Price of one million prompt (input) tokens.")
    completion: float = Field(0.0, ge=0, description="Price of one million completion (output) tokens.")

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.prompt + completion_tokens * self.completion) / 1_000_000


class LLMConfig(BaseModel):
    """How to reach one model. Built from a `kind: llm` agent (`AgentSpec.llm_config()`) or by hand."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Model name as the endpoint knows it.")
    base_url: str = Field(description="OpenAI-compatible base URL, e.g. https://api.openai.com/v1.")
    api_key_env: str | None = Field(
        None, pattern=ENV_NAME, description="Name of the environment variable holding the API key."
    )
    temperature: float = Field(0.2, ge=0, le=2)
    max_tokens: int = Field(512, ge=1, description="Most tokens the model may generate per reply.")
    timeout: float = Field(60.0, gt=0, description="Seconds one request may take, in all.")
    max_retries: int = Field(3, ge=0, le=20, description="Extra tries for timeouts, 429 and 5xx.")
    backoff: float = Field(0.5, ge=0, description="First backoff in seconds; doubles on every retry.")
    max_backoff: float = Field(20.0, ge=0, description="Longest single wait between tries.")
    response_format: Literal["auto", "json_schema", "json_object", "none"] = Field(
        "auto",
        description="How a JSON schema is sent: `json_schema` (OpenAI structured outputs), `json_object` "
        "(JSON mode plus `schema`, as llama.cpp servers take it), `none` (only in the prompt), or `auto` "
        "(json_schema, falling back to the prompt when the endpoint refuses it).",
    )
    price: Price | None = Field(None, description="Turns tokens into cost.")

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        value = os.environ.get(self.api_key_env)
        if not value:
            raise LLMConfigError(
                f"the API key for {self.model} at {self.base_url} is read from the environment variable "
                f"{self.api_key_env}, which is not set"
            )
        return value


# --- errors ------------------------------------------------------------------------------------------


class LLMError(BatonError):
    """Something went wrong talking to a model endpoint."""


class LLMConfigError(LLMError, PermanentError):
    """The model cannot be called as configured (e.g. the API key variable is not set)."""


class LLMRequestError(LLMError, PermanentError):
    """The endpoint refused the request (4xx other than 429): retrying the same request cannot help."""

    def __init__(self, message: str, status: int, endpoint_message: str) -> None:
        super().__init__(message)
        self.status = status
        self.endpoint_message = endpoint_message


class LLMAuthError(LLMRequestError):
    """401/403: the API key is missing, wrong or not allowed to use this model."""


class FormatRefusedError(LLMRequestError):
    """The endpoint does not accept this way of asking for structured output (`response_format`)."""


class LLMUnavailableError(LLMError, RetryableError):
    """Timeouts, connection errors, 429 or 5xx, still failing after every retry: try again later."""


class LLMOutputError(LLMError, PermanentError):
    """The model's reply was unusable (did not validate) even after being told what was wrong."""


# --- results -----------------------------------------------------------------------------------------


@dataclass
class LLMUsage:
    """Tokens and time spent on model calls (summed over calls and retries)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    cost: float | None = None
    calls: int = 0

    def add(self, other: LLMUsage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.seconds += other.seconds
        self.calls += other.calls
        if other.cost is not None:
            self.cost = (self.cost or 0.0) + other.cost

    def since(self, before: LLMUsage) -> LLMUsage:
        """What was spent after `before` (a copy of this object taken earlier)."""
        cost = None if self.cost is None else self.cost - (before.cost or 0.0)
        return LLMUsage(
            self.prompt_tokens - before.prompt_tokens,
            self.completion_tokens - before.completion_tokens,
            self.seconds - before.seconds,
            cost,
            self.calls - before.calls,
        )

    def to_usage(self, seconds: float | None = None) -> Usage:
        """As the event model (`seconds` defaults to the time spent in model calls)."""
        return Usage(
            seconds=round(self.seconds if seconds is None else seconds, 6),
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cost=None if self.cost is None else round(self.cost, 8),
        )


@dataclass
class ChatResult:
    text: str
    usage: LLMUsage
    model: str | None = None
    finish_reason: str | None = None


class Classification(BaseClassification):
    """What a model classifier answers (the router's contract, plus what the call cost)."""

    model_config = ConfigDict(extra="forbid")

    label: str = Field(min_length=1)

    _usage: LLMUsage | None = PrivateAttr(None)

    @property
    def usage(self) -> LLMUsage | None:
        """Tokens and seconds the classification cost (set by `classify`)."""
        return self._usage


Validator = Callable[[str], Any]


# --- the client --------------------------------------------------------------------------------------


def http_client(cfg: LLMConfig, transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """An HTTP client for `cfg`'s endpoint. Its connections are not capped (httpx's default pool allows 100
    at once, and a call holds its connection until the model has answered): what uses it bounds them (a
    worker runs at most an agent's `concurrency` tasks at once). Idle ones are kept a moment, for the next
    call."""
    return httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(cfg.timeout),
        headers={"Accept": "application/json", "User-Agent": "baton-llm/0.1"},
        limits=httpx.Limits(
            max_connections=None,
            max_keepalive_connections=KEEPALIVE_CONNECTIONS,
            keepalive_expiry=KEEPALIVE_S,
        ),
    )


class LLMClient:
    """One endpoint and model. Use as `async with LLMClient(cfg) as llm:`; `usage` sums every call. With
    `http` (an `Endpoint`'s client, shared by many) its connections outlive it."""

    def __init__(
        self,
        cfg: LLMConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
        agent: str = "",
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.cfg = cfg
        self.agent = agent  # labels its spans and metrics
        self.usage = LLMUsage()
        self._sleep = sleep
        self._jitter = jitter
        self._owns_http = http is None
        self._http = http or http_client(cfg, transport)

    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    # -- one request, with retries for transient faults

    def _delay(self, retry: int, retry_after: float | None) -> float:
        base = min(self.cfg.max_backoff, self.cfg.backoff * (2**retry))
        delay = base / 2 + base / 2 * self._jitter()  # "equal jitter": never zero, never in lockstep
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.cfg.max_backoff))
        return delay

    async def _post(self, body: dict) -> tuple[dict, LLMUsage]:
        headers = {}
        key = self.cfg.api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        usage = LLMUsage()
        last = ""
        for attempt in range(self.cfg.max_retries + 1):
            retry_after = None
            started = time.perf_counter()
            try:
                async with asyncio.timeout(self.cfg.timeout):
                    response = await self._http.post(self.cfg.url, json=body, headers=headers)
            except (TimeoutError, httpx.TimeoutException):
                last = f"no answer within {self.cfg.timeout:g}s"
            except httpx.TransportError as exc:
                last = f"cannot connect: {type(exc).__name__}: {exc}"
            else:
                status = response.status_code
                if status < 400:
                    usage.seconds += time.perf_counter() - started
                    return self._json(response), usage
                message = endpoint_message(response)
                if "response_format" in body and status in (400, 422, 500) and _FORMAT_ERROR.search(message):
                    # Some servers (llama-cpp-python) answer 500 to a request they cannot validate.
                    kind = body["response_format"].get("type")
                    raise FormatRefusedError(
                        f"model endpoint {self.cfg.url} does not accept response_format {kind!r} "
                        f"({status} {response.reason_phrase}): {message}",
                        status,
                        message,
                    )
                if status == 429 or status >= 500:
                    last = f"{status} {response.reason_phrase}: {message}"
                    retry_after = _retry_after(response)
                elif status in (401, 403):
                    where = (
                        f"the key comes from the environment variable {self.cfg.api_key_env}"
                        if self.cfg.api_key_env
                        else "no API key is configured (set `api_key_env` to the variable that holds it)"
                    )
                    raise LLMAuthError(
                        f"model endpoint {self.cfg.url} refused the credentials "
                        f"({status} {response.reason_phrase}): {message}; {where}",
                        status,
                        message,
                    )
                else:
                    raise LLMRequestError(
                        f"model endpoint {self.cfg.url} refused the request for {self.cfg.model} "
                        f"({status} {response.reason_phrase}): {message}",
                        status,
                        message,
                    )
            usage.seconds += time.perf_counter() - started
            if attempt < self.cfg.max_retries:
                await self._sleep(self._delay(attempt, retry_after))
        self.usage.seconds += usage.seconds
        raise LLMUnavailableError(
            f"model endpoint {self.cfg.url} ({self.cfg.model}) still failing after "
            f"{self.cfg.max_retries + 1} tries: {last}"
        )

    def _json(self, response: httpx.Response) -> dict:
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict) or not data.get("choices"):
            raise LLMRequestError(
                f"model endpoint {self.cfg.url} answered {response.status_code} without chat choices "
                f"(is base_url an OpenAI-compatible /v1 URL?): {response.text[:300]!r}",
                response.status_code,
                response.text[:300],
            )
        return data

    # -- chat

    async def chat(
        self,
        messages: list[dict],
        *,
        schema: dict | None = None,
        schema_name: str = "reply",
        max_tokens: int | None = None,
    ) -> ChatResult:
        """One chat completion. With `schema`, the reply is asked for as JSON matching it."""
        body: dict[str, Any] = {
            "model": self.cfg.model,
            "messages": messages,
            "temperature": self.cfg.temperature,
            "max_tokens": max_tokens or self.cfg.max_tokens,
        }
        # One span per call, with OpenTelemetry's GenAI semantic conventions (an OpenAI-compatible API).
        with telemetry.span(
            f"chat {self.cfg.model}",
            kind="client",
            gen_ai__operation__name="chat",
            gen_ai__system="openai",
            gen_ai__request__model=self.cfg.model,
            gen_ai__request__temperature=self.cfg.temperature,
            gen_ai__request__max_tokens=body["max_tokens"],
            server__address=urlsplit(self.cfg.base_url).hostname,
            server__port=urlsplit(self.cfg.base_url).port,
            baton__agent=self.agent or None,
        ) as span:
            while True:
                mode = self._mode(schema)
                if mode != "none":
                    body["response_format"] = _response_format(mode, schema, schema_name)
                try:
                    data, usage = await self._post(body)
                    break
                except FormatRefusedError:
                    # `auto`: an endpoint that refuses one way of sending a schema gets the next one
                    # (json_schema -> json_object + schema -> only in the prompt). Remembered per base_url.
                    if self.cfg.response_format != "auto":
                        raise
                    _FORMAT_FALLBACK[self.cfg.base_url] = _NEXT_FORMAT[mode]
                    body.pop("response_format", None)
            choice = data["choices"][0]
            message = choice.get("message") or {}
            text = message.get("content") or choice.get("text") or ""
            reported = data.get("usage") or {}
            usage.prompt_tokens = int(reported.get("prompt_tokens") or 0)
            usage.completion_tokens = int(reported.get("completion_tokens") or 0)
            usage.calls = 1
            if self.cfg.price is not None:
                usage.cost = self.cfg.price.cost(usage.prompt_tokens, usage.completion_tokens)
            self.usage.add(usage)
            telemetry.set_attributes(
                span,
                gen_ai__response__model=data.get("model"),
                gen_ai__response__id=data.get("id"),
                gen_ai__response__finish_reasons=[choice.get("finish_reason") or "unknown"],
                gen_ai__usage__input_tokens=usage.prompt_tokens,
                gen_ai__usage__output_tokens=usage.completion_tokens,
                gen_ai__usage__cost=usage.cost,
            )
        metrics.model_usage(
            self.agent or "unknown", self.cfg.model, usage.prompt_tokens, usage.completion_tokens, usage.cost
        )
        return ChatResult(text, usage, data.get("model"), choice.get("finish_reason"))

    def _mode(self, schema: dict | None) -> str:
        if schema is None:
            return "none"
        if self.cfg.response_format != "auto":
            return self.cfg.response_format
        return _FORMAT_FALLBACK.get(self.cfg.base_url, "json_schema")

    async def complete(
        self,
        messages: list[dict],
        validate: Validator,
        *,
        schema: dict | None = None,
        schema_name: str = "reply",
        retries: int = 1,
    ) -> tuple[Any, ChatResult]:
        """Chat, then `validate(text)`; on a ValueError the model is told what was wrong and asked again
        (`retries` times). Returns (validated value, last result); raises LLMOutputError after that."""
        messages = list(messages)
        for attempt in range(retries + 1):
            result = await self.chat(messages, schema=schema, schema_name=schema_name)
            try:
                return validate(result.text), result
            except (ValueError, ValidationError) as exc:
                error = _short_error(exc)
            if attempt < retries:
                hint = f"\n\nReply with only a JSON object matching this JSON schema:\n{json.dumps(schema)}"
                again = f"Your reply was not valid: {error}." + (hint if schema else " Try again.")
                messages += [
                    {"role": "assistant", "content": result.text},
                    {"role": "user", "content": again},
                ]
        raise LLMOutputError(
            f"{self.cfg.model} at {self.cfg.base_url}: the reply did not validate as {schema_name} after "
            f"{retries + 1} tries: {error}; the reply began {result.text[:200]!r}"
        )

    async def structured(
        self, messages: list[dict], model: type[BaseModel], *, name: str | None = None, retries: int = 1
    ) -> tuple[BaseModel, ChatResult]:
        """A reply validated as `model` (a pydantic model), asked for with its JSON schema."""
        schema = model.model_json_schema()
        return await self.complete(
            messages,
            lambda text: model.model_validate(parse_json(text)),
            schema=schema,
            schema_name=name or model.__name__,
            retries=retries,
        )


# --- classification ------------------------------------------------------------------------------


CONFIDENCE_STEPS = [i / 20 for i in range(21)]  # 0.0, 0.05, ... 1.0


def classification_schema(labels: Sequence[str]) -> dict:
    """The JSON schema a classifier's reply is constrained to. The confidence is asked for in steps of
    0.05 because grammar-based decoders (llama.cpp) ignore number bounds but honour an enum; the reply is
    validated as any number from 0 to 1."""
    return {
        "type": "object",
        "properties": {
            "label": {"type": "string", "enum": list(labels)},
            "confidence": {"type": "number", "enum": CONFIDENCE_STEPS},
        },
        "required": ["label", "confidence"],
        "additionalProperties": False,
    }


def parse_classification(text: str, labels: Sequence[str]) -> Classification:
    """Validate a classifier reply; the label must be one of `labels` (matched case-insensitively)."""
    result = Classification.model_validate(parse_json(text))
    canonical = {label.casefold(): label for label in labels}
    if result.label.casefold() not in canonical:
        raise ValueError(f"label {result.label!r} is not one of {list(labels)}")
    return result.model_copy(update={"label": canonical[result.label.casefold()]})


CLASSIFY_PROMPT = """Classify the request below into exactly one of these labels: {labels}.
{instruction}
Answer with a JSON object: {{"label": one of the labels, "confidence": a number from 0 to 1}}.

Request:
{text}"""


async def classify(
    client_cfg: LLMConfig,
    text: str,
    labels: Sequence[str],
    *,
    instruction: str = "",
    max_input_chars: int = 8000,
    client: LLMClient | None = None,
) -> Classification:
    """Ask the model for `{label, confidence}` with `label` one of `labels` (JSON-schema constrained where
    the endpoint supports it, validated with pydantic always). A malformed reply is retried once with the
    validation error; a second one raises LLMOutputError, so the caller can take its fallback route.
    Endpoint errors raise as in `LLMClient` (LLMRequestError, LLMAuthError, LLMUnavailableError)."""
    labels = list(dict.fromkeys(labels))
    if not labels:
        raise ValueError("classify needs at least one label")
    shown, _note = cut(text, max_input_chars, "request")
    prompt = CLASSIFY_PROMPT.format(labels=", ".join(labels), instruction=instruction.strip(), text=shown)
    own = client is None
    llm = client or LLMClient(client_cfg)
    before = dataclasses.replace(llm.usage)
    try:
        result, _ = await llm.complete(
            [{"role": "user", "content": prompt}],
            lambda reply: parse_classification(reply, labels),
            schema=classification_schema(labels),
            schema_name="classification",
        )
    finally:
        if own:
            await llm.aclose()
    spent = llm.usage.since(before)
    result._usage = spent
    return result


class Endpoint:
    """An agent's endpoint, for all of its calls: one HTTP client, made on the first call (an HTTP client's
    TLS context alone costs ~20 ms of CPU; a client a call also meant a connection a call)."""

    def __init__(self, cfg: LLMConfig) -> None:
        self.cfg = cfg
        self._http: tuple[asyncio.AbstractEventLoop, httpx.AsyncClient] | None = None

    def client(self, agent: str = "") -> LLMClient:
        """A client for one task's calls (its own `usage`) over the endpoint's connections."""
        loop = asyncio.get_running_loop()
        if self._http is None or self._http[0] is not loop:  # (connections belong to one event loop)
            self._http = (loop, http_client(self.cfg))
        return LLMClient(self.cfg, agent=agent, http=self._http[1])


# --- helpers -----------------------------------------------------------------------------------------


def cut(text: str, limit: int, what: str) -> tuple[str, str | None]:
    """At most `limit` characters of `text`, with a marker in the text and a note when it was cut."""
    if len(text) <= limit:
        return text, None
    note = f"{what}: {len(text)} characters, cut to the first {limit} (max_input_chars)"
    return text[:limit] + f"\n[... cut here: {len(text) - limit} more characters not shown ...]", note


_FENCE = re.compile(r"^\s*```[A-Za-z0-9_-]*\s*\n(.*?)\n?```\s*$", re.S)


def parse_json(text: str) -> Any:
    """The JSON value in a reply: bare, or in one ``` fence (models like to add one). ValueError if not."""
    candidate = text.strip()
    fenced = _FENCE.match(candidate)
    if fenced:
        candidate = fenced.group(1).strip()
    try:
        # strict=False: raw newlines/tabs inside strings (some grammar-constrained decoders emit them)
        return json.loads(candidate, strict=False)
    except json.JSONDecodeError as exc:
        if not candidate:
            raise ValueError("the reply is empty, expected a JSON object") from None
        raise ValueError(f"the reply is not JSON ({exc.msg} at char {exc.pos})") from None


def endpoint_message(response: httpx.Response) -> str:
    """The error message an OpenAI-compatible endpoint put in its body (several shapes), else the text."""
    try:
        data = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:500]
        for value in (err, data.get("detail"), data.get("message")):
            if value:
                return (value if isinstance(value, str) else json.dumps(value))[:500]
    return json.dumps(data)[:500]


def is_strict_schema(schema: dict) -> bool:
    """Whether OpenAI's strict mode accepts `schema`: every object closed, with every property required."""

    def ok(node: Any) -> bool:
        if isinstance(node, dict):
            if node.get("type") == "object" or "properties" in node:
                props = set(node.get("properties", {}))
                if node.get("additionalProperties") is not False or set(node.get("required", [])) != props:
                    return False
            return all(ok(v) for v in node.values())
        if isinstance(node, list):
            return all(ok(v) for v in node)
        return True

    return ok(schema)


_FORMAT_FALLBACK: dict[str, str] = {}  # base_url -> the way of sending a schema it accepted
_NEXT_FORMAT = {"json_schema": "json_object", "json_object": "none"}
_FORMAT_ERROR = re.compile(r"response_format|json_schema", re.I)


def _response_format(mode: str, schema: dict | None, name: str) -> dict:
    if mode == "json_object":
        return {"type": "json_object", "schema": schema}
    return {
        "type": "json_schema",
        "json_schema": {"name": _schema_name(name), "schema": schema, "strict": is_strict_schema(schema)},
    }


def _schema_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64] or "reply"


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return None


def _short_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors()[:5]:
            loc = ".".join(str(p) for p in err["loc"]) or "(root)"
            parts.append(f"{loc}: {err['msg']}")
        return "; ".join(parts)
    return str(exc)
