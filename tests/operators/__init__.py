"""Tests of curvature.operators, one file per room."""
