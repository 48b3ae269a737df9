"""The work plan of an analysis: how many Hessian products each metric may spend.

:func:`measure_costs` times what the analysis is made of on the actual model and data
(a warm Hessian product per split -- the second one, after the first has chosen the
product path and filled caches --, a gradient, a loss evaluation of the landscapes, a
plain loss evaluation for the adaptive sharpness, and for per-layer spectra the extra cost of a column in a multi-column product).
:func:`make_plan` then shares a wall-time budget across the requested metrics:

* every metric has a *cap*, the work its settings in :class:`AnalysisConfig` ask for
  (Lanczos: ``max_matvecs`` per end, Hutch++: ``trace_matvecs``, SLQ: probes x steps,
  landscapes: their points, sharpness: ``sharpness_steps`` gradients and
  ``sharpness_samples`` + 3 loss evaluations, per-layer: steps and probes per block); the
  budget never
  raises a setting, it only lowers it;
* the default budget (``budget=None``) is the time of every cap -- so a small model,
  whose products are cheap, runs exactly its settings -- but at most
  :data:`DEFAULT_BUDGET_S` (times :data:`PER_LAYER_FACTOR` with per-layer spectra);
* a budget below the caps' time is shared by weight (:data:`WEIGHTS`; the test split at
  half weight) with water-filling: a metric whose cap is below its share takes its cap
  and the rest is shared again; while a metric's share is below its least useful size
  (Lanczos ``max(2k, 10)`` products -- at the largest end, below that, 5 products for
  lambda_max alone, ``top_k`` lowered to 1 --, Hutch++ 4, SLQ 10 steps, a 5 x 5 landscape grid,
  :data:`SHARPNESS_LEAST` ascent steps and draws, 3 per-layer steps), a metric gets nothing and is reported as ``skipped: budget``: the
  test split's metrics first (least weighted first), then the failing metric itself;
* while the analysis runs, the products a metric did not spend (Lanczos stops when it
  has converged) pass on to the metrics after it (:meth:`Plan.grant`), up to their caps.

What a cut costs in accuracy is reported by the estimators themselves: Lanczos returns
``converged=False`` with its residuals, Hutch++ a larger standard error, SLQ fewer
steps; nothing is dropped silently.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from curvature.inputs import InputError
from curvature.pipeline.sizers import (
    SHARPNESS_LEAST,
    density_sizer,
    landscape_sizer,
    largest_end_sizer,
    per_layer_sizer,
    products_sizer,
    sharpness_sizer,
)

__all__ = [
    "DEFAULT_BUDGET_S",
    "PER_LAYER_FACTOR",
    "SHARPNESS_LEAST",
    "WEIGHTS",
    "Costs",
    "Item",
    "Plan",
    "make_plan",
    "parse_budget",
]

DEFAULT_BUDGET_S = 600.0
"""Most seconds of planned work under the default budget (10 minutes)."""

PER_LAYER_FACTOR = 1.5
"""The default budget's ceiling is this much larger with per-layer spectra."""

WEIGHTS = {
    "eigenvalues_largest": 6.0,
    "eigenvalues_smallest": 2.0,
    "trace": 1.0,
    "density": 2.0,
    "landscape": 1.0,
    "sharpness": 0.5,
    "per_layer": 8.0,
}
"""Shares of a short budget (training split; the test split's metrics weigh half)."""

TEST_WEIGHT = 0.5

_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_budget(text: str | float | int | None) -> float | None:
    """Seconds from ``"90s"``, ``"5m"``, ``"1.5h"`` or plain seconds (``"300"``, ``300``);
    ``None`` stays ``None`` (the default rule). Raises :class:`InputError` otherwise."""
    if text is None:
        return None
    if isinstance(text, bool):
        raise InputError(f"budget must be a duration like 90s, 5m or 1h, got {text!r}")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
        unit = m.group(2).lower() if m else None
        if m is None or unit not in ("", *_UNITS):
            raise InputError(
                f"budget must be a duration like 90s, 5m, 1h or plain seconds, got {text!r}")
        value = float(m.group(1)) * _UNITS.get(unit, 1.0)
    if not (value > 0 and math.isfinite(value)):
        raise InputError(f"budget must be a positive duration, got {text!r}")
    return value


