"""Which optimizers reach flat minima, and do flat minima generalise better?

Trains every optimizer of the seeds (SGD, momentum SGD, Adam, SAM, SA-SGD, SA-SAM,
AcceleratedSAM, alpha-SAM with alpha = 2 and AntiSAM alpha = -1, AdaHessian, SGDHess,
IRE) on small workloads for several seeds, then measures each minimum with the
toolkit: ``lambda_max`` (Lanczos) and ``Tr(H)`` (Hutch++) of the loss Hessian on
training and on test data, the spectral density (stochastic Lanczos quadrature) and
the loss along the top Hessian eigenvectors. Writes ``reports/minima/``.

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE python -m analysis.minima
    python -m analysis.minima --quick --out /tmp/minima   # CI smoke run (seconds)
"""
