"""The A2A benchmark's report (bench/a2a.py): every ending that is not `completed` is shown, by kind; and
its options (`--a2a-tasks`, `--quick`)."""

from bench import a2a
from bench.run import parse_args


def burst(n: int, completed: int, endings: dict[str, int]) -> dict:
    return {
        "tasks": n,
        "completed": completed,
        "endings": endings,
        "wall_s": 26.5,
        "tasks_per_s": 37.7,
        "first_update": {"p50_ms": 120, "p99_ms": 900},
        "to_completed": {"p50_ms": 17483, "p99_ms": 26081},
        "gateway_cpu_ms_per_task": 15.3,
        "client_cpu_ms_per_task": 5.9,
        "redis_connections_peak": 97,
        "gateway_live_readers_peak": 1,
    }


def results(*bursts: dict) -> dict:
    log = {"error": 0, "tracebacks": 0}
    return {"a2a": {"stage_sleep_s": 2.0, "bursts": list(bursts), "gateway_log": log}}


def test_a_burst_with_failures_names_them_in_the_table_and_counts_them_in_the_markdown():
    failed = burst(2000, 1841, {"TASK_STATE_COMPLETED": 1841, "A2AClientError: Too many connections": 159})
    table = "\n".join(a2a.table(results(failed)))
    assert "1,841/2,000 completed" in table
    assert "other endings {'A2AClientError: Too many connections': 159}" in table
    markdown = "\n".join(a2a.markdown(results(failed)))
    assert "| 2,000 | 1,841 | 26.5 s | 37.7 | 120 / 900 ms | 17483 / 26081 ms | 15.3 ms | 97 |" in markdown


def test_a_clean_burst_says_no_other_endings():
    table = "\n".join(a2a.table(results(burst(1000, 1000, {"TASK_STATE_COMPLETED": 1000}))))
    assert "1,000/1,000 completed" in table and "other endings" not in table


def test_no_a2a_results_print_nothing():
    assert a2a.table({}) == [] and a2a.markdown({}) == []


def test_the_bursts_default_to_10x_and_100x_and_quick_sends_a_hundred():
    assert parse_args(["--only", "a2a"]).a2a_tasks == "1000,10000"
    quick = parse_args(["--only", "a2a", "--quick"])
    assert quick.a2a_tasks == "100" and quick.a2a_sleep == 0.5
