"""Runs of some row groups (``--rows``) update a report folder: rows of the workloads
just timed replace their earlier rows, every other row of an earlier run is kept."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["merge_frames", "merge_previous", "merge_truth", "merge_arrays"]


def merge_frames(old: pd.DataFrame, new: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """``old`` without the rows of workloads ``names``, then ``new`` (its column order
    first; columns only one of them has are kept, missing cells NaN)."""
    if old.empty or "workload" not in old.columns:
        return new
    kept = old[~old.workload.isin(names)]
    if kept.empty:
        return new
    if new.empty:
        return kept.reset_index(drop=True)
    return pd.concat([kept, new], ignore_index=True)[
        list(new.columns) + [c for c in kept.columns if c not in new.columns]]


def _read(path: Path, **kw: Any) -> pd.DataFrame:
    return pd.read_csv(path, **kw) if path.exists() else pd.DataFrame()


def merge_previous(out: Path, df: pd.DataFrame, prof: pd.DataFrame, mat: pd.DataFrame,
                   names: list[str]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The results, profile and k-column tables of ``out`` merged with this run's."""
    old = _read(out / "results.csv", dtype={"sweep": str, "note": str, "error_metric": str})
    if not old.empty:
        for col in ("sweep", "note", "error_metric"):
            old[col] = old[col].fillna("")
        old = old.drop(columns=["density_lmax_rel_error"], errors="ignore")  # recomputed
    return (merge_frames(old, df, names), merge_frames(_read(out / "profile.csv"), prof, names),
            merge_frames(_read(out / "matmat.csv"), mat, names))


def merge_truth(path: Path, info: dict[str, dict]) -> dict[str, dict]:
    """``truth.json`` of an earlier run updated with ``info`` (this run's workloads)."""
    old = json.loads(path.read_text()) if path.exists() else {}
    return {**old, **info}


def merge_arrays(path: Path, arrays: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    """``densities.npz`` of an earlier run without the workloads ``names``, plus ``arrays``."""
    if not path.exists():
        return arrays
    with np.load(path) as z:
        old = {k: z[k] for k in z.files if k.split("/")[0] not in names}
    return {**old, **arrays}
