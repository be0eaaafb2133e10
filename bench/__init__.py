"""Benchmarks (not tests): each script prints comparable figures."""
