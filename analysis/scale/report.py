"""``report.md`` and ``cost_vs_params.png`` of :mod:`analysis.scale`, rebuilt from
``runs.csv`` alone (``--report-only``)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

__all__ = ["cost_figure", "write_report"]

GOAL_MINUTES = {"per_layer": 20.0, "budget": 6.0}
GOAL_RSS_MIB = 4096.0


def _num(v, fmt: str = "{:.1f}") -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "–"
    return "–" if math.isnan(f) else fmt.format(f)


def _text(v) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def _flag(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return "yes" if str(v).lower() in ("true", "1", "1.0") else "no"


def cost_figure(df: pd.DataFrame, path: Path) -> bool:
    """Wall time, seconds per product and peak RSS of the sweep (and the training step)
    against the parameter count, log-log; ``False`` when there is no sweep row."""
    import matplotlib.pyplot as plt

    if "num_params" not in df or "kind" not in df:
        return False
    sweep = df[df["kind"] == "sweep"].dropna(subset=["num_params"]).sort_values("num_params")
    train = df[df["kind"] == "train_step"].dropna(subset=["num_params"]).sort_values("num_params")
    if sweep.empty and train.empty:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    done = sweep[sweep["exit_code"] == 0]
    if not sweep.empty:
        axes[0].loglog(sweep["num_params"], sweep["wall_s"], "o-", label="reduced analysis (wall)")
    if not train.empty:
        axes[0].loglog(train["num_params"], train["wall_s"], "s--", label="one training step")
    axes[0].set_ylabel("seconds")
    axes[0].set_title("wall time")
    if not done.empty and "products" in done and "analysis_s" in done:
        per = done["analysis_s"].astype(float) / done["products"].astype(float)
        axes[1].loglog(done["num_params"], per, "o-", label="analysis s / product")
        if not train.empty:
            axes[1].loglog(train["num_params"], train["wall_s"], "s--", label="training step")
    axes[1].set_ylabel("seconds")
    axes[1].set_title("time per Hessian product")
    if not sweep.empty:
        axes[2].loglog(sweep["num_params"], sweep["peak_rss_mib"] / 1024, "o-",
                       label="reduced analysis")
    analyses = df[df["kind"] == "analyze"].dropna(subset=["num_params", "peak_rss_mib"])
    for _, r in analyses.iterrows():
        axes[2].loglog([r["num_params"]], [r["peak_rss_mib"] / 1024], "*", ms=12,
                       label=f"ResNet-18 {r['run']}")
    if not train.empty:
        axes[2].loglog(train["num_params"], train["peak_rss_mib"] / 1024, "s--",
                       label="training step")
    axes[2].axhline(GOAL_RSS_MIB / 1024, color="gray", lw=0.8, ls=":", label="4 GB goal")
    axes[2].set_ylabel("peak resident memory (GiB)")
    axes[2].set_title("peak memory (whole process)")
    for ax in axes:
        ax.set_xlabel("parameters (ResNet-18 width multiplier sweep)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _analyze_table(df: pd.DataFrame) -> list[str]:
    rows = df[df["kind"] == "analyze"]
    if rows.empty:
        return ["No ResNet-18 analysis was run."]
    out = ["| run | wall (min) | goal (min) | peak RSS (MiB) | products | dtype | λ_max | "
           "converged λ_max / λ_min | per-layer table / figure | blocks λ_max / λ_min "
           "converged | exit |",
           "| --- |" + " --- |" * 10]
    for _, r in rows.iterrows():
        if pd.isna(r.get("exit_code")):
            out.append(f"| {r['run']} | – | {_num(GOAL_MINUTES.get(r['run']), '{:g}')} | – | – "
                       f"| – | – | – | – | – | not run: {r.get('note', '')} |")
            continue
        blocks = (f"{_num(r.get('per_layer_max_converged'), '{:.0f}')} / "
                  f"{_num(r.get('per_layer_min_converged'), '{:.0f}')} of "
                  f"{_num(r.get('per_layer_blocks'), '{:.0f}')}")
        exit_text = "timed out" if str(r.get("timed_out")) == "True" else _num(r["exit_code"], "{:.0f}")
        out.append(
            f"| {r['run']} | {_num(r['wall_s'] / 60, '{:.1f}')} | "
            f"{_num(GOAL_MINUTES.get(r['run']), '{:g}')} | {_num(r['peak_rss_mib'], '{:.0f}')} | "
            f"{_num(r.get('products'), '{:.0f}')} | {_text(r.get('dtype'))} | "
            f"{_num(r.get('lambda_max'), '{:.5g}')} | {_flag(r.get('converged_largest'))} / "
            f"{_flag(r.get('converged_smallest'))} | {_flag(r.get('per_layer_csv'))} / "
            f"{_flag(r.get('per_layer_png'))} | {blocks} | {exit_text} |")
    for _, r in rows.iterrows():
        if isinstance(r.get("command"), str):
            out.append(f"\n`{r['run']}`: `{r['command']}`")
    return out


def _sweep_table(df: pd.DataFrame) -> list[str]:
    sweep = df[df["kind"] == "sweep"].sort_values("num_params")
    train = df[df["kind"] == "train_step"].set_index("width")
    if sweep.empty:
        return ["No sweep was run."]
    out = ["| width | parameters | dtype | training step (s) | training step peak (MiB) | "
           "analysis wall (s) | products | s / product | s / product ÷ training step | "
           "analysis peak (MiB) | λ_max |",
           "| --- |" + " --- |" * 10]
    for _, r in sweep.iterrows():
        t = train.loc[r["width"]] if r["width"] in train.index else None
        try:
            per = float(r.get("analysis_s")) / float(r.get("products"))
        except (TypeError, ValueError, ZeroDivisionError):
            per = math.nan
        ratio = per / float(t["wall_s"]) if t is not None else math.nan
        out.append(
            f"| {r['width']:g} | {_num(r['num_params'], '{:,.0f}')} | {_text(r.get('dtype'))} | "
            f"{_num(t['wall_s'] if t is not None else None, '{:.2f}')} | "
            f"{_num(t['peak_rss_mib'] if t is not None else None, '{:.0f}')} | "
            f"{_num(r['wall_s'])} | {_num(r.get('products'), '{:.0f}')} | {_num(per, '{:.2f}')} | "
            f"{_num(ratio, '{:.1f}')} | {_num(r['peak_rss_mib'], '{:.0f}')} | "
            f"{_num(r.get('lambda_max'), '{:.4g}')} |")
    return out


def write_report(df: pd.DataFrame, out: Path, command: str, notes: str = "") -> Path:
    """``out/report.md`` (and the figure) from the rows of ``runs.csv``."""
    from analysis.scale.runs import SWEEP_ARGS
    from curvature import memory

    has_fig = cost_figure(df, out / "cost_vs_params.png")
    examples = int(df["examples"].dropna().iloc[0]) if "examples" in df and len(df) else 0
    threads = int(df["threads"].dropna().iloc[0]) if "threads" in df and len(df) else 0
    lines = [
        "# Post-hoc analysis at ResNet-18 scale (issue 13)", "",
        f"Regenerate: `{command}` (report only: `python -m analysis.scale --report-only`).",
        "",
        f"Model: `analysis.scale.resnet18:resnet18_cifar` (CIFAR ResNet-18, a user-written "
        f"factory, no torchvision), {examples} synthetic CIFAR-shaped examples "
        f"(`--data synthetic-image:n_train={examples}`, `--no-test`), {threads} thread(s), "
        "each run a child process at `nice 5` on a machine shared with other jobs: wall "
        "times include that contention. Peak RSS is the child's `VmHWM` (the whole process: "
        "interpreter, torch, model, data).", "",
        "Memory policy (`curvature/memory.py`): stored vectors of each estimator within "
        f"{memory.VECTOR_BYTES / 2**30:g} GiB; float64 up to "
        f"{memory.FLOAT64_MAX_PARAMS:,} parameters on CPU, float32 products with float64 "
        "bookkeeping above; product batches whose gradient graph saves at most "
        f"{memory.GRAPH_BYTES / 2**30:g} GiB.", "",
        "## ResNet-18 runs (done-when of issue 13)", "",
        *_analyze_table(df), "",
        "## Cost as the model grows", "",
        "Reduced analysis at each width: `" + " ".join(SWEEP_ARGS) + "` (a fixed amount of "
        "work), against one training step at the same batch.", "",
        *_sweep_table(df), "",
    ]
    if has_fig:
        lines += ["![cost against parameters](cost_vs_params.png)", ""]
    if notes:
        lines += ["## Notes", "", notes.strip(), ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
