"""Symmetric linear operators on flat parameter vectors, one room each.

Every estimator in :mod:`curvature` takes a :class:`CurvatureOperator` and nothing
else (the scipy.sparse.linalg convention). Rooms:

* :mod:`.base` -- :class:`CurvatureOperator` and the shared construction of
  model-based operators on a :class:`curvature.risk.EmpiricalRisk`,
* :mod:`.hessian` -- :class:`HessianOperator`, with its exact products and their
  measured path choice in :mod:`.hessian_products` and the finite-difference products
  in :mod:`.finite_differences`,
* :mod:`.ggn` -- :class:`GGNOperator`, the generalised Gauss-Newton ``J^T H_out J``,
* :mod:`.dense` -- :class:`DenseOperator` (an explicit symmetric matrix) and
  :func:`dense_hessian` (the exact dense Hessian of small models).
"""

from curvature.operators.base import CurvatureOperator
from curvature.operators.dense import DenseOperator, dense_hessian
from curvature.operators.ggn import GGNOperator
from curvature.operators.hessian import HessianOperator

__all__ = ["CurvatureOperator", "DenseOperator", "GGNOperator", "HessianOperator", "dense_hessian"]
