"""Benchmarks (see bench/README.md); run them from the repository root as `python -m bench.NAME`."""
