"""The whole-run benchmark's own logic (bench/runs.py), without servers: hop arithmetic, the generated
fan-out workflow, and tables that still render when a system failed. No timing is asserted."""

from bench import run as bench_run
from bench import runs
from shared.workflow import load_workflows


def at(ms: float) -> str:
    return f"2026-01-01T00:00:00.{int(ms * 1000):06d}+00:00"


def test_hops_run_from_each_stage_to_the_next_and_the_last_to_run_completed():
    events = [
        {"type": "run.started", "created_at": at(0)},
        {"type": "task.assigned", "stage": 0, "created_at": at(1)},
        {"type": "task.completed", "created_at": at(2)},
        {"type": "task.assigned", "stage": 1, "created_at": at(4)},
        {"type": "task.assigned", "stage": 1, "created_at": at(9)},  # a second attempt: the first counts
        {"type": "task.assigned", "stage": 2, "created_at": at(10)},
        {"type": "run.completed", "created_at": at(13)},
    ]
    assert [round(h * 1000, 3) for h in runs.hops(events)] == [3.0, 6.0, 3.0]


def test_the_supervisors_part_runs_from_a_stages_completion_to_the_next_assignment():
    """Completions name their task, not their stage: a second attempt's task maps to the same stage, and
    the first completion counts."""
    events = [
        {"type": "task.assigned", "stage": 0, "task_id": "a", "created_at": at(1)},
        {"type": "task.completed", "task_id": "a", "created_at": at(2.5)},
        {"type": "task.assigned", "stage": 1, "task_id": "b", "created_at": at(3)},
        {"type": "task.progress", "task_id": "b", "created_at": at(3.5)},
        {"type": "task.completed", "task_id": "b", "created_at": at(5)},
        {"type": "task.completed", "task_id": "b", "created_at": at(5.2)},  # (a duplicate: the first counts)
        {"type": "task.assigned", "stage": 2, "task_id": "c", "created_at": at(6)},
        {"type": "task.completed", "task_id": "c", "created_at": at(7)},
        {"type": "run.completed", "created_at": at(7.75)},
    ]
    assert [round(d * 1000, 3) for d in runs.decisions(events)] == [0.5, 1.0, 0.75]
    assert runs.decisions(events[:-1]) == []


def test_a_run_that_did_not_complete_has_no_hops():
    events = [{"type": "task.assigned", "stage": 0, "created_at": at(1)}, {"type": "run.failed"}]
    assert runs.hops(events) == []


def test_fanout_workflow_sets_max_subtasks_to_the_width(tmp_path):
    path = runs.fanout_workflows(tmp_path, 100)
    wf = load_workflows(path).workflows["fanout"]
    assert (wf.pattern, wf.max_subtasks, wf.workers, wf.aggregator) == (
        "hierarchical",
        100,
        ["noop"],
        "collect",
    )


def test_a_width_over_the_ceiling_is_reported_not_started(tmp_path):
    srv = runs.Servers("redis://127.0.0.1:1/0", "http://127.0.0.1:1", 1, "t", tmp_path)
    r = runs.baton_fanout(srv, 10**7, workers=2, timeout=1)  # no server is reached: refused first
    assert r["ok"] is False and "max_subtasks" in r["error"]


