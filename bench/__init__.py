"""Benchmarks that print JSON lines (one per measurement) for side-by-side comparison."""
