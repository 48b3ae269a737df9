"""Which optimizers reach flat minima, and do flat minima generalise better?

Trains SGD, SAM, alpha-SAM (alpha = 2), AntiSAM (alpha = -1), alpha-SAM with negative rho
and alpha = -1, DiagHessianSGD and AdaHessian on digits (MLP) and MNIST-1D (MLP and 1-D
CNN), each at a learning rate chosen on a validation split, for 5 seeds paired by seed
(same initial weights and batch order). Each run is measured at a fixed budget and at
equal training loss: lambda_max and Tr(H) of the loss Hessian and the adaptive worst-case
and average-case sharpness (:mod:`curvature.sharpness`). Paired t-tests on log ratios,
Benjamini-Hochberg over the report; rows for the claims ledger in ``claims_rows.csv``.

    OMP_NUM_THREADS=1 python -m analysis.minima
    python -m analysis.minima --quick --out /tmp/minima   # CI smoke run (seconds)
    python -m analysis.minima --report-only               # rebuild from the CSVs
"""
