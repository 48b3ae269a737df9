"""Every optimizer's internal curvature estimate against ground truth over training.

Trains each optimizer of :mod:`curvature.optim` (plus plain SGD and Adam, which have
no estimate but get the full-data curvature) on two workloads -- the digits MLP
(2,410 parameters) and a wider two-hidden-layer MLP on a 10-class synthetic problem
(6,922 parameters) -- with a :class:`curvature.monitor.CurvatureMonitor` attached,
and compares every estimate with the exact quantity at the weights where it was made,
on the optimizer's batch and on a fixed probe set.  It also measures *why*
SAM-type ``lambda_max`` read-outs ``||H g|| / ||g||`` fall short (the alignment of the
gradient with the top eigenvector) and evaluates the corrected estimator
:class:`curvature.optim.online_eigen_sam.OnlineEigenSAM` (LeCun-style online power
iteration, one extra gradient per step) on the same trajectory as SAM.  Issue 14 added
the fixed ASAM, SAM's sign ascent (``p = inf``), Saddam, SGDHess (Tran & Cutkosky),
ExtendedSGDHess, DiagHessianSGD and LeCun's
:func:`curvature.optim.calibrate_learning_rate` (at the initial weights, against the
engine's Lanczos ``lambda_max`` on the same examples; ``calibrate.csv``).

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE python -m analysis.estimates_vs_truth
    python -m analysis.estimates_vs_truth --quick --out /tmp/evt   # CI smoke run
"""
