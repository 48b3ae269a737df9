"""Benchmark curvature against PyHessian and curvlinops: same tasks, models, data and tolerances.

Run (one command; writes ``reports/benchmark/``)::

    python -m analysis.benchmark                # every row group (an hour or more on 2 cores)
    python -m analysis.benchmark --rows small   # some groups: small, sweep, scale, big
    python -m analysis.benchmark --quick        # tiny smoke variant (seconds; used by the tests)
    python -m analysis.benchmark --report-only  # rebuild report.md and figures from the CSVs

Row groups (:mod:`.config`): ``small`` (MLP, ResNet-20 width 4 and ViT small enough for
dense references, plus the MLP as a ``DataLoader``), ``sweep`` (MLP over N and n),
``scale`` (11k, 106k and 1M parameters: MLP, ResNet-20 widths 10 and 32, a
``transformers`` GPT-2) and ``big`` (ResNet-18, CIFAR variant, 11.2M parameters). Every
scale/big model is timed with tensor batches and again as a non-shuffling ``DataLoader``
(the 11k MLP also shuffling). A run of some groups merges its rows into the report
folder, replacing only the workloads it timed, after every model.

Threads default to ``OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE`` (set before torch is
imported unless the caller set them). Every tool runs in this one process, on the same
``nn.Module`` in eval mode, the same list of float32 batches and ``nn.CrossEntropyLoss``.

Tasks (one row per tool, task and workload in ``results.csv``):

* ``gradient`` -- one full-dataset gradient (plain ``loss.backward``), the cost unit;
* ``hvp`` -- build an operator and multiply one vector (a one-off product);
* ``hvp_warm`` -- one more product on an operator already used once (the per-product
  cost inside an iterative solver);
* ``lambda_max`` -- the largest eigenvalue at relative tolerance ``1e-3``;
* ``top10`` -- the ten largest eigenvalues at relative tolerance ``1e-3``;
* ``trace`` -- the trace to 1% relative standard error (see :func:`task_trace`);
* ``density`` -- the spectral density from 10 probes x 80 Lanczos steps (fewer on the
  scale rows);
* ``blocks`` -- per-layer spectra (``curvature.block_spectra``), curvature only.

Each row carries its accuracy against ground truth: the dense float64 Hessian
(``cv.dense_hessian`` + ``eigvalsh``) where ``n <= DENSE_LIMIT``, otherwise ARPACK
(``scipy.sparse.linalg.eigsh``, tolerance 1e-6, an algorithm independent of ours) for
eigenvalues and a 200-product Hutch++ estimate (with its standard error) for the trace.

Times are medians over repeats, the tools interleaved within each repeat so that load
from other processes hits them alike; a task whose first run exceeds ``--long`` seconds
is run once. Peak memory is the rise of the resident set size during one run: before
it, garbage is collected, ``malloc_trim(0)`` returns freed heap pages to the kernel and
``/proc/self/clear_refs`` resets the high-water mark ``VmHWM`` to the current ``VmRSS``;
after it, ``VmHWM - VmRSS_before`` is what the task needed on top of what was live.

Modules: :mod:`.config` (sizes, workloads), :mod:`.truth` (ground truth, accuracy),
:mod:`.tasks` (the timed tasks), :mod:`.probes` (profile, k-column scaling, FD check),
:mod:`.tables` (ratios, targets), :mod:`.discussion`, :mod:`.figures`, :mod:`.text`
(fixed prose) and :mod:`.report` (``report.md`` and the saved artefacts); the shared
adapters, timing and memory probes are in :mod:`analysis.harness`.
"""

import os

# Thread settings must be in place before torch is first imported (by the submodules).
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
