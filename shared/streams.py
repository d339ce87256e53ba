"""Every Redis key and stream name Baton uses, in one place.

Every key of one run shares the `{<run_id>}` hash tag, and every atomic step (a script or transaction)
touches the keys of one run only, so each step stays in one hash slot, as a Redis Cluster requires.
One exception by design: a worker writes a task's outcome and its done-mark in one step, and the outcome
goes to a stream the supervisor reads. So outcomes travel on partitioned streams `baton:{r<N>}:results`,
and the done-marks of a run live beside its partition's stream (`baton:{r<N>}:done:<run>`): one slot.
"""

import re
import zlib

RUNS = "baton:runs"  # RunSubmitted: consumed by the supervisor
ROUTE = "baton:route"  # TaskAssigned awaiting a route: consumed by the router
OBJECTS = "baton:objects"  # ObjectChanged from the notifier: consumed by the supervisor
DLQ = "baton:dlq"  # anything that could not be handled, with its reason
SEARCH = "baton:search"  # SearchRequest: consumed by the indexer, answered on a reply list

SUPERVISOR_GROUP = "supervisor"
ROUTER_GROUP = "router"
INDEXER_GROUP = "indexer"  # reads OBJECTS (to index) and SEARCH (to answer)

RUN_INDEX = "baton:runs:index"  # sorted set of run ids by submission time
RUN_STATUS_INDEX_PREFIX = "baton:runs:index:status:"  # + status: sorted set of run ids by submission time
RUN_WORKFLOW_INDEX_PREFIX = "baton:runs:index:workflow:"  # + workflow: the same, per workflow
SETTINGS = "baton:settings"  # hash: settings every service must share (`result_partitions`)
SUPERVISORS = "baton:supervisors"  # sorted set: live supervisor replicas (who reads which results partition)
# sorted set of the runs waiting for a person, by submission time (advisory: check each run's state). Was
# the set `baton:runs:waiting` (unordered, so read whole) before 2026-12-01.
RUNS_WAITING = "baton:runs:index:waiting"
# notifier: S3 events already published (expiring marks). The hash tag is OBJECTS' name: a mark is set in
# one script with the entry it marks, so both must be in one slot.
OBJECTS_SEEN_PREFIX = "{baton:objects}:seen:"


def run_status_index(status: str) -> str:
    """The runs now in `status`, by submission time (the supervisor moves a run as its status changes)."""
    return RUN_STATUS_INDEX_PREFIX + status


def run_workflow_index(workflow: str) -> str:
    """The runs of one workflow, by submission time."""
    return RUN_WORKFLOW_INDEX_PREFIX + workflow


def agent_stream(agent: str) -> str:
    """The work stream of one agent; its consumer group is named after the agent."""
    return f"baton:agent:{agent}"


def run_events(run_id: str) -> str:
    """The append-only progress log of one run, for `baton watch` and any client."""
    return f"baton:{{{run_id}}}:events"


def run_state(run_id: str) -> str:
    """The supervisor's durable state of one run (a hash: `shared/runs.py`)."""
    return f"baton:{{{run_id}}}:state"


SEARCH_REPLY_PREFIX = "baton:search:reply:"


def search_reply(request_id: str) -> str:
    """The list one search request's answer is pushed to (short-lived: it expires)."""
    return f"{SEARCH_REPLY_PREFIX}{request_id}"


TIMERS = "baton:timers"  # sorted set: delayed retries and task deadlines, scored by due time


def run_cancelled(run_id: str) -> str:
    """Set when a run is cancelled: workers drop its queued tasks and stop running ones."""
    return f"baton:{{{run_id}}}:cancelled"


def results_stream(partition: int) -> str:
    """One partition of the outcomes (TaskStarted / TaskCompleted / TaskFailed): read by the supervisor."""
    return f"baton:{{r{partition}}}:results"


RESULTS_PATTERN = "baton:{r*}:results"  # every partition (ACLs, listings)
RESULTS_DOC = "baton:{r{partition}}:results"  # the name documents give every partition


def partition_of(run_id: str, partitions: int) -> int:
    """The results partition a run's outcomes go to (stable across processes and languages: CRC-32)."""
    return zlib.crc32(run_id.encode()) % partitions if partitions > 1 else 0


def results_of(run_id: str, partitions: int) -> str:
    """The results stream a run's outcomes go to."""
    return results_stream(partition_of(run_id, partitions))


def result_streams(partitions: int) -> list[str]:
    return [results_stream(p) for p in range(partitions)]


def is_results(stream: str) -> bool:
    return stream.startswith("baton:{r") and stream.endswith("}:results")


def run_done(run_id: str, partitions: int) -> str:
    """Hash of task attempts whose outcome a worker has sent (so a redelivery is not done twice). It
    shares the hash slot of the run's results partition: the outcome and its mark are one step."""
    return f"baton:{{r{partition_of(run_id, partitions)}}}:done:{run_id}"


DONE_PATTERN = "baton:{r*}:done:*"


def route_decision(run_id: str, task_id: str, attempt: int) -> str:
    """The router's decision for one attempt of a task: a redelivery forwards to the same agent."""
    return f"baton:{{{run_id}}}:route:{task_id}:{attempt}"


def a2a_task(run_id: str) -> str:
    """The A2A gateway's task for the run it started (protobuf `Task`; expires with the run's retention)."""
    return f"baton:{{{run_id}}}:a2a"


def a2a_tasks(workflow: str) -> str:
    """The A2A gateway's tasks of one workflow, by last update (a sorted set, for `tasks/list`)."""
    return f"baton:a2a:tasks:{workflow}"


def a2a_starting(workflow: str) -> str:
    """The A2A gateway's tasks of one workflow told `submitted` whose runs are not published yet (a hash:
    task id -> the gateway that accepted it): one that stops leaves them to another's start-up."""
    return f"baton:a2a:starting-by:{workflow}"


def a2a_gateway(instance: str) -> str:
    """A running A2A gateway's lease (expires unless it renews it): its waiting tasks are its own."""
    return f"baton:a2a:gateway:{instance}"


_ENTRY_ID = re.compile(r"[0-9]+(-[0-9]+)?")


def is_entry_id(value: str) -> bool:
    """`value` is a stream entry id as a person or a page gives one: `1733050000000-0`, or its milliseconds
    alone (ASCII digits only: `str.isdigit` would take `²`, which Redis refuses)."""
    return _ENTRY_ID.fullmatch(value) is not None
