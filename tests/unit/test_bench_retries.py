"""The retry storm's report (bench/retries.py) and its options (`--retry-runs`, `--quick`)."""

from bench import retries
from bench.run import parse_args


def burst(workflow: str, runs: int, retried: int | None = None) -> dict:
    row = {
        "ok": True,
        "runs": runs,
        "workflow": workflow,
        "completed": runs,
        "runs_per_s": 758.4,
        "run_end_after_publish": {"p50_s": 11.22, "p90_s": 12.5, "max_s": 13.19},
        "supervisor_cpu_ms_per_run": 1.2,
    }
    if retried is not None:
        row["sample"] = {"runs": 200, "retried": retried}
        row["ok"] = retried == 200
    return row


def test_a_burst_line_shows_the_rate_when_the_last_run_ended_and_the_retried_sample():
    lines = retries.table(
        {
            "retries": {
                "workers": 2,
                "backoff_s": 0.1,
                "bursts": [burst("relay", 10000), burst("retry-once", 10000, 200)],
            }
        }
    )
    assert "backoff 0.1 s" in lines[1]
    assert "10,000 relay" in lines[3] and "758" in lines[3] and "13.19" in lines[3]
    assert lines[4].rstrip().endswith("200/200") and "NOT OK" not in lines[4]


def test_a_sample_that_did_not_retry_is_flagged():
    lines = retries.table({"retries": {"workers": 2, "bursts": [burst("retry-once", 1000, 0)]}})
    assert "0/200" in lines[3] and "NOT OK" in lines[3]


def test_a_failed_burst_says_why():
    row = {"ok": False, "runs": 1000, "workflow": "retry-once", "error": "12 of 1000 runs had not ended"}
    lines = retries.table({"retries": {"workers": 2, "bursts": [row]}})
    assert "failed: 12 of 1000 runs had not ended" in lines[3]


def test_the_routed_burst_has_its_own_table():
    lines = retries.table(
        {"routed": {"workers": 2, "bursts": [burst("once", 10000), burst("routed", 10000)]}}
    )
    assert lines[1].startswith("Router under a burst") and "10,000 routed" in lines[4]


def test_no_results_print_nothing():
    assert retries.table({}) == []


def test_the_options():
    assert parse_args(["--only", "retries"]).retry_runs == "1000,10000"
    assert parse_args(["--only", "retries", "--quick"]).retry_runs == "300"
    assert parse_args(["--only", "long"]).long_runs == "1000"
    assert parse_args(["--only", "long", "--quick"]).long_runs == "100"


def test_long_pipelines_show_hops_a_second_and_the_supervisors_cost_a_hop():
    row = burst("relay-300", 1000) | {"hops_per_s": 4514.2, "supervisor_cpu_ms_per_hop": 0.177}
    lines = retries.table({"long": {"workers": 2, "bursts": [row]}})
    assert lines[1].startswith("Long pipelines") and "sup ms/hop" in lines[2]
    assert "1,000 relay-300" in lines[3] and "4,514" in lines[3] and "0.177" in lines[3]


def test_hops_a_run_come_from_the_workflow_file(tmp_path):
    from bench.runs import relay_workflows

    stages = retries.tasks_per_run(relay_workflows(tmp_path, [30, 300]))
    assert stages["relay"] == 3 and stages["relay-read-write"] == 3 and stages["routed"] == 1
    assert stages["relay-30"] == 30 and stages["relay-300"] == 300
    assert stages["co-edit"] == 6  # a bidirectional run: its turns
    assert stages["team"] == 1 + 4 * 2 + 1  # a hierarchical run: its plan, 4 subtasks reviewed, aggregation
    assert retries.tasks_per_run(relay_workflows(tmp_path, [30]), width=10)["team"] == 22
