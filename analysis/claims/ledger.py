"""Build the claims ledger: collect every report's ``claims_rows.csv``, adjust all
p-values together (Benjamini-Hochberg), decide each row's verdict
(:mod:`analysis.claims.rules`) and write ``claims.csv`` and ``report.md``."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.claims.quotes import LARGER_SCALE, quote_for
from analysis.claims.rules import VERDICTS, ledger_verdict
from analysis.harness.report import markdown_table, write_atomic
from analysis.harness.stats import benjamini_hochberg

__all__ = ["COLUMNS", "build", "collect", "decide", "write_report"]

COLUMNS = ["claim", "seed_file", "workload", "metric", "comparison", "effect", "ci_low",
           "ci_high", "p_value", "p_adjusted", "n_seeds", "verdict"]


def collect(reports: Path | list[Path], exclude: str = "claims") -> pd.DataFrame:
    """Every ``<reports>/*/claims_rows.csv`` (but ``<exclude>/``), with a ``source``
    column naming its folder. With several ``reports`` folders, a report folder name
    found in an earlier one hides the same name in later ones.

    Raises:
        FileNotFoundError: no rows file at all.
        ValueError: a file without the ledger's columns, or an unknown verdict word.
    """
    roots = [Path(reports)] if isinstance(reports, (str, Path)) else [Path(r) for r in reports]
    files: dict[str, Path] = {}
    for root in roots:
        for f in sorted(root.glob("*/claims_rows.csv")):
            if f.parent.name != exclude:
                files.setdefault(f.parent.name, f)
    frames = []
    for name, f in sorted(files.items()):
        d = pd.read_csv(f, dtype={"verdict": str})
        missing = [c for c in COLUMNS if c not in d.columns]
        if missing:
            raise ValueError(f"{f}: missing columns {missing}")
        d = d[COLUMNS].copy()
        d["verdict"] = d["verdict"].fillna("")
        bad = sorted(set(d.verdict) - set(VERDICTS) - {""})
        if bad:
            raise ValueError(f"{f}: unknown verdicts {bad}; use one of {VERDICTS}")
        d["source"] = name
        frames.append(d)
    if not frames:
        raise FileNotFoundError(f"no */claims_rows.csv under {[str(r) for r in roots]}")
    return pd.concat(frames, ignore_index=True)


def decide(rows: pd.DataFrame) -> pd.DataFrame:
    """BH over every row with a p-value (rows marked ``not testable at this scale`` keep
    that verdict and no p-value) and the verdict of each row at its adjusted p-value."""
    out = rows.copy()
    testable = (out.verdict != "not testable at this scale").to_numpy()
    p = out.p_value.to_numpy(float).copy()
    p[~testable] = np.nan
    out["p_adjusted"] = benjamini_hochberg(p)
    out["verdict"] = [ledger_verdict(r, r.p_adjusted) for r in out.itertuples()]
    return out.sort_values(["seed_file", "claim", "workload", "metric", "comparison"],
                           kind="stable").reset_index(drop=True)


def _shown(verdict: str, seed_file: str) -> str:
    if verdict == "does not hold" and seed_file in LARGER_SCALE:
        return "not reproduced at this scale"
    return verdict


def _effect_text(r) -> str:
    """The effect in its own units: a ratio ``x`` (log-ratio effects: the comparison says
    "log ratio" or the metric starts with "log "), a Spearman rho, or the raw value."""
    comparison, metric = str(r.comparison), str(r.metric)
    if not math.isfinite(r.effect):
        return "n/a"
    if not (math.isfinite(r.ci_low) and math.isfinite(r.ci_high)):
        return f"{r.effect:.3g} (no interval)"
    if "Spearman" in comparison:
        return f"rho {r.effect:+.2f} [{r.ci_low:+.2f}, {r.ci_high:+.2f}]"
    if "log ratio" in comparison or metric.startswith("log "):
        return (f"x{math.exp(r.effect):.3g} [{math.exp(r.ci_low):.3g}, "
                f"{math.exp(r.ci_high):.3g}]")
    return f"{r.effect:+.3g} [{r.ci_low:+.3g}, {r.ci_high:+.3g}]"


