"""Benchmarks: scripts that print timings (python -m benchmarks.<name>)."""
