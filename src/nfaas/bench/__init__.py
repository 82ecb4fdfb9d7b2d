"""Benchmarks: experiments, load generators, reports."""
