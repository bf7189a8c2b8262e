"""Throughput and latency harness (not part of the installed package; run from the repo root).

``python -m bench.model_only``, ``python -m bench.batch_job``, ``python -m bench.rest`` each write
one JSON file into ``bench/results/``; ``python -m bench.report`` renders them into
``docs/benchmarks.md`` and the ``docs/bench_*.png`` plots. ``make bench`` runs all four.
"""
