"""The "What missed, and why" section: one bullet per missed target, the prose of
:mod:`analysis.benchmark.text` filled in with the measured numbers that explain it."""

from __future__ import annotations

import math

import pandas as pd

from analysis.benchmark import text


def discussion(df: pd.DataFrame, ratios: pd.DataFrame, tg: list[dict], prof: pd.DataFrame,
               mat: pd.DataFrame | None = None) -> list[str]:
    """Bullet points on every missed target, with the measured numbers that explain it."""
    out: list[str] = []
    main = df[(df.sweep == "") & (df.status == "ok")]
    mat = pd.DataFrame() if mat is None else mat

    def get(wl: str, task: str, tool: str, col: str) -> float:
        s = main[(main.workload == wl) & (main.task == task) & (main.tool == tool)]
        return float(s[col].iloc[0]) if len(s) else math.nan

    def per_col(wl: str, tool: str, k: int) -> float:
        s = mat[(mat.workload == wl) & (mat.tool == tool) & (mat.k == k)] if len(mat) else mat
        return float(s.gradients_per_column.iloc[0]) if len(s) else math.nan

    def block_text(wl: str) -> str:
        c1, c32 = per_col(wl, "curvature", 1), per_col(wl, "curvature", 32)
        l32 = per_col(wl, "curvlinops", 32)
        if math.isnan(c1):
            return ""
        return text.BLOCK_COST.format(
            c1=c1, c32=c32, l32=l32,
            saves=text.BLOCK_SAVES_LITTLE if c32 > 0.6 * c1 else text.BLOCK_HELPS,
            gets=text.BLOCK_GETS_LESS if l32 < c32 else text.BLOCK_GETS_MOST)

    missed = [t for t in tg if not t["met"]]
    if not missed:
        return [text.ALL_MET]
    for t in missed:
        wl, target = t["workload"], t["target"]
        head = text.MISSED_HEAD.format(workload=wl, target=target, measured=t["measured"])
        if target.startswith("exact HVP"):
            p = prof[(prof.workload == wl) & (prof.run == "curvature hvp (fresh)")] \
                if not prof.empty else prof
            top = ", ".join(f"{r.op} {r.share:.0%}" for _, r in p.head(3).iterrows())
            out.append(head + text.MISSED_HVP.format(
                fresh=get(wl, "hvp", "curvature", "time_in_gradients"),
                warm=get(wl, "hvp_warm", "curvature", "time_in_gradients"),
                pyhessian=get(wl, "hvp", "pyhessian", "time_in_gradients"))
                + (text.MISSED_HVP_PROFILE.format(top=top) if top else ""))
        elif target.startswith("no peer"):
            rw = ratios[(ratios.workload == wl) & (ratios.speedup < 1)]
            parts = []
            for _, r in rw.iterrows():
                why = ""
                if r.task == "trace":
                    why = text.PEER_FASTER_TRACE + block_text(wl)
                elif r.task == "hvp":
                    why = text.PEER_FASTER_HVP
                parts.append(text.PEER_FASTER.format(peer=r.peer, task=r.task, peer_s=r.peer_s,
                                                     curvature_s=r.curvature_s, why=why))
            out.append(f"{head} " + "; ".join(parts))
        elif target.startswith("trace: >= 1x curvlinops"):
            out.append(head + text.PEER_FASTER_TRACE + block_text(wl))
        elif target.startswith("trace"):
            ph = main[(main.workload == wl) & (main.task == "trace") & (main.tool == "pyhessian")]
            var = df[(df.workload == wl) & (df.task == "trace") & (df.tool == "pyhessian")]
            note = str(var.note.iloc[0]) if len(var) else ""
            out.append(head + text.MISSED_TRACE.format(
                hutchinson=float(ph.hvps.iloc[0]) if len(ph) else math.nan,
                hutchpp=get(wl, "trace", "curvature", "hvps"))
                + (text.MISSED_TRACE_NOTE.format(note=note.split("; ", 1)[-1])
                   if "accuracy" in note else ""))
        elif target.startswith("lambda_max") or target.startswith("density"):
            task = target.split(":")[0]
            r = ratios[(ratios.workload == wl) & (ratios.task == task) & (ratios.peer == "pyhessian")]
            if not len(r):
                out.append(head)
                continue
            r = r.iloc[0]
            bullet = head + text.SPEEDUP_SPLIT.format(hvp_ratio=r.hvp_ratio,
                                                      per_hvp_ratio=r.per_hvp_ratio)
            if task == "lambda_max":
                bullet += text.MISSED_LAMBDA_MAX.format(
                    curvature_hvps=r.curvature_hvps, peer_hvps=r.peer_hvps,
                    peer_err=r.peer_err, curvature_err=r.curvature_err)
            else:
                bullet += text.MISSED_DENSITY + block_text(wl)
                row = main[(main.workload == wl) & (main.task == "density")
                           & (main.tool == "curvature")]
                if len(row) and "trace" in str(row.error_metric.iloc[0]):
                    bullet += text.DENSITY_PROBE_NOISE
            out.append(bullet)
        else:
            out.append(head)
    return out
