"""The OpenAI-compatible client against a scripted endpoint on a real socket: retries, errors, structured
output, usage. (The same client against a real model: tests/e2e/test_llm.py.)"""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel

from shared.errors import PermanentError, RetryableError
from shared.events import Usage
from shared.llm import (
    Endpoint,
    LLMAuthError,
    LLMClient,
    LLMConfig,
    LLMConfigError,
    LLMOutputError,
    LLMRequestError,
    LLMUnavailableError,
    Price,
    classify,
    cut,
    is_strict_schema,
    parse_json,
)
from tests.fake_llm import FakeEndpoint, Step, error, reply


@pytest.fixture
async def fake():
    async with FakeEndpoint() as endpoint:
        yield endpoint


class Delays:
    """Records the backoff waits instead of sleeping them (the requests themselves are real)."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def config(base_url: str, **kw) -> LLMConfig:
    return LLMConfig(model="fake-model", base_url=base_url, **{"timeout": 5, **kw})


class Verdict(BaseModel):
    accepted: bool
    feedback: str = ""


async def test_a_reply_is_returned_with_usage_and_cost(fake):
    url = fake.script("ok", [reply("hello", prompt_tokens=1000, completion_tokens=500)])
    cfg = config(url, price=Price(prompt=2.0, completion=8.0))
    async with LLMClient(cfg) as llm:
        result = await llm.chat([{"role": "user", "content": "hi"}])
    assert result.text == "hello"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (1000, 500)
    assert result.usage.cost == pytest.approx((1000 * 2.0 + 500 * 8.0) / 1e6)
    assert llm.usage.seconds > 0 and llm.usage.calls == 1
    sent = fake.requests["ok"][0]["json"]
    assert sent["model"] == "fake-model" and sent["messages"] == [{"role": "user", "content": "hi"}]
    assert "response_format" not in sent
    usage = llm.usage.to_usage(seconds=3)
    assert (usage.seconds, usage.prompt_tokens, usage.completion_tokens) == (3, 1000, 500)


async def test_an_endpoint_that_times_out_then_answers_is_retried(fake):
    url = fake.script("slow", [Step(delay=1.0, body={}), reply("late but fine")])
    delays = Delays()
    async with LLMClient(config(url, timeout=0.2, backoff=0.1), sleep=delays) as llm:
        result = await llm.chat([{"role": "user", "content": "hi"}])
    assert result.text == "late but fine"
    assert len(fake.requests["slow"]) == 2
    assert len(delays.waits) == 1 and 0.05 <= delays.waits[0] <= 0.1


async def test_429_and_5xx_are_retried_with_growing_backoff_and_retry_after(fake):
    url = fake.script(
        "busy",
        [
            error(429, "rate limited", **{"Retry-After": "0.7"}),
            error(503, "overloaded"),
            error(500, "oops"),
            reply("finally"),
        ],
    )
    delays = Delays()
    cfg = config(url, backoff=0.1, max_backoff=10, max_retries=3)
    async with LLMClient(cfg, sleep=delays, jitter=lambda: 1.0) as llm:
        result = await llm.chat([{"role": "user", "content": "hi"}])
    assert result.text == "finally"
    assert len(fake.requests["busy"]) == 4
    # Retry-After wins over the first backoff (0.1); then 0.2, 0.4: doubling, with jitter at its top.
    assert delays.waits == pytest.approx([0.7, 0.2, 0.4])


def test_backoff_has_jitter_and_a_ceiling():
    low = LLMClient(config("http://127.0.0.1:9/v1", backoff=1, max_backoff=5), jitter=lambda: 0.0)
    high = LLMClient(config("http://127.0.0.1:9/v1", backoff=1, max_backoff=5), jitter=lambda: 1.0)
    assert [low._delay(i, None) for i in range(5)] == [0.5, 1, 2, 2.5, 2.5]
    assert [high._delay(i, None) for i in range(5)] == [1, 2, 4, 5, 5]
    assert high._delay(0, 100) == 5  # Retry-After is capped at max_backoff too


async def test_persistent_5xx_is_a_retryable_error_after_the_retries(fake):
    url = fake.script("down", [error(502, "bad gateway upstream")])
    async with LLMClient(config(url, max_retries=2), sleep=Delays()) as llm:
        with pytest.raises(LLMUnavailableError) as info:
            await llm.chat([{"role": "user", "content": "hi"}])
    assert isinstance(info.value, RetryableError)
    assert len(fake.requests["down"]) == 3
    assert "after 3 tries" in str(info.value) and "502" in str(info.value) and "bad gateway upstream" in str(
        info.value
    )


async def test_a_closed_port_is_retried_then_unavailable():
    from baton.servers import free_port

    cfg = config(f"http://127.0.0.1:{free_port()}/v1", max_retries=1)
    async with LLMClient(cfg, sleep=Delays()) as llm:
        with pytest.raises(LLMUnavailableError, match="cannot connect"):
            await llm.chat([{"role": "user", "content": "hi"}])


async def test_400_fails_at_once_with_the_endpoints_message(fake):
    message = "max_tokens is too large: 999999. This model supports at most 4096."
    url = fake.script("bad", [error(400, message)])
    async with LLMClient(config(url), sleep=Delays()) as llm:
        with pytest.raises(LLMRequestError) as info:
            await llm.chat([{"role": "user", "content": "hi"}])
    assert isinstance(info.value, PermanentError)
    assert len(fake.requests["bad"]) == 1
    assert info.value.status == 400
    assert "max_tokens is too large: 999999" in str(info.value) and "400 Bad Request" in str(info.value)


@pytest.mark.parametrize(
    "step",
    [
        Step(status=404, body={"detail": "Not Found"}),
        Step(status=422, body={"detail": [{"loc": ["body", "messages"], "msg": "Field required"}]}),
        Step(status=404, body="model 'fake-model' not found, try pulling it first"),
    ],
)
async def test_other_4xx_bodies_are_reported_as_the_endpoint_wrote_them(fake, step):
    url = fake.script("odd", [step])
    async with LLMClient(config(url)) as llm:
        with pytest.raises(LLMRequestError) as info:
            await llm.chat([{"role": "user", "content": "hi"}])
    expected = step.body if isinstance(step.body, str) else json.dumps(step.body["detail"])
    assert expected.strip('"') in str(info.value)


async def test_a_wrong_api_key_is_a_clear_error_that_never_shows_the_key(fake, monkeypatch):
    monkeypatch.setenv("FAKE_LLM_KEY", "sk-very-secret-value")
    url = fake.script("auth", [error(401, "Incorrect API key provided: sk-very***alue.")])
    async with LLMClient(config(url, api_key_env="FAKE_LLM_KEY")) as llm:
        with pytest.raises(LLMAuthError) as info:
            await llm.chat([{"role": "user", "content": "hi"}])
    message = str(info.value)
    assert "refused the credentials (401 Unauthorized)" in message
    assert "Incorrect API key provided" in message and "FAKE_LLM_KEY" in message
    assert "sk-very-secret-value" not in message
    assert fake.requests["auth"][0]["authorization"] == "Bearer sk-very-secret-value"
    assert len(fake.requests["auth"]) == 1


async def test_an_unset_api_key_variable_fails_before_any_request(fake, monkeypatch):
    monkeypatch.delenv("FAKE_LLM_MISSING", raising=False)
    url = fake.script("nokey", [reply("unused")])
    async with LLMClient(config(url, api_key_env="FAKE_LLM_MISSING")) as llm:
        with pytest.raises(LLMConfigError, match="environment variable FAKE_LLM_MISSING, which is not set"):
            await llm.chat([{"role": "user", "content": "hi"}])
    assert fake.requests["nokey"] == []


async def test_a_200_without_choices_is_a_clear_error(fake):
    url = fake.script("html", [Step(status=200, body="<html>proxy login</html>")])
    async with LLMClient(config(url)) as llm:
        with pytest.raises(LLMRequestError, match="without chat choices"):
            await llm.chat([{"role": "user", "content": "hi"}])


async def test_structured_output_sends_the_schema_and_validates(fake):
    url = fake.script("json", [reply('```json\n{"accepted": true, "feedback": "good"}\n```')])
    async with LLMClient(config(url)) as llm:
        verdict, result = await llm.structured([{"role": "user", "content": "review"}], Verdict)
    assert verdict == Verdict(accepted=True, feedback="good")
    fmt = fake.requests["json"][0]["json"]["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] == "Verdict"
    assert fmt["json_schema"]["schema"]["required"] == ["accepted"]
    assert fmt["json_schema"]["strict"] is False  # `feedback` is optional: strict mode would refuse it


async def test_a_reply_that_does_not_validate_is_retried_with_the_error(fake):
    url = fake.script("fix", [reply('{"accepted": "maybe"}'), reply('{"accepted": false, "feedback": "no"}')])
    async with LLMClient(config(url)) as llm:
        verdict, _ = await llm.structured([{"role": "user", "content": "review"}], Verdict)
    assert verdict.accepted is False
    second = fake.requests["fix"][1]["json"]["messages"]
    assert second[1] == {"role": "assistant", "content": '{"accepted": "maybe"}'}
    assert second[2]["role"] == "user"
    assert "accepted: Input should be a valid boolean" in second[2]["content"]
    assert '"accepted"' in second[2]["content"]  # the schema again
    assert llm.usage.calls == 2 and llm.usage.prompt_tokens == 22


async def test_a_reply_that_never_validates_fails_clearly_after_one_retry(fake):
    url = fake.script("junk", [reply("Sure! Here is my review: it is fine.")])
    async with LLMClient(config(url)) as llm:
        with pytest.raises(LLMOutputError) as info:
            await llm.structured([{"role": "user", "content": "review"}], Verdict)
    assert isinstance(info.value, PermanentError)
    assert len(fake.requests["junk"]) == 2
    message = str(info.value)
    assert "did not validate as Verdict after 2 tries" in message
    assert "not JSON" in message and "Sure! Here is my review" in message


async def test_auto_falls_back_when_the_endpoint_refuses_json_schema(fake):
    # llama-cpp-python's server answers 500 to a response_format it cannot validate; others 400/422.
    refusal = Step(status=500, body={"error": {"message": "1 validation error: response_format.type: "
                                              "Input should be 'text' or 'json_object'"}})
    url = fake.script("old", [refusal, reply('{"accepted": true}')])
    async with LLMClient(config(url)) as llm:
        verdict, _ = await llm.structured([{"role": "user", "content": "review"}], Verdict)
        assert verdict.accepted
        first, second = (r["json"]["response_format"]["type"] for r in fake.requests["old"])
        assert (first, second) == ("json_schema", "json_object")
        assert fake.requests["old"][1]["json"]["response_format"]["schema"]["title"] == "Verdict"
        await llm.structured([{"role": "user", "content": "again"}], Verdict)
    # remembered for this base_url: no second refusal
    assert fake.requests["old"][2]["json"]["response_format"]["type"] == "json_object"

    unsupported = error(400, "response_format is not supported")
    url = fake.script("none", [unsupported, unsupported, reply('{"accepted": true}')])
    async with LLMClient(config(url)) as llm:
        await llm.structured([{"role": "user", "content": "review"}], Verdict)
    assert [r["json"].get("response_format", {}).get("type") for r in fake.requests["none"]] == [
        "json_schema", "json_object", None
    ]


async def test_an_explicit_response_format_is_not_second_guessed(fake):
    url = fake.script("strict", [error(400, "response_format: unsupported")])
    async with LLMClient(config(url, response_format="json_schema")) as llm:
        with pytest.raises(LLMRequestError, match="does not accept response_format 'json_schema'"):
            await llm.structured([{"role": "user", "content": "review"}], Verdict)
    assert len(fake.requests["strict"]) == 1


async def test_classify_returns_a_valid_label_with_a_constrained_schema(fake):
    url = fake.script("cls", [reply('{"label": "Billing", "confidence": 0.8}')])
    found = await classify(config(url), "I was charged twice", ["billing", "it"])
    assert (found.label, found.confidence) == ("billing", 0.8)  # matched case-insensitively
    assert found.usage.prompt_tokens == 11 and found.usage.calls == 1
    sent = fake.requests["cls"][0]["json"]
    schema = sent["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["label"]["enum"] == ["billing", "it"]
    assert sent["response_format"]["json_schema"]["strict"] is True
    assert "I was charged twice" in sent["messages"][0]["content"]


async def test_classify_retries_an_unknown_label_then_raises(fake):
    url = fake.script("cls-bad", [reply('{"label": "sales", "confidence": 0.9}'), reply("billing, I think")])
    with pytest.raises(LLMOutputError) as info:
        await classify(config(url), "hello", ["billing", "it"])
    assert len(fake.requests["cls-bad"]) == 2
    retry = fake.requests["cls-bad"][1]["json"]["messages"][-1]["content"]
    assert "label 'sales' is not one of ['billing', 'it']" in retry
    assert "classification" in str(info.value)


def test_helpers():
    assert cut("abcdef", 10, "x") == ("abcdef", None)
    shown, note = cut("a" * 50, 10, "input 'brief'")
    assert shown.startswith("a" * 10 + "\n[... cut here: 40 more characters")
    assert note == "input 'brief': 50 characters, cut to the first 10 (max_input_chars)"
    assert parse_json(' ```\n{"a": 1}\n``` ') == {"a": 1}
    with pytest.raises(ValueError, match="empty"):
        parse_json("  ")
    assert is_strict_schema({"type": "object", "properties": {"a": {}}, "required": ["a"],
                             "additionalProperties": False})
    assert not is_strict_schema({"type": "object", "properties": {"a": {}}, "required": []})


def test_usage_adds_cost_only_when_priced():
    assert (Usage(seconds=1) + Usage(seconds=2)).cost is None
    total = Usage(prompt_tokens=1, cost=0.5) + Usage(completion_tokens=2) + Usage(cost=0.25)
    assert (total.prompt_tokens, total.completion_tokens, total.cost) == (1, 2, 0.75)


async def test_an_endpoints_clients_share_its_connections_and_count_their_own_usage(fake):
    """Each task's client over an agent's `Endpoint` counts its own usage; closing it leaves the shared
    connections open for the next task, which reuses the idle one."""
    url = fake.script("shared", [reply("hi", prompt_tokens=3, completion_tokens=2)])
    endpoint = Endpoint(config(url))
    for _ in range(3):
        async with endpoint.client("agent") as llm:
            await llm.chat([{"role": "user", "content": "hi"}])
        assert (llm.usage.prompt_tokens, llm.usage.completion_tokens) == (3, 2)
    assert len({r["connection"] for r in fake.requests["shared"]}) == 1
