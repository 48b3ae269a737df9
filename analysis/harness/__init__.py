"""Shared harness of the drivers in :mod:`analysis`.

Rooms by concern:

* :mod:`.cli` -- the common command line and the command that regenerates a report;
* :mod:`.timing` -- wall-clock timers, medians over repeats, time limits, extrapolation;
* :mod:`.memory` -- peak resident-set probes;
* :mod:`.stats` -- means with Student-t intervals and their formatting;
* :mod:`.measures` -- ``lambda_max`` and ``Tr(H)`` of a trained model;
* :mod:`.peers` -- one adapter per tool (curvature, PyHessian, curvlinops);
* :mod:`.workloads` -- the models and data the benchmarks time;
* :mod:`.report` -- markdown tables, atomic writes and the report footer.
"""
