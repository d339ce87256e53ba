"""Benchmarks: Baton against the task queues people would pick instead, and against Redis's own limit.

`python -m bench` (or `make bench`) starts its own Redis and MinIO on free ports, runs every scenario in
separate OS processes, prints one table and writes `bench/results.json`. See `bench/README.md` for what
each scenario measures and how.
"""
