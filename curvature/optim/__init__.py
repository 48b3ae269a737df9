"""Sharpness-aware and curvature-adaptive optimizers that expose their curvature estimates.

Every optimizer is a ``torch.optim.Optimizer`` with the closure protocol
(``loss = opt.step(closure)``) and, after each step, ``opt.estimates``: a dict of the
method's internal curvature estimates (keys ``lambda_max``, ``smoothness``, ``hvp``,
``hvp_direction``, ``hessian_diag``, ``noise_variance``, ``smoothness_direction``;
floats for scalars, flat tensors in param_groups order for vectors), and
``opt.estimate_params``, the flat iterate at which they were taken.  See
:mod:`curvature.optim._common` for the conventions.

``lambda_max`` of the SAM-pair methods is ``||H u||`` along the ascent (or last-step)
direction ``u``: an unsigned lower bound on the largest |eigenvalue|, not the
eigenvalue (see :mod:`curvature.optim.sam`).

==================  ====================================  ================================
class               gradients per step                    estimates
==================  ====================================  ================================
SAM / AlphaSAM      2 (``p``-norm ascent, ASAM ``eta``)   hvp, hvp_direction, lambda_max
OnlineEigenSAM      3                                     hvp, hvp_direction, lambda_max
AcceleratedSAM      2                                     hvp, hvp_direction, lambda_max
ForwardSAM          1                                     hvp, hvp_direction, lambda_max
Saddam              1 (any base optimizer, e.g. Adam)     hvp, hvp_direction, lambda_max
SASGD               2 (1 with same_batch_secant=False)    smoothness, smoothness_direction
SASAM               3 (2 with same_batch_secant=False)    smoothness, smoothness_direction,
                                                          hvp, hvp_direction, lambda_max
SGDHess             1 with create_graph + 1 HVP           hvp, hvp_direction (exact)
ExtendedSGDHess     1                                     noise_variance (no bias corr.)
DiagHessianSGD      1 with create_graph + 1 HVP           hessian_diag
AdaHessian          1 with create_graph + 1 HVP           hessian_diag
IRE                 1 (+ 1 HVP with diag="hutchinson")    hessian_diag (diag="fisher":
                                                          squared-gradient EMA)
==================  ====================================  ================================

:func:`calibrate_learning_rate` (LeCun's calibrate-then-fix, not an optimizer) runs a
power iteration from gradient differences before training and returns ``lr = 1/||v||``
with ``lambda_max = ||v||`` and its history.
"""

from curvature.optim._common import CurvatureOptimizer, disable_running_stats
from curvature.optim.accelerated_sam import AcceleratedSAM
from curvature.optim.adahessian import AdaHessian
from curvature.optim.calibrate import CalibrationResult, calibrate_learning_rate
from curvature.optim.diag_hessian_sgd import DiagHessianSGD
from curvature.optim.extended_sgdhess import ExtendedSGDHess
from curvature.optim.forward_sam import ForwardSAM
from curvature.optim.ire import IRE
from curvature.optim.online_eigen_sam import OnlineEigenSAM
from curvature.optim.saddam import Saddam
from curvature.optim.sam import SAM, AlphaSAM
from curvature.optim.sgdhess import SGDHess
from curvature.optim.smoothness_adaptive import SASAM, SASGD

__all__ = [
    "SAM",
    "AlphaSAM",
    "AcceleratedSAM",
    "ForwardSAM",
    "SASGD",
    "SASAM",
    "Saddam",
    "SGDHess",
    "ExtendedSGDHess",
    "DiagHessianSGD",
    "AdaHessian",
    "IRE",
    "OnlineEigenSAM",
    "calibrate_learning_rate",
    "CalibrationResult",
    "CurvatureOptimizer",
    "disable_running_stats",
]