RESULTS = {
    "burst": {
        "runs": 300,
        "stages": 3,
        "workers": 2,
        "systems": {
            "baton": {"ok": True, "runs_per_s": 900.0, "seconds": 0.33, "publish_s": 0.01},
            "dramatiq": {"ok": True, "runs_per_s": 600.0, "seconds": 0.5, "publish_s": 0.1},
            "celery": {"ok": False, "error": "RuntimeError: celery exited", "runs_per_s": 0},
        },
        "baton_over_peer": {"dramatiq": 1.5},
    },
    "sweep": {
        "1": {
            "workers": 2,
            "seconds_per_step": 5,
            "hop_budget_ms": 20.0,
            "capacity_runs_per_s": 100.0,
            "steps": [
                {
                    "target_runs_per_s": 100.0,
                    "achieved_runs_per_s": 99.8,
                    "hop_p50_ms": 2.0,
                    "hop_p99_ms": 6.0,
                    "end_to_end_p99_ms": 20.0,
                    "unfinished": 0,
                    "ok": True,
                },
                {
                    "target_runs_per_s": 200.0,
                    "achieved_runs_per_s": 150.0,
                    "hop_p50_ms": None,
                    "hop_p99_ms": None,
                    "end_to_end_p99_ms": None,
                    "unfinished": 12,
                    "ok": False,
                },
            ],
        },
        "2": {"ok": False, "error": "ServerError: supervisor-3 exited"},
    },
    "fanout": {
        "workers": 2,
        "baton": {
            "100": {
                "ok": True,
                "seconds": 1.0,
                "subtasks_per_s": 100.0,
                "supervisor_cpu_ms_per_subtask": 2.0,
            },
            "10000": {"ok": False, "error": "the workflow file is refused: max_subtasks"},
        },
        "celery_chord": {"100": {"ok": True, "seconds": 0.3, "worker_cpu_ms_per_subtask": 1.0}},
    },
}


def test_tables_render_failures_instead_of_crashing():
    text = "\n".join(bench_run.runs_table(RESULTS))
    assert "FAILED: RuntimeError: celery exited" in text
    assert "capacity 100 runs/s" in text
    assert "Sustained sweep, 2 supervisor(s): FAILED" in text
    assert "Baton W=10,000: the workflow file is refused" in text
    md = "\n".join(bench_run.runs_markdown(RESULTS))
    assert "| Dramatiq pipeline, 8 threads/process | 600 | 1.50 | 0.50 | - |" in md
    assert "| 10,000 | failed |" in md


def step(p50, unfinished=0, achieved=100.0):
    return {
        "hop_p50_ms": p50,
        "unfinished": unfinished,
        "target_runs_per_s": 100.0,
        "achieved_runs_per_s": achieved,
    }


def test_a_sweep_goes_on_past_a_noisy_step_and_stops_at_saturation():
    assert not runs.saturated(step(3.0))  # a p99 spike alone is noise
    assert runs.saturated(step(25.0))  # the typical hop is over budget: the queue grows
    assert runs.saturated(step(3.0, unfinished=4))
    assert runs.saturated(step(3.0, achieved=80.0))  # the submitter could not keep the rate
    assert runs.saturated(step(None))  # no run completed


def test_the_console_tables_render_a_real_result_and_failures():
    import json

    from bench import console

    real = {
        "console": {
            "page": {"ok": False, "error": "RuntimeError: the replay did not end", "other_cpu_cores": 0.1},
            "hops": {
                "rate_runs_per_s": 50.0,
                "seconds": 10.0,
                "budget": 1.05,
                "steps": [
                    {
                        "open_streams": 0,
                        "streams_on": None,
                        "achieved_runs_per_s": 50.0,
                        "hop_p50_ms": 2.0,
                        "hop_p99_ms": 5.0,
                        "runs": 500,
                        "completed": 500,
                        "supervisor_cores": 0.2,
                        "console_cores": 0.0,
                        "other_cpu_cores": 0.1,
                    },
                    {
                        "open_streams": 50,
                        "streams_on": "rolling",
                        "achieved_runs_per_s": 50.0,
                        "hop_p50_ms": None,
                        "hop_p99_ms": None,
                        "runs": 500,
                        "completed": 490,
                        "supervisor_cores": 0.2,
                        "console_cores": 0.3,
                        "other_cpu_cores": 0.5,
                        "live": {"p50_ms": 1.0, "p99_ms": 9.0, "count": 10, "reader_cores": 0.2},
                    },
                ],
                "live": {
                    "p50_ms": 1.0,
                    "p99_ms": 9.0,
                    "max_ms": 9.5,
                    "count": 10,
                    "budget_ms": 100.0,
                    "from_stream_entry": {"p50_ms": 0.5, "p99_ms": 8.0, "max_ms": 8.0, "count": 10},
                },
            },
        }
    }
    text = "\n".join(console.table(json.loads(json.dumps(real)), 0.25))
    assert "run page: FAILED RuntimeError" in text and "10 unfinished" in text and "0.50!" in text
    assert "p99 9.0 ms" in text and "of which after the event entered" in text
    real["console"]["runs_list"] = {
        "runs": 100_000,
        "index_total": 100_010,
        "requests": 5,
        "queries": {"status=failed (1 in 100)": {"p50_s": 0.2, "max_s": 0.3, "count": 5, "rows": 50}},
    }
    text = "\n".join(console.table(json.loads(json.dumps(real)), 0.25))
    assert "over an index of 100,010 runs" in text and "status=failed (1 in 100)" in text
    md = "\n".join(console.markdown(real))
    assert "| 50 | - / - | - | 1.0 / 9.0 |" in md
    assert "| status=failed (1 in 100) | 0.200 | 0.300 | 50 |" in md
    assert console.table({"console": {"page": {}, "hops": {"ok": False, "error": "boom"}}}, 0.25)[
        -1
    ].endswith("boom")


