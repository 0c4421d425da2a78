"""Benchmark scripts (run as ``python benchmarks/<name>.py``) and the reference simulator the tests use."""
