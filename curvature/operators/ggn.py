"""The generalised Gauss-Newton operator of a model's dataset loss.

``G = sum_b (n_b/N) J_b^T H_out,b J_b``: ``J_b`` the Jacobian of the outputs of
batch ``b`` with respect to the parameters, ``H_out,b`` the Hessian of ``loss_fn``
with respect to those outputs (PSD for convex losses). One product is one pass over
the data (:meth:`curvature.data_loop.DataLoop.accumulate`), the columns vectorised
with ``vmap`` in chunks sized from the measured memory of a forward pass.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torch.func import grad, jvp, vjp, vmap

from curvature.operators.base import ModelOperator
from curvature.operators.hessian_products import columns_per_pass, saved_bytes

__all__ = ["GGNOperator"]


class GGNOperator(ModelOperator):
    """Generalised Gauss-Newton ``G = sum_b (n_b/N) J_b^T H_out,b J_b`` (PSD for convex losses).

    ``J_b`` is the Jacobian of the model outputs of batch ``b`` with respect to the
    parameters and ``H_out,b`` the Hessian of ``loss_fn`` with respect to those
    outputs. With ``reduction="sum"`` the weights ``n_b/N`` are 1 (``loss_fn`` sums
    over its batch). Same arguments as :class:`HessianOperator` (no ``method``/``eps``).

    ``chunk_size=None`` vmaps as many columns at once as keep about one copy per
    column of the first batch's forward activations (:attr:`forward_column_bytes`,
    measured on the first product) under ``max_chunk_bytes``.
    """

    forward_column_bytes: int | None = None
    """Bytes autograd saves for one forward pass and loss of the first batch (``None``
    until measured): the memory one column of a vectorised pass is charged."""

    def _forward_bytes(self, batch: Any) -> int:
        with self.risk.differentiable(), saved_bytes() as nbytes:
            self.risk.module_loss(batch)
        return max(nbytes[0], 1)

    def _matmat(self, V: Tensor) -> Tensor:
        risk = self.risk

        def step(_: int, batch: Any) -> tuple[Tensor, Tensor]:
            if self.chunk_size is None and self.forward_column_bytes is None:
                self.forward_column_bytes = self._forward_bytes(batch)
            chunk = columns_per_pass(
                V.shape[1], self.chunk_size, self.max_chunk_bytes, self.forward_column_bytes
            )
            inputs, targets = batch

            def model_at(w):
                return risk.forward(w, inputs)

            out, pullback = vjp(model_at, risk.w0)

            def out_loss(z):
                return risk.loss_fn(z, targets)

            # H_out is symmetric, so H_out u is the pullback of u through grad(loss)
            # (reverse-over-reverse on the small output space).
            _, out_hvp = vjp(grad(out_loss), out.detach())

            def one(v):
                _, jv = jvp(model_at, (risk.w0,), (v,))
                (hjv,) = out_hvp(jv)
                (gv,) = pullback(hjv)
                return gv

            gv = vmap(one, in_dims=1, out_dims=1, chunk_size=chunk)(V)
            return gv, risk.loss_fn(out.detach(), targets)

        return risk.data.accumulate(step, V.new_zeros(V.shape), progress=self.progress, desc="ggn")
