"""curvature: Hessian curvature analysis for PyTorch.

One data loop (:mod:`curvature.data_loop`) under symmetric linear operators
(:mod:`curvature.operators`) feeds every estimator: the front doors ``eigenvalues``,
``trace``, ``diagonal`` and ``spectral_density`` (:mod:`curvature.estimators`) dispatch
to one algorithm per file in :mod:`curvature.algorithms`. Optimizers with exposed
curvature estimates live in :mod:`curvature.optim`.
"""

from curvature import optim  # noqa: E402  (subpackage: cv.optim.SAM, ...)
from curvature.block_results import BlockSpectra, BlockSpectrum
from curvature.blockwise import block_spectra
from curvature.checkpoint import (
    CheckpointError,
    CheckpointNotFoundError,
    LoadedCheckpoint,
    load_checkpoint,
    save_checkpoint,
)
from curvature.data import Dataset, load_dataset
from curvature.errors import (
    DoubleBackwardError,
    InputError,
    ModelFactoryError,
    NonFiniteError,
    NonFiniteLossError,
    NonFiniteProductError,
)
from curvature.estimators import diagonal, eigenvalues, spectral_density, trace
from curvature.landscape import Landscape, loss_landscape_1d, loss_landscape_2d
from curvature.models import MODELS, build_model, count_parameters
from curvature.monitor import CurvatureMonitor
from curvature.operators import (
    CurvatureOperator,
    DenseOperator,
    GGNOperator,
    HessianOperator,
    dense_hessian,
)
from curvature.results import (
    ConvergenceWarning,
    DiagonalResult,
    EigenResult,
    SpectralDensity,
    TraceResult,
)
from curvature.sharpness import SharpnessResult, adaptive_sharpness

__version__ = "0.1.0"

__all__ = [
    "BlockSpectra",
    "BlockSpectrum",
    "block_spectra",
    "CheckpointError",
    "CheckpointNotFoundError",
    "Dataset",
    "Landscape",
    "LoadedCheckpoint",
    "MODELS",
    "ConvergenceWarning",
    "CurvatureMonitor",
    "CurvatureOperator",
    "DenseOperator",
    "DiagonalResult",
    "DoubleBackwardError",
    "EigenResult",
    "GGNOperator",
    "HessianOperator",
    "InputError",
    "ModelFactoryError",
    "NonFiniteError",
    "NonFiniteProductError",
    "NonFiniteLossError",
    "SharpnessResult",
    "SpectralDensity",
    "TraceResult",
    "adaptive_sharpness",
    "build_model",
    "count_parameters",
    "dense_hessian",
    "diagonal",
    "load_checkpoint",
    "load_dataset",
    "loss_landscape_1d",
    "loss_landscape_2d",
    "optim",
    "save_checkpoint",
    "eigenvalues",
    "spectral_density",
    "trace",
]
