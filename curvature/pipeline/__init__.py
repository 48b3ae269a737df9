"""Post-hoc analysis of a trained model, and comparison of several analyses.

Split by concern:

* :mod:`~curvature.pipeline.config` -- :data:`METRICS` and :class:`AnalysisConfig`
  (what to compute, budgets, seed, dtype, device);
* :mod:`~curvature.pipeline.compute` -- :func:`analyze`: runs the estimators
  (Lanczos extremes, Hutch++ trace, SLQ density, loss landscapes) on the training and
  test data and returns an :class:`Analysis`;
* :mod:`~curvature.pipeline.costs` -- measured seconds of a Hessian product, a gradient
  and a landscape point on the actual model and data;
* :mod:`~curvature.pipeline.plan` -- the budget (``AnalysisConfig.budget``,
  ``--budget``) shared across the metrics: products per metric, planned and used;
* :mod:`~curvature.pipeline.meter` -- the one progress bar of an analysis;
* :mod:`~curvature.pipeline.summary` -- the result types :class:`Analysis` /
  :class:`SplitAnalysis` and their JSON summary;
* :mod:`~curvature.pipeline.write` -- :func:`write_analysis`: ``summary.json``, CSV
  tables, figures (drawn by :mod:`curvature.plots`) and ``report.md``;
* :mod:`~curvature.pipeline.from_checkpoint` -- :func:`analyze_checkpoint` (the
  ``curvature analyze`` command): checkpoint, data, loss, distributed shards;
* :mod:`~curvature.pipeline.comparison` -- :func:`compare` (``curvature compare``).

Folders are written atomically (:func:`curvature.atomic.atomic_directory`): everything
goes to a temporary directory next to the target, renamed over the target at the end,
so an error never leaves a half-written report. :func:`make_loss`,
:func:`check_data_fits` and :class:`InputError` live in :mod:`curvature.inputs`
(shared with training) and are re-exported here.
"""

from curvature.atomic import atomic_directory
from curvature.inputs import InputError, check_data_fits, make_loss
from curvature.pipeline.comparison import compare
from curvature.pipeline.compute import analyze
from curvature.pipeline.config import METRICS, AnalysisConfig
from curvature.pipeline.from_checkpoint import analyze_checkpoint
from curvature.pipeline.summary import Analysis, SplitAnalysis
from curvature.pipeline.write import write_analysis

__all__ = [
    "METRICS",
    "Analysis",
    "AnalysisConfig",
    "InputError",
    "SplitAnalysis",
    "analyze",
    "analyze_checkpoint",
    "atomic_directory",
    "check_data_fits",
    "compare",
    "make_loss",
    "write_analysis",
]
