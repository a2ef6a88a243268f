"""Benchmarks of sse-relay against in-process baselines (not tests: run with `python -m bench.run`)."""
