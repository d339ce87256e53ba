"""The AsyncAPI documents FastStream generates list exactly the streams each service reads and writes.

No server is needed: building a service's app does not connect.
"""

from __future__ import annotations

import functools
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from baton import docs
from baton.docs import RECEIVE, SEND
from shared import streams
from shared.events import DeadLetter, ObjectChanged, RunSubmitted, TaskAssigned, TaskResult
from shared.search import SearchRequest, SearchResponse
from shared.workflow import load_workflows

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / "examples" / "workflows.yaml"
COMMITTED = ROOT / "docs" / "asyncapi"
RUN_EVENTS = streams.run_events("{run_id}")


@functools.cache
def document(service: str) -> dict:
    return docs.asyncapi_document(service, docs.doc_settings(WORKFLOWS))


def expected(service: str) -> dict[str, set[str]]:
    agents = load_workflows(WORKFLOWS).agents
    python_agents = [name for name, spec in agents.items() if spec.kind == "python"]
    dead_letters = {streams.DLQ: {SEND}}  # every broker's middleware dead-letters what it cannot handle
    if service == "supervisor":
        return {
            streams.RUNS: {RECEIVE, SEND},  # sends the runs its triggers start
            streams.results_stream(0): {RECEIVE},  # each results partition (one by default)
            streams.RESULTS_DOC: {SEND},  # a retryable TaskFailed when a deadline passes, to the run's partition
            streams.OBJECTS: {RECEIVE},
            streams.ROUTE: {SEND},  # tasks that need a route
            streams.agent_stream("{agent}"): {SEND},  # tasks for a known agent
            RUN_EVENTS: {SEND},
            **dead_letters,  # (it also reads them, on its own consumer: see supervisor/deadletters.py)
        }
    if service == "router":
        return {
            streams.ROUTE: {RECEIVE},
            streams.RESULTS_DOC: {SEND},
            RUN_EVENTS: {SEND},
            **{streams.agent_stream(name): {SEND} for name in agents},
            **dead_letters,
        }
    if service == "worker":
        return {
            streams.RESULTS_DOC: {SEND},
            RUN_EVENTS: {SEND},  # a task's start and progress, straight to its run's stream
            **{streams.agent_stream(name): {RECEIVE} for name in python_agents},
            **dead_letters,
        }
    if service == "notifier":
        return {streams.OBJECTS: {SEND}, **dead_letters}
    if service == "indexer":
        return {
            streams.OBJECTS: {RECEIVE},
            streams.SEARCH: {RECEIVE},
            streams.search_reply("{request_id}"): {SEND},
            **dead_letters,
        }
    raise AssertionError(service)


@pytest.mark.parametrize("service", docs.SERVICES)
def test_document_lists_every_stream_read_and_written(service):
    doc = document(service)
    assert doc["asyncapi"].startswith("3.")
    assert doc["info"] == {"title": f"Baton {service}", "version": "0.1.0"}
    assert docs.channels(doc) == expected(service)


def test_workflow_agents_are_in_the_router_and_worker_documents():
    # Guards the expectation above against an empty workflow file.
    agents = set(load_workflows(WORKFLOWS).agents)
    assert {"outliner", "writer", "seo", "planner", "expander"} <= agents
    for service in ("router", "worker"):
        assert {streams.agent_stream(a) for a in agents} <= set(docs.channels(document(service)))


def _fields(model: type[BaseModel]) -> set[str]:
    return set(model.model_fields)


def _only_payload(service: str, stream: str, action: str) -> dict:
    found = docs.payloads(document(service), stream, action)
    assert len(found) == 1, f"{service} {action} {stream}: {found}"
    return found[0]


@pytest.mark.parametrize(
    ("service", "stream", "action", "model"),
    [
        ("supervisor", streams.RUNS, SEND, RunSubmitted),
        ("supervisor", streams.OBJECTS, RECEIVE, ObjectChanged),
        ("supervisor", streams.ROUTE, SEND, TaskAssigned),
        ("router", streams.ROUTE, RECEIVE, TaskAssigned),
        ("router", streams.agent_stream("writer"), SEND, TaskAssigned),
        ("worker", streams.agent_stream("outliner"), RECEIVE, TaskAssigned),
        ("notifier", streams.OBJECTS, SEND, ObjectChanged),
        ("indexer", streams.OBJECTS, RECEIVE, ObjectChanged),
        ("indexer", streams.SEARCH, RECEIVE, SearchRequest),
        ("indexer", streams.search_reply("{request_id}"), SEND, SearchResponse),
        *((service, streams.DLQ, SEND, DeadLetter) for service in ("supervisor", "router", "worker")),
    ],
)
def test_payload_schema_is_the_event_model(service, stream, action, model):
    payload = _only_payload(service, stream, action)
    assert payload.get("title") == model.__name__
    assert _fields(model) <= set(payload["properties"])
    if model is RunSubmitted:
        assert "workflow" in payload["required"]


def test_runs_payload_is_a_submission_or_a_cancellation():
    payload = _only_payload("supervisor", streams.RUNS, RECEIVE)
    refs = {item["$ref"].rsplit("/", 1)[-1] for item in payload.get("oneOf", payload.get("anyOf", []))}
    assert refs == {"RunSubmitted", "RunCancelRequested"}


def test_results_payload_is_the_task_result_union():
    payload = _only_payload("supervisor", streams.results_stream(0), RECEIVE)
    union = typing.get_args(TaskResult)[0]
    members = {cls.__name__ for cls in typing.get_args(union)}
    refs = {item["$ref"].rsplit("/", 1)[-1] for item in payload.get("oneOf", payload.get("anyOf", []))}
    assert refs == members
    assert payload.get("discriminator") == "type"


def test_notifier_dead_letters_go_to_the_dlq():
    titles = {p.get("title") for p in docs.payloads(document("notifier"), streams.DLQ, SEND)}
    assert titles == {DeadLetter.__name__}


def test_committed_documents_are_up_to_date(tmp_path):
    docs.write_all(tmp_path, WORKFLOWS)
    fresh = {p.name: p.read_text(encoding="utf-8") for p in sorted(tmp_path.glob("*.yaml"))}
    committed = {p.name: p.read_text(encoding="utf-8") for p in sorted(COMMITTED.glob("*.yaml"))}
    stale = sorted(name for name in fresh.keys() | committed.keys() if fresh.get(name) != committed.get(name))
    assert not stale, f"docs/asyncapi is out of date with the code ({', '.join(stale)}): run `make docs`"
