"""Every exception and warning the package raises, in one room.

Each class says what went wrong in its name; each message names the offending input.
The other rooms import their errors from here (and re-export the ones their users
catch, so ``curvature.data_loop.NonFiniteLossError`` and ``cv.NonFiniteLossError`` are one
class).
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "ConvergenceWarning",
    "CurvatureWarning",
    "DataWarning",
    "DoubleBackwardError",
    "InputError",
    "ModelFactoryError",
    "NonFiniteError",
    "NonFiniteLossError",
    "NonFiniteProductError",
]


class CurvatureWarning(UserWarning):
    """Base of the warnings curvature itself issues (an analysis records these, and only
    these, in its report)."""


class DataWarning(CurvatureWarning):
    """The data are not what the computation assumes (streamed data that change between
    passes, a summed loss over one batch); the message says what to pass instead."""


class ConvergenceWarning(CurvatureWarning):
    """An iterative estimator stopped before reaching its tolerance (budget spent, or the
    accuracy of its products does not allow it); the result says ``converged=False``."""


class NonFiniteError(FloatingPointError):
    """A NaN or infinity where a finite number is needed (base of the two below)."""


class NonFiniteLossError(NonFiniteError):
    """The loss of a batch is NaN or infinite (the message names the batch index)."""


class NonFiniteProductError(NonFiniteError):
    """An operator product (``H v``) or a quantity built from products is NaN or infinite."""


class DoubleBackwardError(RuntimeError):
    """The model contains an operation without a second derivative."""


class InputError(ValueError):
    """Bad input to the analysis (wrong data shape, missing data spec, bad folder...);
    the message names the problem."""


class CheckpointError(ValueError):
    """A checkpoint cannot be written, read or applied; the message names the problem."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist."""


class ModelFactoryError(ValueError):
    """A model factory string does not name a callable that builds an ``nn.Module``."""
