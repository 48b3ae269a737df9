r"""CurvatureMonitor: an optimizer's internal curvature estimates against ground truth.

Every ``every`` steps of a training loop the monitor recomputes, with the curvature operators,
the exact quantity each of the optimizer's estimates (``opt.estimates``, see
:mod:`curvature.optim`) approximates, on the mini-batch the optimizer used and on the
monitor's ``data``, and appends one row to :attr:`CurvatureMonitor.history`::

    mon = CurvatureMonitor(model, loss_fn, (x_probe, y_probe), optimizer=opt, every=50)
    for step, (x, y) in enumerate(loader, start=1):
        opt.step(closure)            # closure on (x, y)
        mon.step(step, (x, y))       # after opt.step
    mon.history                      # pandas DataFrame, one row per probed step

**Where the truth is taken.** The optimizer's estimate at step ``t`` is made at the
weights *before* its update, ``w_t``, while ``mon.step`` runs after it (weights
``w_{t+1}``).  The ground truth is computed at ``w_t``:

* optimizers of :mod:`curvature.optim` record ``w_t`` themselves
  (``opt.estimate_params``); the monitor reads it and copies nothing;
* for any other ``torch.optim.Optimizer`` (SGD, Adam, which have no estimate but still
  get ``lambda_max_full`` / ``trace_full``) the monitor registers a step pre-hook that
  copies the flat weights *only before steps that will be probed* (one copy per probe;
  nothing between probes).  The hook numbers steps like the loop: it assumes the step
  after ``mon.step(s, ...)`` is ``s + 1`` and that numbering starts at 1; a loop that
  numbers differently can call :meth:`CurvatureMonitor.before_step` itself before
  ``opt.step``.  Without a snapshot (e.g. a 0-based loop at its first probe) the truth
  is taken at the current weights, with a one-time warning;
* the Hessian at ``w_t`` is evaluated on a temporary deep copy of the model holding
  ``w_t`` (and the model's current buffers); the model itself is never written.

**Columns** (``history``): ``step``; ``lambda_max_full`` (Lanczos, largest algebraic
eigenvalue on ``data``) and ``trace_full`` (Hutch++) for every optimizer; for each
scalar estimate ``K``: ``K``, ``K_truth_batch``, ``K_truth_full``; for each vector
estimate ``K``: ``K_rel_error = ||K - K*|| / ||K*||``, ``K_cosine`` and
``K_norm_ratio = ||K|| / ||K*||`` against the exact vector ``K*`` on the batch, and the
same three with the suffix ``_full`` against ``data``.  The exact quantities are

=================  =========================================================================
key                truth
=================  =========================================================================
``lambda_max``     top (algebraic) Hessian eigenvalue by Lanczos
``smoothness``     the exact secant ``||H dw|| / ||dw||`` with ``dw =`` ``smoothness_direction``
                   (compare with ``lambda_max_batch`` / ``lambda_max_full`` too)
``hvp``            ``H u`` with ``u =`` ``hvp_direction``
``hessian_diag``   ``diag(H)``: exact (``n`` unit-vector products) for
                   ``n <= exact_diag_max_params``, else :func:`curvature.diagonal`
``noise_variance`` ``diag(GGN) / B`` on ``data`` (``B`` the batch size of the step: the
                   covariance of a mean of ``B`` per-example gradients is ``Sigma / B`` and
                   ``Sigma ~ F = GGN`` for cross-entropy); ``_exact`` columns compare with
                   the per-example gradient variance on ``data`` divided by ``B``
=================  =========================================================================

and, when a batch truth is computed, ``lambda_max_batch``; for ``hvp`` also
``hvp_direction_top_cosine`` / ``_full``: ``|u . v_1|`` with ``v_1`` the top eigenvector
(``||H u|| <= lambda_max`` with equality only when ``u`` is ``v_1``: the usual reason
SAM-type ``lambda_max`` estimates fall short).  ``probe_time_s`` is the probe's cost.

**Side effects.** None on the training run: the model's weights, buffers and mode,
the optimizer's state and the torch / numpy / python ``random`` (and CUDA) generator
states are as before each probe, so training with and without the monitor gives
bit-identical weights.  Steps that are not probed cost one modulo.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, hessian, jacrev, vmap
from tqdm.auto import tqdm

from curvature.batches import as_batches, batch_size_of, map_tensors, model_args
from curvature.data_loop import DataLoop
from curvature.estimators import diagonal, eigenvalues, trace
from curvature.operators import CurvatureOperator, HessianOperator

__all__ = ["CurvatureMonitor", "exact_diagonal", "preserved_rng"]

_DIRECTION_KEYS = ("hvp_direction", "smoothness_direction")
_VECTOR_KEYS = ("hvp", "hessian_diag", "noise_variance")


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore the torch, numpy, python ``random`` and CUDA generator states on exit."""
    torch_state = torch.get_rng_state()
    np_state = np.random.get_state()
    py_state = random.getstate()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        np.random.set_state(np_state)
        random.setstate(py_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


def exact_diagonal(op: CurvatureOperator, block_size: int = 256) -> Tensor:
    """``diag(H): Tensor[n]`` exactly, from ``n`` products with unit vectors (in blocks).

    Costs ``n`` operator products (``block_size`` at a time); for small ``n`` only.
    """
    n = op.shape[0]
    out = torch.empty(n, dtype=op.dtype, device=op.device)
    for start in range(0, n, block_size):
        b = min(block_size, n - start)
        idx = torch.arange(b, device=op.device)
        E = torch.zeros(n, b, dtype=op.dtype, device=op.device)
        E[start + idx, idx] = 1.0
        out[start:start + b] = op.matmat(E)[start + idx, idx]
    return out


def _compare(est: Tensor, truth: Tensor) -> tuple[float, float, float]:
    """Relative error ``||e - t|| / ||t||``, cosine and norm ratio ``||e|| / ||t||``."""
    est, truth = est.double(), truth.double()
    tn = float(torch.linalg.vector_norm(truth))
    en = float(torch.linalg.vector_norm(est))
    rel = float(torch.linalg.vector_norm(est - truth)) / tn if tn > 0 else math.nan
    cos = float(est @ truth) / (en * tn) if en > 0 and tn > 0 else math.nan
    ratio = en / tn if tn > 0 else math.nan
    return rel, cos, ratio


class CurvatureMonitor:
    """Probe an optimizer's curvature estimates against exact values during training.

    Parameters
    ----------
    model : nn.Module
        The trained network (read, never modified).
    loss_fn : callable
        ``loss_fn(outputs, targets)``, the mean loss of a batch (the training loss).
    data : batch or iterable of batches
        The "full" data of the ``*_full`` columns (e.g. a fixed subset of the
        training set), with :class:`curvature.HessianOperator` semantics.
    optimizer : torch.optim.Optimizer, optional
        Whose ``estimates`` are checked; its parameters (param_groups order) define the
        flat vectors. ``None``: all trainable parameters, only the ``*_full`` columns.
    every : int
        Probe when ``step % every == 0``.
    batch_truth : bool
        Compute the ``*_truth_batch`` / batch comparisons (needs ``batch`` in :meth:`step`).
    tol : float
        Relative residual tolerance of the Lanczos runs.
    trace_matvecs : int
        Products spent by Hutch++ for ``trace_full`` (exact, from ``n`` unit-vector
        products, when ``n <= trace_matvecs``).
    exact_diag_max_params : int
        Up to this many parameters diagonals are exact; above, estimated from
        ``diag_probes`` Rademacher probes.
    diag_probes : int
        Probes of :func:`curvature.diagonal` for large models.
    dtype : torch.dtype, optional
        Precision of the ground truth (default: the model's; float64 for tests).
    seed : int
        Seeds every estimator (probe ``s`` uses ``seed * 1000003 + s``).
    progress : bool
        A tqdm bar per probe (one tick per computed quantity).
    cache_graphs : bool, optional
        Passed to :class:`curvature.HessianOperator`.
    vector_truth_full : bool
        Also compare vector estimates with the exact vector on ``data`` (the ``_full``
        columns; for ``hessian_diag`` that is ``n`` products on all of ``data``).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Any, Any], Tensor],
        data: Any,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        every: int = 50,
        batch_truth: bool = True,
        tol: float = 1e-4,
        trace_matvecs: int = 60,
        exact_diag_max_params: int = 4096,
        diag_probes: int = 400,
        dtype: torch.dtype | None = None,
        seed: int = 0,
        progress: bool = True,
        cache_graphs: bool | None = None,
        vector_truth_full: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError("loss_fn must be callable as loss_fn(outputs, targets)")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}"
            )
        for name, value, low in (("trace_matvecs", trace_matvecs, 4), ("diag_probes", diag_probes, 2),
                                 ("exact_diag_max_params", exact_diag_max_params, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        batches = as_batches(data)
        if isinstance(batches, (list, tuple)) and not batches:
            raise ValueError("data is empty: the monitor needs at least one batch")
        self.model = model
        self.loss_fn = loss_fn
        self.data = data
        self.optimizer = optimizer
        self.every = every
        self.batch_truth = bool(batch_truth)
        self.tol = float(tol)
        self.trace_matvecs = trace_matvecs
        self.exact_diag_max_params = exact_diag_max_params
        self.diag_probes = diag_probes
        self.dtype = dtype
        self.seed = int(seed)
        self.progress = bool(progress)
        self.cache_graphs = cache_graphs
        self.vector_truth_full = bool(vector_truth_full)

        by_id = {id(p): k for k, p in model.named_parameters()}
        if optimizer is None:
            self._params = [p for p in model.parameters() if p.requires_grad]
        else:
            self._params = [p for g in optimizer.param_groups for p in g["params"]]
        missing = [i for i, p in enumerate(self._params) if id(p) not in by_id]
        if missing:
            raise ValueError(
                f"optimizer parameters {missing} (param_groups order) are not parameters of "
                "the model: the monitor evaluates the model's Hessian with respect to them"
            )
        if not self._params:
            raise ValueError("no parameters to monitor")
        self.param_names = [by_id[id(p)] for p in self._params]

        self._rows: list[dict[str, Any]] = []
        self._snapshots: dict[int, Tensor] = {}
        self._opt_calls = 0
        self._offset = 0
        self._warned = False
        self._hook = None
        # curvature.optim optimizers record w_t themselves; others get a pre-step hook
        if optimizer is not None and not hasattr(optimizer, "estimate_params"):
            self._hook = optimizer.register_step_pre_hook(self._pre_hook)

    # ---------------------------------------------------------------- snapshots
    def _flat_params(self) -> Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self._params])

    def _pre_hook(self, _opt: Any, _args: Any, _kwargs: Any) -> None:
        self._opt_calls += 1
        upcoming = self._opt_calls + self._offset
        if upcoming % self.every == 0 and upcoming not in self._snapshots:
            self._snapshots = {upcoming: self._flat_params().clone()}

    def before_step(self, step: int) -> None:
        """Snapshot the weights ``w_t`` before ``opt.step`` of step ``step`` (if probed).

        Only needed for optimizers that do not record ``estimate_params`` *and* loops
        whose numbering the automatic pre-step hook cannot follow.
        """
        if step % self.every == 0:
            self._snapshots = {step: self._flat_params().clone()}

    def close(self) -> None:
        """Remove the optimizer hook (the monitor then needs :meth:`before_step`)."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    # --------------------------------------------------------------------- step
    def step(self, step: int, batch: Any = None) -> dict[str, Any] | None:
        """Probe at ``step`` if ``step % every == 0``; call right after ``opt.step``.

        Args:
            step: the training step just taken (the loop's numbering).
            batch: the ``(inputs, targets)`` the optimizer used in this step (needed
                for the batch columns).

        Returns:
            The new history row (a dict), or ``None`` when the step is not probed.
        """
        self._offset = step - self._opt_calls
        if step % self.every != 0:
            return None
        with preserved_rng():
            row = self._probe(int(step), batch)
        self._rows.append(row)
        return row

    def _weights(self, step: int) -> Tensor:
        opt = self.optimizer
        w = getattr(opt, "estimate_params", None) if opt is not None else None
        if w is None:
            w = self._snapshots.pop(step, None)
        self._snapshots.clear()
        if w is None:
            if opt is not None and not self._warned:
                warnings.warn(
                    f"CurvatureMonitor: no snapshot of the weights before step {step}; the "
                    "ground truth is taken at the current weights (call mon.before_step(step) "
                    "before opt.step, or number steps from 1)", stacklevel=3,
                )
                self._warned = True
            w = self._flat_params()
        return w.detach()

    @contextlib.contextmanager
    def _copy_at(self, w: Tensor) -> Iterator[tuple[nn.Module, list[Tensor]]]:
        """A deep copy of the model whose monitored parameters hold ``w``."""
        shadow = copy.deepcopy(self.model)
        for p in shadow.parameters():
            p.grad = None
        own = dict(shadow.named_parameters())
        params = [own[k] for k in self.param_names]
        with torch.no_grad():
            for p, chunk in zip(params, torch.split(w, [p.numel() for p in params])):
                p.copy_(chunk.view_as(p))
        try:
            yield shadow, params
        finally:
            del shadow

    def _probe(self, step: int, batch: Any) -> dict[str, Any]:
        start = time.perf_counter()
        opt = self.optimizer
        est = dict(getattr(opt, "estimates", None) or {}) if opt is not None else {}
        w = self._weights(step)
        seed = (self.seed * 1_000_003 + step) % (2**31 - 1)
        scalar_keys = [k for k, v in est.items() if not isinstance(v, Tensor)]
        vector_keys = [k for k, v in est.items() if isinstance(v, Tensor) and k not in _DIRECTION_KEYS]
        use_batch = self.batch_truth and batch is not None and bool(
            {"lambda_max", "smoothness", "hvp", "hessian_diag"} & set(est)
        )
        stages = 2 + (1 if use_batch else 0) + len(vector_keys) + ("smoothness" in est)
        row: dict[str, Any] = {"step": step}
        with self._copy_at(w) as (shadow, params), tqdm(
            total=stages, desc=f"monitor step {step}", disable=not self.progress, leave=False
        ) as bar:

            def hessian(data: Any) -> HessianOperator:
                return HessianOperator(shadow, self.loss_fn, data, params=params, dtype=self.dtype,
                                       cache_graphs=self.cache_graphs)

            full = hessian(self.data)
            top_full = eigenvalues(full, 1, which="largest", tol=self.tol, seed=seed)
            v_full = top_full.vectors[:, 0]
            row["lambda_max_full"] = float(top_full.values[0])
            bar.update()
            if full.shape[0] <= self.trace_matvecs:  # as cheap as Hutch++: exact
                row["trace_full"] = float(exact_diagonal(full).double().sum())
            else:
                row["trace_full"] = float(
                    trace(full, num_matvecs=self.trace_matvecs, seed=seed).estimate)
            bar.update()
            op_b = v_batch = None
            if use_batch:
                op_b = hessian(batch)
                top_b = eigenvalues(op_b, 1, which="largest", tol=self.tol, seed=seed)
                v_batch = top_b.vectors[:, 0]
                row["lambda_max_batch"] = float(top_b.values[0])
                bar.update()
            dtype = full.dtype

            for k in scalar_keys:
                row[k] = float(est[k])
                if k == "lambda_max":
                    row["lambda_max_truth_batch"] = row.get("lambda_max_batch", math.nan)
                    row["lambda_max_truth_full"] = row["lambda_max_full"]
                elif k == "smoothness":
                    dw = est.get("smoothness_direction")
                    for name, op in (("batch", op_b), ("full", full)):
                        val = math.nan
                        if dw is not None and op is not None:
                            d = dw.detach().to(dtype=dtype, device=op.device)
                            dn = float(torch.linalg.vector_norm(d))
                            if dn > 0:
                                val = float(torch.linalg.vector_norm(op.matvec(d))) / dn
                        row[f"smoothness_truth_{name}"] = val
                    bar.update()

            for k in vector_keys:
                e = est[k].detach().to(dtype=dtype, device=full.device)
                truths: dict[str, Tensor] = {}
                if k == "hvp":
                    u = est.get("hvp_direction")
                    if u is not None:
                        u = u.detach().to(dtype=dtype, device=full.device)
                        if op_b is not None:
                            truths[""] = op_b.matvec(u)
                            row["hvp_direction_top_cosine"] = abs(float(u.double() @ v_batch.double()))
                        if self.vector_truth_full:
                            truths["_full"] = full.matvec(u)
                        row["hvp_direction_top_cosine_full"] = abs(float(u.double() @ v_full.double()))
                elif k == "hessian_diag":
                    if op_b is not None:
                        truths[""] = self._diagonal(op_b, seed)
                    if self.vector_truth_full:
                        truths["_full"] = self._diagonal(full, seed)
                elif k == "noise_variance":
                    b = batch_size_of(batch) if batch is not None else math.nan
                    ggn, var = _per_example_statistics(
                        shadow, params, self.param_names, self.loss_fn, self.data, dtype
                    )
                    truths[""] = ggn / b
                    truths["_exact"] = var / b
                for suffix, t in truths.items():
                    rel, cos, ratio = _compare(e, t)
                    row[f"{k}_rel_error{suffix}"] = rel
                    row[f"{k}_cosine{suffix}"] = cos
                    row[f"{k}_norm_ratio{suffix}"] = ratio
                bar.update()
        row["probe_time_s"] = time.perf_counter() - start
        return row

    def _diagonal(self, op: CurvatureOperator, seed: int) -> Tensor:
        if op.shape[0] <= self.exact_diag_max_params:
            return exact_diagonal(op)
        return diagonal(op, num_matvecs=self.diag_probes, seed=seed).estimate

    # ------------------------------------------------------------------ results
    @property
    def history(self) -> pd.DataFrame:
        """One row per probed step (columns: see the module docstring)."""
        return pd.DataFrame(self._rows)

    def to_csv(self, path: str | Path) -> Path:
        """Write :attr:`history` to ``path`` (CSV, no index)."""
        path = Path(path)
        self.history.to_csv(path, index=False)
        return path

    def plot(self, path: str | Path | None = None, *, title: str | None = None):
        """Estimates against their ground truths over the probed steps.

        One panel per scalar estimate (the optimizer's value, truth on the batch, on the
        full data), one for the vector estimates (relative error, log scale, and cosine),
        and one for ``lambda_max_full`` / ``trace_full``. Saved to ``path`` (PNG) if
        given; returns the matplotlib figure.
        """
        from curvature.plots import monitor_figure

        return monitor_figure(self.history, path, title=title, vector_keys=_VECTOR_KEYS)


def _per_example_statistics(model: nn.Module, params: Sequence[Tensor], names: Sequence[str],
                            loss_fn: Callable, data: Any, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    r"""Exact GGN diagonal and per-example gradient variance over ``data`` (eval mode).

    With per-example output Jacobians ``J_i`` (``[C, n]``, one reverse pass per output)
    and output-space loss Hessians ``A_i`` (``[C, C]``):
    ``diag(GGN)_k = mean_i sum_{ab} J_i[a, k] A_i[a, b] J_i[b, k]`` -- ``C`` backward
    passes per example instead of ``n`` products.  The variance is
    ``mean_i g_i^2 - (mean_i g_i)^2`` of the per-example gradients ``g_i = J_i^T dl/dz``.
    Returns ``(ggn_diag, variance)``, both ``Tensor[n]`` in ``dtype``.
    """
    if any(p.dtype != dtype for p in params):
        model = copy.deepcopy(model).to(dtype)
    own = dict(model.named_parameters())
    device = next(iter(own.values())).device
    sel = {k: own[k].detach() for k in names}
    fixed = {k: v.detach() for k, v in own.items() if k not in sel}
    fixed.update(dict(model.named_buffers()))

    def outputs(p: dict[str, Tensor], x: Any) -> Tensor:
        # one example (vmap strips the batch dimension of every input tensor)
        one = map_tensors(lambda t: t.unsqueeze(0), x)
        return functional_call(model, {**fixed, **p}, model_args(one)).squeeze(0)

    def loss_of_outputs(z: Tensor, y: Tensor) -> Tensor:
        return loss_fn(z.unsqueeze(0), y.unsqueeze(0))

    jac = vmap(jacrev(outputs), in_dims=(None, 0))
    out_grad = vmap(grad(loss_of_outputs))
    out_hess = vmap(hessian(loss_of_outputs))
    n = sum(t.numel() for t in sel.values())

    def step(_: int, batch: Any) -> tuple[Tensor, None]:
        # Mappings as dicts, which vmap splits along their tensors' batch dimension
        x, y = map_tensors(lambda t: t, tuple(batch), plain=True)
        nb = batch_size_of(batch)
        J = jac(sel, x)
        Jf = torch.cat([J[k].reshape(nb, J[k].shape[1], -1) for k in names], dim=2)  # [B, C, n]
        z = vmap(lambda xi: outputs(sel, xi))(x)
        A = out_hess(z, y)  # [B, C, C]
        ggn = torch.einsum("bck,bcd,bdk->k", Jf, A, Jf).double()
        g = torch.einsum("bck,bc->bk", Jf, out_grad(z, y)).double()  # per-example gradients
        # batch means: the loop weights them by n_b and divides by N
        return torch.cat([ggn, g.sum(0), g.square().sum(0)]) / nb, None

    sums = DataLoop(data, device=device, dtype=dtype, model=model).accumulate(
        step, torch.zeros(3 * n, dtype=torch.float64, device=device))
    ggn_diag, mean, mean_sq = sums.split(n)
    return ggn_diag.to(dtype), (mean_sq - mean.square()).clamp_min(0).to(dtype)
