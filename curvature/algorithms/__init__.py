"""The estimation algorithms, one file each, named after what they compute.

Each sees only a :class:`~curvature.CurvatureOperator` (its shape, dtype, device, products
and ``product_error``), never a model or data; the public front doors of
:mod:`curvature.estimators` (``cv.eigenvalues``, ``cv.trace``, ``cv.diagonal``,
``cv.spectral_density``) check the arguments and dispatch here.

* :mod:`~curvature.algorithms.lanczos`: block thick-restart Lanczos (extreme eigenpairs);
* :mod:`~curvature.algorithms.power_iteration`: deflated, shifted power iteration;
* :mod:`~curvature.algorithms.hutchinson`: Hutchinson's trace and the diagonal estimator
  of Bekas, Kokiopoulou & Saad;
* :mod:`~curvature.algorithms.hutchpp`: Hutch++ (Meyer, Musco, Musco & Woodruff);
* :mod:`~curvature.algorithms.slq`: stochastic Lanczos quadrature (Ubaru, Chen & Saad);
* shared by them: :mod:`~curvature.algorithms.probes` (seeded random probes, probe blocks,
  sample statistics) and :mod:`~curvature.algorithms.ritz` (wanted order, residual test).

The package does not re-export the functions, so ``curvature.algorithms.lanczos`` is
always the module.
"""