def write_report(ledger: pd.DataFrame, out: Path) -> Path:
    """``out/report.md``: a verdict table per claim (the seed's words quoted, the
    experiment linked) and the method."""
    md = ["# Claims ledger", "",
          "Every claim of the seed files (`/work/shared/seeds/`) that an experiment here "
          "tested, with the verdict of each comparison. Built by `python -m analysis.claims` "
          "from every `reports/*/claims_rows.csv`; the numbers are in "
          "[`claims.csv`](claims.csv).", "",
          "**Method.** Each row is one pre-registered comparison of one report: a paired "
          "comparison over seeds (same initial weights and batch order per seed) with its "
          "effect (a geometric-mean ratio, shown as `x` ratio with its 95% interval, or a "
          "difference, or a Spearman rho) and a paired t-test (on log ratios for ratio effects; with 5 seeds "
          "the Wilcoxon signed-rank test cannot go below p = 0.0625, so the t-test is "
          "primary). Benjamini-Hochberg adjusts the p-values of **all** rows of all "
          f"reports together ({int(ledger.p_adjusted.notna().sum())} tests). A row "
          "**holds** when the adjusted p <= 0.05 and its interval lies on the claimed side, "
          "**does not hold** when both point the other way, and is **inconclusive** "
          "otherwise; equivalence claims hold when the interval of the ratio lies inside "
          "the stated margin. Rows whose comparison states no `(expect ...)` were decided "
          "by their own report's rule (an equivalence margin, a count of diverged seeds); "
          "they keep that verdict unless it rested on a directional effect that is no "
          "longer significant after the ledger's adjustment (then inconclusive); rows "
          "without a p-value (counts) are outside the adjustment "
          "(`analysis/claims/rules.py`). Claims whose seed evidence "
          "comes from a much larger scale (" + "; ".join(f"`{k}`: {v}" for k, v in
                                                       LARGER_SCALE.items())
          + ") read **not reproduced at this scale** instead of 'does not hold': these "
          "workloads (at most ~7k parameters, digits and MNIST-1D) cannot refute them.", "",
          "Reports collected: " + ", ".join(
              f"[`{src}`](../{src}/report.md) ({n} rows)"
              for src, n in ledger.source.value_counts(sort=False).items())
          + ". Rerun `python -m analysis.claims` whenever a report's rows change: the "
          "adjusted p-values depend on every row.", "",
          "## Verdicts by claim", ""]
    summary = []
    for claim, g in ledger.groupby("claim", sort=False):
        counts = g.verdict.map(lambda v, sf=g.seed_file.iloc[0]: _shown(v, sf)).value_counts()
        summary.append({"claim": claim, "seed file": g.seed_file.iloc[0], "rows": len(g),
                        **{v: int(counts.get(v, 0)) for v in
                           ("holds", "does not hold", "not reproduced at this scale",
                            "inconclusive", "not testable at this scale")}})
    md += [markdown_table(pd.DataFrame(summary)), ""]
    for (seed_file, claim), g in ledger.groupby(["seed_file", "claim"], sort=False):
        quote, exact = quote_for(claim, seed_file)
        md += [f"### {claim} (`{seed_file}`)", ""]
        if quote:
            md += [f"> {quote}", "", f"-- `{seed_file}`" + ("" if exact else
                   " (the file's headline; the claim is stated in the linked report)"), ""]
        sources = sorted(set(g.source))
        md += ["Experiment: " + ", ".join(f"[`reports/{s}/`](../{s}/report.md) "
                                          f"([rows](../{s}/claims_rows.csv))" for s in sources),
               ""]
        t = g.assign(effect_text=[_effect_text(r) for r in g.itertuples()],
                     shown=[_shown(v, seed_file) for v in g.verdict])
        md += [markdown_table(t, "{:.3g}", columns=[
            "workload", "metric", "comparison", "effect_text", "p_value", "p_adjusted",
            "n_seeds", "shown"]).replace("| effect_text |", "| effect [95% CI] |")
            .replace("| shown |", "| verdict |"), ""]
    return write_atomic(Path(out) / "report.md", "\n".join(md))


def build(reports: Path | list[Path], out: Path) -> pd.DataFrame:
    """Collect, decide, write ``out/claims.csv`` and ``out/report.md``; return the
    ledger (with its ``source`` column)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ledger = decide(collect(reports, exclude=out.name))
    ledger[COLUMNS].to_csv(out / "claims.csv", index=False)
    write_report(ledger, out)
    return ledger