@dataclass
class Costs:
    """Measured seconds of the analysis' parts.

    Attributes:
        product_s: one warm Hessian product (one column) per split.
        gradient_s: one dataset gradient per split.
        evaluation_s: one landscape point (a loss evaluation over the split's data,
            vectorised over the points of a line).
        loss_s: one plain loss evaluation over the split's data (adaptive sharpness;
            when not measured, planned as a gradient, an upper bound).
        column_s, pass_s: per-layer products on the training split, ``pass_s +
            columns * column_s`` seconds per multi-column product (from a warm
            1-column and a warm ``w``-column product; ``None`` when not measured).
        setup_s: seconds spent before the plan was made (gradients, measurements).
    """

    product_s: dict[str, float] = field(default_factory=dict)
    gradient_s: dict[str, float] = field(default_factory=dict)
    evaluation_s: dict[str, float] = field(default_factory=dict)
    loss_s: dict[str, float] = field(default_factory=dict)
    column_s: float | None = None
    pass_s: float | None = None
    setup_s: float = 0.0

    def gradients_per_product(self, split: str = "train") -> float:
        g = self.gradient_s.get(split, 0.0)
        return self.product_s[split] / g if g > 0 else math.nan


@dataclass
class Item:
    """One metric on one split in the plan.

    ``settings`` are the arguments it runs with (e.g. ``{"max_matvecs": 120}``);
    ``planned``/``used`` count its work in ``unit`` (Hessian products, landscape
    evaluations, or per-layer columns); ``status`` is ``"planned"``, ``"skipped:
    budget"`` or ``"ran"``.
    """

    name: str
    split: str
    metric: str
    weight: float
    cap_s: float
    unit: str
    cap: dict[str, Any]
    seconds: float = 0.0
    settings: dict[str, Any] | None = None
    planned: int = 0
    used: int | None = None
    status: str = "planned"
    granted_s: float = 0.0
    granted: int = 0


