"""Scenarios `retries` and `routed`: bursts of shapes the happy path rarely shows, each beside its baseline.

`retries`, a retry storm. The happy path retries now and then: a task fails, its retry waits its backoff,
the supervisor's timer re-dispatches it. When a model endpoint is overloaded every task in flight fails at
once, and every one of those retries is a timer that comes due at about the same moment. N runs of three
no-op stages are published at once, twice: `relay` (nothing fails) and `retry-once` (the same, its first
stage failing its first attempt with a retryable error, backoff 0.1 s); a sample of the retried runs'
events is read back to check that each did fail once and was retried (else the figure is of nothing).

`writes`, agents that write: N runs of `relay-writes` (three stages, each writing one small file, as most
real agents write their outputs: a PUT to the bucket, then its notification through the notifier to the
supervisor and the indexer) beside N runs of `relay` (the no-op stages every other burst uses), then N of
`relay-read-write` (each stage first reads every earlier stage's output: 3 GETs a run beside the 3 PUTs).

`routed`, the router pattern under a burst: N runs of `routed` (each request routed by a rule over its
`text` to a no-op agent: the router's decision, then one task) beside N runs of `once` (the same no-op
stage, sequential: no router).

`remote`, agents on another team's server: N runs of `remote-once` (one stage, a `kind: a2a` agent: the
worker sends the task to an A2A peer built with a2a-sdk, in its own process on the same cores, which answers
at once with one small file the worker writes to the bucket) beside N runs of `once-writes` (one local
stage writing one small file). The peer's CPU is reported beside the stack's.

`llm`, agents that ask a model: N runs of `model-once` (one stage, a `kind: llm` agent whose endpoint, an
OpenAI-compatible server in its own process on the same cores (tests/fake_llm.py), answers at once) beside N
runs of `once-writes`. The endpoint's CPU is reported beside the stack's.

`team`, the hierarchical pattern under a burst: N runs of `team` (a planner's plan of 4 no-op subtasks, each
reviewed by an agent that writes an accepting verdict, then an aggregator: 10 tasks, and the supervisor reads
the plan and the 4 verdicts) beside N runs of `relay` (3 no-op stages).

`collab`, the bidirectional pattern under a burst: N runs of `co-edit` (two participants taking turns on
one document, seeded from one shared input: each turn a conditional write whose bucket notification, through
the notifier, gives the next participant the turn; 6 turns) beside N runs of `relay-writes` (three
sequential stages each writing one file: the stage's outcome, not the file's notification, moves the run on).

`long`, pipelines 10x and 100x longer: N runs of 3 no-op stages, then N runs of 30 and N of 300 (as many
in flight at once in each burst), so that a cost growing with a run's length shows as fewer hops a second
and more supervisor CPU a hop.

Per burst: runs/s, when the runs ended after the publish (p50, p90, the last), the supervisor's CPU per
run (scenario 6's Baton burst: one supervisor, `workers` workers).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator

from baton.client import init_workspace
from baton.servers import free_port
from bench import runs as whole_runs
from bench.common import Procs, python
from shared.storage import Storage
from shared.workflow import (
    BidirectionalWorkflow,
    HierarchicalWorkflow,
    SequentialWorkflow,
    load_workflows,
)

TEAM_WIDTH = 4  # `team`: subtasks in each run's plan
LENGTHS = (30, 300)  # `long`: the pipelines beside `relay`'s 3 stages
SCENARIOS = {  # name: (baseline, the shape, ...), each (workflow, label, params)
    "retries": (
        ("relay", "nothing fails", None),
        ("retry-once", "first stage fails once", None),
    ),
    "routed": (
        ("once", "one sequential stage", None),
        ("routed", "routed by a rule, then one stage", {"text": "please handle alpha"}),
    ),
    "writes": (
        ("relay", "stages that write nothing", None),
        ("relay-writes", "each stage writes one small file", None),
        ("relay-read-write", "each stage reads its inputs, then writes one small file", None),
    ),
    "remote": (
        ("once-writes", "one local stage writing one small file", None),
        ("remote-once", "one kind: a2a stage (a remote A2A peer's one small file)", None),
    ),
    "llm": (
        ("once-writes", "one local stage writing one small file", None),
        ("model-once", "one kind: llm stage (a model endpoint answering at once)", None),
    ),
    "team": (
        ("relay", "3 no-op stages", None),
        ("team", f"a plan of {TEAM_WIDTH} subtasks, each reviewed, then aggregated", {"width": TEAM_WIDTH}),
    ),
    "collab": (
        ("relay-writes", "3 sequential stages, each writing one small file", None),
        ("co-edit", "2 participants taking 6 turns on one document", None),
    ),
    "long": (
        ("relay", "3 stages", None),
        *((f"relay-{length}", f"{length} stages", None) for length in LENGTHS),
    ),
}
TITLES = {
    "retries": "Retry storm: runs of 3 no-op stages published at once; 'retry-once': the first stage fails "
    "once (retryable, backoff 0.1 s)",
    "routed": "Router under a burst: 'routed' runs (a rule picks the agent, then one no-op stage) beside "
    "'once' (the same stage, no router)",
    "writes": "Agents that write: runs of 3 stages each writing one small file ('relay-writes': a PUT "
    "and its notification a stage; 'relay-read-write': each stage first reads its inputs) beside 'relay' "
    "(no writes)",
    "remote": "Remote agents: 'remote-once' runs (one kind: a2a stage, sent to an A2A peer built with "
    "a2a-sdk on the same cores, answering at once with one small file) beside 'once-writes' (one local stage "
    "writing one small file)",
    "llm": "Model agents: 'model-once' runs (one kind: llm stage, its OpenAI-compatible endpoint on the same "
    "cores answering at once; the agent writes the answer as one small file) beside 'once-writes' (one local "
    "stage writing one small file)",
    "team": f"Teams: 'team' runs (hierarchical: a plan of {TEAM_WIDTH} no-op subtasks, each reviewed, then "
    "aggregated; 10 tasks, the plan and 4 verdicts read by the supervisor) beside 'relay' (3 no-op stages)",
    "collab": "Co-editing: 'co-edit' runs (bidirectional: 2 participants, 6 turns on one document, each "
    "turn moved on by the document's notification) beside 'relay-writes' (3 sequential writing stages)",
    "long": "Long pipelines: N runs of 3, of 30 and of 300 no-op stages published at once",
}
SAMPLE = 200  # retried runs whose events are read back to check that they did retry


def scenario(srv: whole_runs.Servers, name: str, sizes: list[int], workers: int) -> dict:
    out: dict = {"workers": workers, "bursts": []}
    with contextlib.ExitStack() as stops:
        peer = (
            stops.enter_context(a2a_peer(srv.work / "a2a-peer"))
            if name == "remote"
            else stops.enter_context(model_endpoint(srv.work / "model-endpoint"))
            if name == "llm"
            else None
        )
        _bursts(srv, name, sizes, workers, out, peer)
    out["ok"] = all(r.get("ok") for r in out["bursts"])
    return out


@contextlib.contextmanager
def peer_process(logdir, name: str, module: str) -> Iterator[tuple[str, Procs]]:
    """`python -m <module> --port N` (a peer the stack talks to: the test A2A agents, the model endpoint)
    in a process of its own, once it listens: its URL, its process."""
    procs = Procs(logdir)
    port = free_port()
    procs.start(name, python("-m", module, "--port", str(port)))
    try:
        deadline = time.time() + 30
        while True:
            procs.check_alive()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError(f"{name} did not listen on port {port} within 30 s") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", procs
    finally:
        procs.stop()


def a2a_peer(logdir):
    """The test A2A agents (tests/a2a_agents.py), their own process."""
    return peer_process(logdir, "a2a-peer", "tests.a2a_agents")


def model_endpoint(logdir):
    """The benchmark's OpenAI-compatible endpoint (tests/fake_llm.py), its own process."""
    return peer_process(logdir, "model-endpoint", "tests.fake_llm")


