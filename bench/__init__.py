"""Benchmarks (run as scripts: ``python bench/bench_training.py``, ``python bench/bench_scores.py``)."""
