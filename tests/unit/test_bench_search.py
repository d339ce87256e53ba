"""The search benchmark's report (bench/search.py) and its options (`--search-files`, `--quick`)."""

from bench import search
from bench.run import parse_args


def burst(files: int, indexed: int, not_found: int = 0) -> dict:
    ms = {"p50_ms": 15.0, "p99_ms": 168.0, "max_ms": 184.0}
    return {
        "files": files,
        "write_s": 3.6,
        "writes_per_s": 276.3,
        "indexed": indexed,
        "all_indexed_after_s": 3.6,
        "indexed_per_s": 275.6,
        "lag": ms,
        "write_to_announced": ms,
        "announced_to_indexed": ms,
        "indexer_cpu_ms_per_file": 1.65,
        "search": {"searches_per_s": 645.6, "latency": ms, "not_found": not_found, "errors": 0},
    }


def test_a_burst_line_shows_what_was_indexed_the_lag_and_what_was_not_found():
    lines = search.table({"search": {"concurrency": 32, "bursts": [burst(1000, 998, not_found=2)]}})
    assert "32 writers" in lines[1]
    assert "998 indexed" in lines[2] and "lag p50/p99/max 15.0/168.0/184.0 ms" in lines[2]
    assert "not found 2" in lines[2]


def test_no_search_results_print_nothing():
    assert search.table({}) == []


def test_the_options():
    assert parse_args(["--only", "search"]).search_files == "1000,10000"
    assert parse_args(["--only", "search", "--quick"]).search_files == "100"
