"""The systems Baton is compared with, each in its usual configuration with a no-op task.

Each module is run as its own OS process: `python -m bench.baselines.<name> prefill N` fills the queue with
the library's own client; the consumers are started with the library's own worker (or, for `raw`, a plain
redis-py loop). Completions are counted in the consumer process and added to a Redis counter every 5 ms
(`counter.py`), so that counting costs the baselines next to nothing.
"""
