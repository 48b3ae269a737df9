"""curvature: Hessian curvature analysis for PyTorch.

One Hessian-vector-product engine (:mod:`curvature.engine`) behind symmetric
linear operators (:mod:`curvature.operators`) feeds every estimator.
"""

from curvature.dense import dense_hessian
from curvature.engine import NonFiniteLossError
from curvature.operators import CurvatureOperator, DenseOperator, GGNOperator, HessianOperator

__version__ = "0.1.0"

__all__ = [
    "CurvatureOperator",
    "DenseOperator",
    "GGNOperator",
    "HessianOperator",
    "NonFiniteLossError",
    "dense_hessian",
]
