"""curvature: Hessian curvature analysis for PyTorch."""

__version__ = "0.1.0"