def burst_round(runs_per_s, ok=True):
    return {"ok": ok, "runs_per_s": runs_per_s if ok else 0, "seconds": 1.0, "publish_s": 0.1}


def test_burst_rounds_pair_the_ratios_by_round_and_report_each_systems_median_round():
    per_round = {
        "baton": [burst_round(1000), burst_round(1400), burst_round(1200)],
        "dramatiq": [burst_round(1100), burst_round(1000), burst_round(1250)],
        "celery": [burst_round(300), burst_round(0, ok=False), burst_round(400)],
    }
    ratios = runs.burst_ratios(per_round)
    # paired within a round (1000/1100, 1400/1000, 1200/1250), not median over median (1200/1100)
    assert ratios["baton_over_peer_rounds"]["dramatiq"] == [0.91, 1.4, 0.96]
    assert ratios["baton_over_peer"]["dramatiq"] == 0.96
    assert ratios["baton_over_peer_rounds"]["celery"] == [3.33, 3.0]  # the failed round is left out
    per_round["celery"][1]["error"] = "RuntimeError: 12 of 300 runs had not finished"
    median = runs._median_round(per_round["celery"])
    assert median["runs_per_s"] == 300 and median["failed_rounds"] == 1
    assert median["round_error"] == "RuntimeError: 12 of 300 runs had not finished"
    text = "\n".join(
        bench_run.runs_table({"burst": {**RESULTS["burst"], "rounds": 3, "systems": {"celery": median}}})
    )
    assert "FAILED in 1 of 3 rounds: RuntimeError: 12 of 300 runs" in text
    assert median["rounds_runs_per_s"] == [300, None, 400]
    assert runs._median_round(per_round["baton"])["runs_per_s"] == 1200
    failed = runs._median_round([burst_round(0, ok=False)])
    assert failed["ok"] is False and "rounds_runs_per_s" not in failed


def test_a_burst_of_several_rounds_shows_each_round_and_the_ratio_range():
    burst = {
        **RESULTS["burst"],
        "rounds": 3,
        "baton_over_peer": {"dramatiq": 0.96},
        "baton_over_peer_rounds": {"dramatiq": [0.91, 1.4, 0.96]},
    }
    burst["systems"] = {**burst["systems"], "baton": {**burst["systems"]["baton"]}}
    burst["systems"]["baton"]["rounds_runs_per_s"] = [1000, None, 1200]
    text = "\n".join(bench_run.runs_table({"burst": burst}))
    assert "median of 3 rounds" in text
    assert "rounds: 1,000, failed, 1,200" in text
    assert "ratio by round: 0.91, 1.40, 0.96" in text
    md = "\n".join(bench_run.runs_markdown({"burst": burst}))
    assert "| 0.96 (0.91-1.40) |" in md
