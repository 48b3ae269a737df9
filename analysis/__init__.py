"""Drivers of experiments and benchmarks, each run as ``python -m analysis.X``.

Experiments (each writes one folder under ``reports/``): :mod:`.minima`,
:mod:`.estimates_vs_truth`, :mod:`.edge_of_stability`, :mod:`.lr_wd_heatmap`.
Benchmarks: :mod:`.benchmark` (``reports/benchmark/``), :mod:`.bench_engine` and
:mod:`.bench_estimators` (side-by-side tables on stdout). They share
:mod:`analysis.harness` (command line, timing, memory, statistics, peers' adapters,
workloads, report writing).
"""
