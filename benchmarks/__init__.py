"""Benchmarks: measurements only (no assertions). Results land in benchmarks/results/*.json."""
