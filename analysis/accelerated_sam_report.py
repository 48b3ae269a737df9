"""Statistics, figures and ``report.md`` of :mod:`analysis.accelerated_sam`, rebuilt from
its CSVs (``lr_multiples.csv``, ``convergence.csv``, ``trajectories.csv``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.claim_rows import claim_row, finish_rows, write_rows
from analysis.harness.report import finish_report, markdown_table, read_run_meta
from analysis.harness.stats import paired_comparison
from analysis.harness.timing import Timer
from analysis.lr_wd_text import claims_markdown
from curvature import plots

SEED_FILE = "accelerated-sam-adaptive-lr.md"
MARGIN = 1.25  # "near-optimal": final loss within this factor of the best multiple's


def _by_seed(df: pd.DataFrame, key: str, value: Any, col: str = "final_train_loss") -> np.ndarray:
    sub = df[df[key] == value].sort_values("seed")
    return sub[col].to_numpy(dtype=float)


def geo(v: np.ndarray) -> float:
    v = v[np.isfinite(v) & (v > 0)]
    return float(np.exp(np.log(v).mean())) if v.size else math.nan


def best_multiple(a: pd.DataFrame) -> float:
    """The multiple (other than 1) with the lowest geometric-mean final loss among those
    where no seed diverged."""
    best, val = math.nan, math.inf
    for c, g in a.groupby("multiple"):
        if c == 1.0 or g.diverged.any():
            continue
        m = geo(g.final_train_loss.to_numpy(dtype=float))
        if m < val:
            best, val = float(c), m
    return best


def best_sam_lr(b: pd.DataFrame) -> float:
    sam = b[b.method == "SAM"]
    scores = {lr: geo(g.final_train_loss.to_numpy(dtype=float)) if not g.diverged.any()
              else math.inf for lr, g in sam.groupby("lr")}
    return float(min(scores, key=scores.get)) if scores else math.nan


def claims(a: pd.DataFrame, b: pd.DataFrame, s: Any) -> pd.DataFrame:
    rows = []
    wl_b = f"{s.workload}, batch {s.batch_size}, {s.epochs} epochs, rho {s.rho}"
    for loss, al in a.groupby("loss", sort=False):
        wl_a = f"{s.workload.replace('(CE)', '')}({loss.upper()}), full-batch GD, {s.gd_steps} steps"
        cb = best_multiple(al)
        r = None
        if math.isfinite(cb):
            try:
                r = paired_comparison(_by_seed(al, "multiple", 1.0), _by_seed(al, "multiple", cb))
            except ValueError:
                r = None
        rows.append(claim_row(
            "lr = 1/lambda_max is close enough to the optimal step", SEED_FILE, wl_a,
            f"log final train loss; near-optimal = within {MARGIN}x of the best multiple",
            f"{loss.upper()}: c=1 vs best c={cb:g}", r, None,
            note="verdict: holds if the CI upper end < log 1.25, does not hold if BH p <= 0.05 "
                 "and the CI lower end > log 1.25"))
        above = [m for m in sorted(set(al.multiple)) if m > 2]
        if above:
            c = above[0]
            g = al[al.multiple == c]
            n_div = int(g.diverged.sum())
            verdict = ("holds" if n_div == len(g) else "does not hold" if n_div == 0
                       else "inconclusive")
            row = claim_row(
                "a step more than twice 1/lambda_max causes divergence", SEED_FILE, wl_a,
                "share of seeds diverged", f"{loss.upper()}: c={c:g}", None, None,
                fixed_verdict=verdict,
                note=f"{n_div}/{len(g)} seeds diverged at c={c:g}; a count, no paired test; "
                     "larger c: " + ", ".join(
                         f"c={m:g}: {int(al[al.multiple == m].diverged.sum())}/{len(g)}"
                         for m in above[1:]))
            row["effect"], row["n_seeds"] = n_div / max(len(g), 1), len(g)
            rows.append(row)
    lr_best = best_sam_lr(b)

    def comp(m1: str, m2: str, lr2: float | None = None):
        x = b[b.method == m1].sort_values("seed").final_train_loss.to_numpy(dtype=float)
        sub = b[b.method == m2]
        if lr2 is not None:
            sub = sub[sub.lr == lr2]
        y = sub.sort_values("seed").final_train_loss.to_numpy(dtype=float)
        try:
            return paired_comparison(x, y)
        except ValueError:
            return None

    claim = "AcceleratedSAM converges faster than SAM"
    metric = "log full train loss after the budget"
    rows.append(claim_row(claim, SEED_FILE, wl_b, metric,
                          f"AcceleratedSAM (lr=1) vs SAM at its best lr={lr_best:g}",
                          comp("AcceleratedSAM", "SAM", lr_best), "less"))
    rows.append(claim_row(claim, SEED_FILE, wl_b, metric,
                          "AcceleratedSAM (lr=1) vs SAM at fixed lr=1/lambda_0",
                          comp("AcceleratedSAM", "SAM at 1/lambda_0"), "less"))
    rows.append(claim_row(claim + " (oracle: step 1/lambda_max(w_t) from the engine)", SEED_FILE,
                          wl_b, metric, f"oracle vs SAM at its best lr={lr_best:g}",
                          comp("oracle", "SAM", lr_best), "less"))
    t = finish_rows(rows)
    for i in t.index[t.claim.str.startswith("lr = 1/lambda_max")]:
        if math.isfinite(t.loc[i, "effect"]):
            lo, hi, q = t.loc[i, "ci_low"], t.loc[i, "ci_high"], t.loc[i, "p_bh_report"]
            t.loc[i, "verdict"] = ("holds" if hi < math.log(MARGIN) else "does not hold"
                                   if q <= 0.05 and lo > math.log(MARGIN) else "inconclusive")
    return t


def fig_multiples(a: pd.DataFrame, out: Path) -> str:
    """Rows: losses; left: final train loss against c, right: lr x lambda_max(end)."""
    losses = list(dict.fromkeys(a["loss"]))
    with plots.style():
        fig, axes = plt.subplots(len(losses), 2, figsize=(10, 3.3 * len(losses)),
                                 layout="constrained", squeeze=False)
    rng = np.random.default_rng(0)
    for row, loss in enumerate(losses):
        al = a[a["loss"] == loss]
        cs = np.array(sorted(set(al.multiple)))
        for ax, col, label in ((axes[row, 0], "final_train_loss", "final train loss (log)"),
                               (axes[row, 1], "lr_times_lambda_end", "lr x λmax(end) (log)")):
            ok = al[~al.diverged]
            ax.scatter(ok.multiple * np.exp(rng.uniform(-0.06, 0.06, len(ok))), ok[col], s=10,
                       alpha=0.6, color="C0", linewidths=0)
            g = [geo(ok[ok.multiple == c][col].to_numpy(dtype=float)) for c in cs]
            ax.plot(cs, g, color="black", marker="o", ms=3, lw=1.2)
            for c, n in al[al.diverged].groupby("multiple").size().items():
                ax.annotate(f"{n} div.", (c, 0.98), xycoords=("data", "axes fraction"),
                            ha="center", va="top", fontsize=7, color="red")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks(cs, labels=[f"{c:g}" for c in cs])
            ax.minorticks_off()
            ax.set_ylabel(label)
            ax.axvline(1, color="grey", ls=":", lw=0.8)
            if row == len(losses) - 1:
                ax.set_xlabel("c  (lr = c / λmax(w_0), λ from the engine)")
        axes[row, 1].axhline(2, color="red", ls="--", lw=0.8)
        axes[row, 1].axhline(1, color="grey", ls=":", lw=0.8)
        axes[row, 0].set_title(f"{loss.upper()}: final loss after full-batch GD "
                               "(dots: seeds, line: geometric mean)", fontsize=9)
        axes[row, 1].set_title(f"{loss.upper()}: lr x λmax(final weights) (red: 2 = GD edge)",
                               fontsize=9)
    name = "lr_multiples.png"
    plots.save_figure(fig, out / name, dpi=100)
    return name


def fig_convergence(b: pd.DataFrame, tr: pd.DataFrame, out: Path) -> str:
    lr_best = best_sam_lr(b)
    keep = [("SAM", lr_best, f"SAM, best lr {lr_best:g}"),
            ("SAM at 1/lambda_0", None, "SAM, lr = 1/λmax(w_0)"),
            ("AcceleratedSAM", None, "AcceleratedSAM, lr = 1"),
            ("oracle", None, "oracle: lr = 1/λmax(w_t)")]
    with plots.style():
        fig, axes = plt.subplots(1, 3, figsize=(14, 3.9), layout="constrained")
    for k, (m, lr, label) in enumerate(keep):
        sub = tr[tr.method == m]
        if lr is not None:
            sub = sub[np.isclose(sub.lr, lr)]
        if sub.empty:
            continue
        g = sub.groupby("step")
        axes[0].plot(g.train_loss.apply(lambda v: geo(v.to_numpy())), color=f"C{k}", label=label)
        axes[1].plot(g.step_times_lambda.apply(lambda v: geo(v.to_numpy())), color=f"C{k}")
        fin = b[b.method == m] if lr is None else b[(b.method == m) & np.isclose(b.lr, lr)]
        v = fin.final_train_loss.to_numpy(dtype=float)
        axes[2].scatter(np.full(v.size, k) + np.linspace(-0.15, 0.15, v.size), v, s=12,
                        color=f"C{k}")
        axes[2].plot([k - 0.25, k + 0.25], [geo(v)] * 2, color="black")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("full train loss")
    axes[0].set_title("geometric mean over seeds", fontsize=9)
    axes[1].set_yscale("log")
    axes[1].axhline(1, color="grey", ls=":", lw=0.8)
    axes[1].axhline(2, color="red", ls="--", lw=0.8)
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("step size x λmax(w_t)")
    axes[1].set_title("1 = seed's rule (grey), 2 = GD edge (red)", fontsize=9)
    axes[2].set_yscale("log")
    axes[2].set_xticks(range(len(keep)), labels=[k[2].replace(", ", ",\n").replace(": ", ":\n") for k in keep],
                       fontsize=7)
    axes[2].set_ylabel("final train loss")
    axes[2].set_title("dots: seeds; bar: geometric mean", fontsize=9)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=4,
               frameon=False)
    name = "convergence.png"
    plots.save_figure(fig, out / name, dpi=100)
    return name


def _tables(a: pd.DataFrame, b: pd.DataFrame) -> tuple[str, str]:
    rows = []
    for (loss, c), g in a.groupby(["loss", "multiple"], sort=False):
        ok = g[~g.diverged]
        rows.append({"loss": loss, "c": c, "seeds": len(g), "diverged": int(g.diverged.sum()),
                     "final loss (geo. mean)": geo(ok.final_train_loss.to_numpy(dtype=float)),
                     "test acc (mean)": ok.test_accuracy.mean(),
                     "λmax(end)/λ0 (geo. mean)": geo((ok.lambda_end / ok.lambda_0).to_numpy()),
                     "lr x λmax(end)": geo(ok.lr_times_lambda_end.to_numpy(dtype=float))})
    ta = markdown_table(pd.DataFrame(rows), "{:.3g}")
    rows = []
    for m, g in b.groupby("method", sort=False):
        for lr, h in g.groupby("lr") if m == "SAM" else [(math.nan, g)]:
            rows.append({"method": m, "lr": lr if m == "SAM" else
                         ("1/λ0 (per seed)" if m.startswith("SAM at") else "1 (dimensionless)"),
                         "diverged": int(h.diverged.sum()),
                         "final loss (geo. mean)": geo(h.final_train_loss.to_numpy(dtype=float)),
                         "test acc (mean)": h.test_accuracy.mean(),
                         f"seeds reaching loss {0.1:g}": int(np.isfinite(h.steps_to_target).sum()),
                         "median steps to it": h.steps_to_target.median()})
    return ta, markdown_table(pd.DataFrame(rows), "{:.3g}")


def _oracle_note(tr: pd.DataFrame) -> str:
    o = tr[tr.method == "oracle"].dropna(subset=["step_size"])
    if o.empty:
        return ""
    first = geo(o[o.step == o.step.min()].step_size.to_numpy(dtype=float))
    last = geo(o[o.step == o.step.max()].step_size.to_numpy(dtype=float))
    acc = tr[tr.method == "AcceleratedSAM"].dropna(subset=["step_size"])
    acc_last = geo(acc[acc.step == acc.step.max()].step_size.to_numpy(dtype=float))
    acc_sl = geo(acc.step_times_lambda.to_numpy(dtype=float))
    return (f"The oracle's step 1/λmax(w_t) grows from {first:.3g} to {last:.3g} (geometric "
            "mean over seeds, first and last refresh) as the full-batch sharpness falls during "
            "cross-entropy training, while mini-batch noise does not fall with it; "
            f"AcceleratedSAM's step lr/||h_t|| ends at {acc_last:.3g} on its own trajectory; its "
            f"step x λmax(w_t) averages {acc_sl:.3g} (geometric mean over refreshes and seeds; 1 "
            "would be the seed's rule exactly): the SAM-pair estimate ||h_t|| is not "
            "λmax(w_t), and the mini-batch noise in it keeps the step from tracking the "
            "oracle's.\n")


def _edge_note(b: pd.DataFrame) -> str:
    lrs = sorted(set(b[b.method == "SAM"].lr))
    best = best_sam_lr(b)
    if lrs and best == lrs[-1]:
        return (f"**Caveat:** SAM's best learning rate ({best:g}) is the largest of its grid; "
                "a larger one was not tried and might be better still, so the comparison "
                "with SAM's best is against a baseline that may be under-tuned.\n")
    return ""


def rebuild(out: Path, s: Any, quick: bool) -> int:
    timer = Timer()
    a = pd.read_csv(out / "lr_multiples.csv")
    b = pd.read_csv(out / "convergence.csv")
    tr = pd.read_csv(out / "trajectories.csv")
    s.seeds = int(a.seed.nunique())
    t = claims(a, b, s)
    t.to_csv(out / "claims_detail.csv", index=False)
    write_rows(out, t)
    figs = [fig_multiples(a, out), fig_convergence(b, tr, out)]
    ta, tb = _tables(a, b)
    cal = a[a["loss"] == "ce"].drop_duplicates("seed")
    ratio = (cal.calibrated_lambda / cal.lambda_0).to_numpy(dtype=float)
    md = [
        "# Accelerated SAM: is lr = 1/λmax near-optimal, and does AcceleratedSAM converge "
        "faster than SAM?\n",
        "**Claims** (`accelerated-sam-adaptive-lr.md`): \"the optimal learning rate is the "
        "inverse of the largest eigenvalue of H\", \"setting it to the inverse of the largest "
        "second derivative is both safe, and close enough to the optimal\", \"a value more "
        "than twice the optimal will cause divergence\"; and SAM's own gradient pair, "
        "averaged into h_t, sets the step lr/||h_t|| (\"accelerated SAM\").\n",
        f"Workload: {s.workload}, {s.seeds} seeds (seed = initial weights and batch order, "
        "shared by every method: paired). λmax is always the engine's Lanczos "
        f"(`curvature.eigenvalues`, tol {s.tol:g}) on the full-batch training Hessian.\n",
        "## A. Full-batch GD at lr = c / λmax(w_0)\n",
        f"{s.gd_steps} steps of full-batch GD. LeCun's calibrate-then-fix estimate "
        "(`calibrate_learning_rate`, 256-example batches) / engine λ0: "
        f"{np.nanmean(ratio):.3g} (min {np.nanmin(ratio):.3g}, max {np.nanmax(ratio):.3g}; "
        f"converged in {int(cal.calibrated_converged.sum())}/{len(cal)} seeds).\n",
        ta + "\n", f"![{figs[0]}]({figs[0]})\n",
        "## B. Mini-batch: AcceleratedSAM, SAM and the oracle\n",
        f"Batch {s.batch_size}, {s.epochs} epochs, rho {s.rho}, AcceleratedSAM beta "
        f"{s.beta} with bias correction; the oracle's λmax(w_t) is refreshed every "
        f"{s.refresh} steps. SAM's grid: {s.sam_lrs} (best chosen on the same runs: an "
        "optimistic baseline).\n",
        tb + "\n", _edge_note(b), _oracle_note(tr), f"![{figs[1]}]({figs[1]})\n",
        "## Claims (paired over seeds)\n",
        claims_markdown(t) + "\n",
        "Notes: " + "; ".join(f"{r.comparison}: {r.note}" for r in t.itertuples() if r.note)
        + ".\n",
        "\n## Files\n\n- `lr_multiples.csv` (part A), `convergence.csv` and `trajectories.csv` "
        "(part B, every run and its trace), `claims_rows.csv` (the ledger's rows), "
        "`claims_detail.csv`; rebuild with `--report-only`.\n",
    ]
    meta = read_run_meta(out)
    finish_report(out, "\n".join(md), timer, quick, runtime_s=meta.get("runtime_s"),
                  command=meta.get("command"), note=meta.get("note", ""))
    print(f"wrote {out / 'report.md'}")
    return 0
