"""Benchmarks: one command each (`python -m bench.search`, ...); never part of the test run."""