def _bursts(
    srv, name: str, sizes: list[int], workers: int, out: dict, peer: tuple[str, Procs] | None
) -> None:
    workflows = whole_runs.relay_workflows(srv.work, list(LENGTHS))
    stages = tasks_per_run(workflows, TEAM_WIDTH)
    extra = {"LLM_BENCH_URL" if name == "llm" else "A2A_BENCH_URL": peer[0]} if peer else None
    seeded = {"document": _seed(srv)} if name == "collab" else None  # the co-editing runs' only
    peer_pids = peer[1].pids if peer else []
    for size in sizes:
        for workflow, label, params in SCENARIOS[name]:
            n = size
            print(f"- {name}: {n} runs at once, {label}", flush=True)
            timeout = 60 + n * stages[workflow] / 60
            peer_cpu = whole_runs._cpu(peer_pids) if peer else 0.0
            row = whole_runs._attempt(
                lambda n=n, workflow=workflow, params=params, timeout=timeout: whole_runs.baton_burst(
                    srv,
                    n,
                    workers,
                    timeout,
                    workflow=workflow,
                    params=params,
                    workflows=workflows,
                    extra=extra,
                    inputs=seeded if workflow == "co-edit" else None,
                )
            )
            row.update(runs=n, workflow=workflow, stages=stages[workflow])
            if peer and workflow.startswith(("remote", "model")):
                row["peer_cpu_s"] = round(whole_runs._cpu(peer_pids) - peer_cpu, 2)
                row["peer_cpu_ms_per_run"] = round(
                    row["peer_cpu_s"] / max(row.get("completed") or 0, 1) * 1000, 2
                )
            if row.get("completed"):
                hops = row["completed"] * stages[workflow]
                row["hops_per_s"] = round(hops / row["seconds"], 1)
                row["supervisor_cpu_ms_per_hop"] = round(row["supervisor_cpu_s"] / hops * 1000, 3)
            if workflow == "retry-once" and row.get("ok"):
                row["sample"] = _retried(srv, row["first_run_id"], n)
                row["ok"] = row["sample"]["retried"] == row["sample"]["runs"]
            out["bursts"].append(row)


