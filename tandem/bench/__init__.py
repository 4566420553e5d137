"""Benchmarks: load generation, reports and micro-benchmarks (never run by the tests)."""