class Plan:
    """The products each metric may spend (see the module docstring).

    Attributes:
        budget_s: seconds of planned work (``None`` in ``budget_rule`` means the default).
        budget_rule: how the budget was set (``"given"`` or ``"default"``).
        costs: the :class:`Costs` it was made from.
        items: :class:`Item` per metric and split, in execution order.
    """

    def __init__(self, budget_s: float, budget_rule: str, costs: Costs, items: list[Item],
                 sizers: dict[str, Callable[[float], tuple[dict | None, int, float]]]) -> None:
        self.budget_s = budget_s
        self.budget_rule = budget_rule
        self.costs = costs
        self.items = items
        self._sizers = sizers
        self._carry = 0.0

    def __getitem__(self, name: str) -> Item:
        for it in self.items:
            if it.name == name:
                return it
        raise KeyError(name)

    def __contains__(self, name: str) -> bool:
        return any(it.name == name for it in self.items)

    @property
    def seconds(self) -> float:
        """Estimated seconds of all planned work."""
        return sum(it.seconds for it in self.items)

    @property
    def products(self) -> int:
        """Planned Hessian products (per-layer columns included)."""
        return sum(it.planned for it in self.items if it.unit != "evaluations")

    def progress_total(self) -> float:
        """Planned work in Hessian products of the training split (a landscape point
        counts as its measured fraction of a product): the progress bar's total."""
        return sum(self.progress_units(it, it.planned) for it in self.items)

    def progress_units(self, item: Item, amount: float) -> float:
        """``amount`` of ``item``'s unit, in training-split products."""
        unit_s = self._unit_seconds(item)
        return amount * unit_s / self.costs.product_s["train"]

    def _unit_seconds(self, item: Item) -> float:
        if item.metric in ("per_layer", "sharpness"):  # units of unequal cost: their mean
            return item.seconds / item.planned if item.planned else 0.0
        if item.unit == "evaluations":
            return self.costs.evaluation_s.get(item.split, 0.0)
        return self.costs.product_s[item.split]

    def grant(self, name: str, elapsed: float | None = None) -> Item:
        """The item ``name`` with its settings for now: its planned share plus what the
        items before it left unspent, up to its cap.

        ``elapsed``: wall seconds since the analysis started. Under a given budget, when
        fewer seconds are left than the planned seconds of this and the later items
        (products ran slower than measured), this item gets its share of what is left
        instead, and is skipped if that is too little to run (a default budget is
        never cut this way, so runs on small models do not depend on the clock).
        """
        it = self[name]
        if it.status == "skipped: budget":
            return it
        it.granted_s = it.seconds + max(self._carry, 0.0)
        it.granted = it.planned
        ahead = sum(x.seconds for x in self.items[self.items.index(it):]
                    if x.status == "planned")
        left = self.budget_s - elapsed if elapsed is not None else math.inf
        if self.budget_rule == "given" and left < ahead:
            it.granted_s = it.seconds * max(left, 0.0) / ahead
            settings, units, _ = self._sizers[name](it.granted_s)
            it.settings, it.granted = settings, units
            if settings is None:
                it.status, it.granted_s = "skipped: budget", 0.0
            return it
        settings, units, _ = self._sizers[name](it.granted_s)
        if settings is not None and units >= it.planned:
            it.settings, it.granted = settings, units
        return it

    def spend(self, name: str, used: int) -> None:
        """Record that ``name`` used ``used`` units; the seconds it left pass on."""
        it = self[name]
        it.used = int(used)
        it.status = "ran"
        if it.metric == "per_layer":
            spent = self._sizers[name](it.granted_s)[2]
        else:
            spent = used * self._unit_seconds(it)
        self._carry = max(self._carry, 0.0) + it.seconds - spent

    def line(self) -> str:
        """The one-line announcement printed before the run."""
        c = self.costs
        p = c.product_s["train"]
        ratio = c.gradients_per_product()
        evals = sum(it.planned for it in self.items if it.unit == "evaluations")
        skipped = [it.name for it in self.items if it.status == "skipped: budget"]
        text = (f"plan: up to {self.products} Hessian products ({_seconds(p)} each, "
                f"= {ratio:.2g} gradients)")
        if evals:
            text += f" and {evals} loss evaluations"
        text += f", up to about {_duration(self.seconds)}"
        text += " (default budget)" if self.budget_rule == "default" else (
            f" (budget {_duration(self.budget_s)})")
        if skipped:
            text += "; skipped for the budget: " + ", ".join(skipped)
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON form: budget, measured costs, and planned vs used work per item."""
        return {
            "budget_s": self.budget_s,
            "budget_rule": self.budget_rule,
            "planned_s": self.seconds,
            "costs": asdict(self.costs),
            "items": [
                {"name": it.name, "unit": it.unit, "status": it.status, "cap": it.cap,
                 "settings": it.settings, "planned": it.planned, "used": it.used,
                 "planned_s": it.seconds}
                for it in self.items
            ],
        }


def _seconds(s: float) -> str:
    return f"{s * 1000:.3g} ms" if s < 1 else f"{s:.3g} s"


def _duration(s: float) -> str:
    if s < 10:
        return f"{s:.1f} s"
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} minutes"
    return f"{s / 3600:.1f} hours"


def make_plan(
    config: Any,
    costs: Costs,
    *,
    num_params: int,
    k: int,
    splits: tuple[str, ...],
    block_dims: list[int] | None = None,
    probe_columns: int = 1,
    budget_s: float | None = None,
    block_densities: bool = True,
) -> Plan:
    """Share ``budget_s`` seconds (``None``: the default rule) across the metrics of
    ``config`` (an :class:`AnalysisConfig`) on ``splits``.

    Args:
        costs: measured :class:`Costs`.
        num_params: ``n`` (SLQ steps are capped at ``n``).
        k: eigenvalues at each end.
        splits: ``("train",)`` or ``("train", "test")``.
        block_dims: parameters per block for per-layer spectra (``None``: none).
        probe_columns: most columns per per-layer product besides the Lanczos ones
            (:func:`curvature.algorithms.probes.default_block_size`).
        block_densities: whether per-block densities fit the memory bound
            (:func:`curvature.memory.per_layer_plan`); if not, they are not planned.
    """
    want = set(config.metrics)
    items: list[Item] = []
    sizers: dict[str, Callable[[float], tuple[dict | None, int, float]]] = {}

    def add(split: str, metric: str, unit: str, cap: dict, sizer) -> None:
        name = f"{split}/{metric}"
        weight = WEIGHTS[metric] * (1.0 if split == "train" else TEST_WEIGHT)
        settings, units, seconds = sizer(math.inf)
        items.append(Item(name, split, metric, weight, seconds, unit, cap))
        sizers[name] = sizer

    for split in splits:
        p = costs.product_s[split]
        if "eigenvalues" in want or ("landscape" in want and split == "train"):
            cap = config.max_matvecs or max(1000, 100 * k)
            add(split, "eigenvalues_largest", "products", {"max_matvecs": cap},
                largest_end_sizer(cap, k, p))
            add(split, "eigenvalues_smallest", "products", {"max_matvecs": cap},
                products_sizer("max_matvecs", cap, max(2 * k, 10), p))
        if "trace" in want:
            add(split, "trace", "products", {"num_matvecs": config.trace_matvecs},
                products_sizer("num_matvecs", config.trace_matvecs, 4, p))
        if "density" in want:
            steps = min(config.density_steps, num_params)
            add(split, "density", "products",
                {"num_probes": config.density_probes, "num_steps": steps},
                density_sizer(config.density_probes, steps, p))
        if "landscape" in want:
            # directions: random always; v_max (and a plane if k >= 2) and v_min when the
            # training split's eigenvectors are computed
            add(split, "landscape", "evaluations",
                {"points": config.landscape_points, "grid": config.landscape_grid},
                landscape_sizer(config.landscape_points, config.landscape_grid,
                                 3, 2 if k >= 2 else 1, costs.evaluation_s.get(split, 0.0)))
    if "sharpness" in want:  # the training split only
        grad_s = costs.gradient_s.get("train", costs.product_s["train"])
        loss_s = costs.loss_s.get("train", grad_s)
        add("train", "sharpness", "evaluations",
            {"steps": config.sharpness_steps, "samples": config.sharpness_samples},
            sharpness_sizer(config.sharpness_steps, config.sharpness_samples, grad_s, loss_s))
    if block_dims:
        steps0 = config.max_matvecs or 300
        dens = ((config.density_probes, config.density_steps)
                if "density" in want and block_densities else (0, 0))
        add("train", "per_layer", "columns",
            {"max_steps": steps0, "trace_matvecs": config.trace_matvecs,
             "density_probes": dens[0], "density_steps": dens[1]},
            per_layer_sizer(block_dims, steps0, config.trace_matvecs, *dens,
                             costs.column_s or costs.product_s["train"], costs.pass_s or 0.0,
                             probe_columns))

    full = sum(it.cap_s for it in items)
    if budget_s is None:
        ceiling = DEFAULT_BUDGET_S * (PER_LAYER_FACTOR if block_dims else 1.0)
        rule, total = "default", min(full, ceiling)
    else:
        rule, total = "given", budget_s
    _allocate(items, sizers, max(total - costs.setup_s, 0.0) if rule == "given" else total)
    return Plan(total, rule, costs, items, sizers)


def _allocate(items: list[Item], sizers, total: float) -> None:
    """Share ``total`` seconds: first every metric's least useful size, in priority order
    (training split before test split, lambda_max first, then by weight) while it fits; then what is left
    by weight (water-filling up to each metric's cap). A metric whose least useful size
    does not fit is skipped, so a heavy metric that cannot run (per-layer spectra of a
    big model on a short budget) takes nothing from the others."""
    least = {it.name: _least_seconds(sizers[it.name], it.cap_s) for it in items}
    active, reserved = [], 0.0
    for it in sorted(items, key=lambda x: (x.split != "train", x.metric != "eigenvalues_largest",
                                          -x.weight, items.index(x))):
        if reserved + least[it.name] <= total:
            active.append(it)
            reserved += least[it.name]
    extra = _water_fill({it.name: (it.weight, it.cap_s - least[it.name]) for it in active},
                        total - reserved)
    for it in items:
        if it in active:
            settings, units, seconds = sizers[it.name](least[it.name] + extra[it.name])
            it.settings, it.planned, it.seconds = settings, units, seconds
        else:
            it.status, it.settings, it.planned, it.seconds = "skipped: budget", None, 0, 0.0


def _least_seconds(sizer, cap_s: float) -> float:
    """Fewest seconds on which ``sizer`` runs (``inf`` if not even on ``cap_s``)."""
    if sizer(cap_s)[0] is None:
        return math.inf
    lo, hi = 0.0, cap_s
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if sizer(mid)[0] is not None else (mid, hi)
    return hi


def _water_fill(wanted: dict[str, tuple[float, float]], total: float) -> dict[str, float]:
    """``total`` shared in proportion to weights, each share capped: ``wanted`` maps a
    name to ``(weight, cap)``; what a capped share leaves goes to the others."""
    shares = dict.fromkeys(wanted, 0.0)
    open_ = [n for n, (_, cap) in wanted.items() if cap > 0]
    left = max(total, 0.0)
    while open_ and left > 0:
        w = sum(wanted[n][0] for n in open_)
        full = [n for n in open_ if left * wanted[n][0] / w >= wanted[n][1]]
        if not full:
            for n in open_:
                shares[n] = left * wanted[n][0] / w
            break
        for n in full:
            shares[n] = wanted[n][1]
            left -= wanted[n][1]
            open_.remove(n)
    return shares