def tasks_per_run(path, width: int = TEAM_WIDTH) -> dict[str, int]:
    """Each workflow's tasks a run (its hops), from the workflow file: a sequential one's stages, a
    bidirectional one's turns (`max_rounds`: the bench's participants change the document every turn), a
    hierarchical one's plan, `width` subtasks (each reviewed, if it has a reviewer) and aggregation; a
    routed request is one task."""

    def tasks(wf) -> int:
        if isinstance(wf, SequentialWorkflow):
            return len(wf.stages)
        if isinstance(wf, BidirectionalWorkflow):
            return wf.max_rounds
        if isinstance(wf, HierarchicalWorkflow):
            return 1 + width * (2 if wf.reviewer else 1) + (1 if wf.aggregator else 0)
        return 1

    return {name: tasks(wf) for name, wf in load_workflows(path).workflows.items()}


def _seed(srv: whole_runs.Servers):
    """The co-editing runs' shared input: one small document in the bucket (each run's copy is its own)."""
    settings = srv.settings()

    async def upload():
        await init_workspace(settings)  # (the bucket, before the first stack's start makes it)
        async with Storage.connect(settings) as storage:
            return await storage.put(
                "bench/seed/doc.md", b"# A shared document\n", content_type="text/markdown"
            )

    return asyncio.run(upload())


def _retried(srv: whole_runs.Servers, first: str, n: int) -> dict:
    """Of the first `SAMPLE` runs of the burst, how many failed their first stage once and then completed."""
    base = first.rsplit("-", 1)[0]
    ids = [f"{base}-{i:05d}" for i in range(min(SAMPLE, n))]
    client = srv.client()
    try:
        events = whole_runs._events(client, ids)
    finally:
        client.close()
    retried = 0
    for run in events.values():
        failed = [e for e in run if e["type"] == "task.failed" and e.get("retryable")]
        if len(failed) == 1 and run and run[-1]["type"] == "run.completed":
            retried += 1
    return {"runs": len(ids), "retried": retried}


def table(results: dict) -> list[str]:
    lines: list[str] = []
    for name, title in TITLES.items():
        r = results.get(name)
        if not r:
            continue
        lines += [
            "",
            f"{title}; {r['workers']} workers",
            f"{'runs':>7} {'workflow':16} {'runs/s':>8} {'p50 end s':>10} {'last end s':>11} "
            f"{'sup ms/run':>11} {'hops/s':>8} {'sup ms/hop':>11} {'retried':>9}",
        ]
        for b in r["bursts"]:
            if not b.get("completed"):
                lines.append(f"{b['runs']:>7,} {b['workflow']:16} failed: {b.get('error')}")
                continue
            ends = b.get("run_end_after_publish", {})
            sample = b.get("sample")
            retried = f"{sample['retried']}/{sample['runs']}" if sample else ""
            lines.append(
                f"{b['runs']:>7,} {b['workflow']:16} {b['runs_per_s']:>8,.0f} {ends.get('p50_s', 0):>10.2f} "
                f"{ends.get('max_s', 0):>11.2f} {b['supervisor_cpu_ms_per_run']:>11.2f} "
                f"{b.get('hops_per_s', 0):>8,.0f} {b.get('supervisor_cpu_ms_per_hop', 0):>11.3f} {retried:>9}"
                + (
                    f"  worker {b['worker_cpu_s'] / b['completed'] * 1000:.1f} ms/run"
                    if name in ("remote", "llm")
                    else ""
                )
                + (
                    f", {'model endpoint' if name == 'llm' else 'A2A peer'} {b['peer_cpu_ms_per_run']:.1f}"
                    if "peer_cpu_ms_per_run" in b
                    else ""
                )
                + ("" if b.get("ok") else f"  NOT OK: {b.get('error', 'not every sampled run retried')}")
            )
    return lines
