"""The timed tasks of one workload: every tool on the same operator inputs, interleaved,
with accuracy against the ground truth; one CSV row per (task, tool)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

import numpy as np

from analysis.benchmark.config import Config
from analysis.benchmark.truth import (
    Truth,
    density_error,
    ground_truth,
    rel_err,
    rel_err_vec,
    top_err,
)
from analysis.harness.peers import CurvatureTool, CurvlinopsTool, PyHessianTool
from analysis.harness.timing import Run, interleaved, times
from analysis.harness.workloads import Workload, seeded_vector


def gradient_job(w: Workload) -> Callable[[], tuple[None, int]]:
    """One full-dataset gradient by plain ``loss.backward`` (batch-size weighted), the
    cost unit of every ratio; as a job for :func:`interleaved` (no products)."""
    def run() -> tuple[None, int]:
        w.model.zero_grad(set_to_none=True)
        n = w.n_data
        for x, y in w.data:  # the DataLoader itself on loader-fed workloads
            (w.loss(w.model(x), y) * (len(x) / n)).backward()
        w.model.zero_grad(set_to_none=True)
        return None, 0

    return run


def _row(w: Workload, task: str, tool: str, run: Run, grad_s: float, **extra: Any) -> dict:
    """The ``results.csv`` row of one (task, tool): median/min/max seconds, seconds in
    gradients, products, peak memory and status; ``extra`` overrides columns."""
    t = statistics.median(run.seconds) if run.seconds else math.nan
    row = {
        "workload": w.name, "sweep": w.sweep, "group": w.group, "feed": w.feed,
        "n_params": w.n_params, "n_data": w.n_data,
        "task": task, "tool": tool,
        "status": "error" if run.error else ("timeout" if run.timed_out else "ok"),
        "repeats": len(run.seconds), "time_s": t,
        "time_min_s": min(run.seconds) if run.seconds else math.nan,
        "time_max_s": max(run.seconds) if run.seconds else math.nan,
        "grad_s": grad_s, "time_in_gradients": t / grad_s if grad_s else math.nan,
        "hvps": run.hvps if not run.error else math.nan, "rel_error": math.nan,
        "error_metric": "", "peak_mem_mib": run.mem_mib, "extrapolated": run.extrapolated,
        "note": run.error or (f"stopped after {t:g} s: time is a lower bound" if run.timed_out
                              else ""),
    }
    row.update(extra)
    return row


def bench_workload(w: Workload, cfg: Config, log: Callable[[str], None],
                   tasks: tuple[str, ...] | None = None, truth: Truth | None = None,
                   ) -> tuple[list[dict], dict[str, Any]]:
    """All tasks on one workload; returns the CSV rows and extra artefacts (densities, truth).

    ``tasks`` defaults to ``cfg.tasks``; ``truth`` (the ground truth of the same model and
    examples, e.g. from the tensor-fed twin of a DataLoader workload) is computed if None.
    """
    tasks = cfg.tasks if tasks is None else tasks
    log(f"== {w.label}: n = {w.n_params} parameters, N = {w.n_data} examples "
        f"in {len(w.batches)} batches, data as {w.feed}")
    tools = {"curvature": CurvatureTool(w)}
    for cls in (PyHessianTool, CurvlinopsTool):
        try:
            tools[cls.name] = cls(w)
        except Exception as err:  # the peer is not installed: say so in the report
            log(f"   {cls.name} unavailable: {err}")
    if truth is None:
        truth = ground_truth(w, cfg, cfg.top_k if "top10" in tasks else 1)
    log(f"   ground truth ({truth.kind}) in {truth.seconds:.1f} s: lambda_max = "
        f"{truth.top[0]:.6g}, trace = {truth.trace:.6g} +- {truth.trace_stderr:.2g}")
    rows: list[dict] = []
    extras: dict[str, Any] = {"truth": truth}
    v = seeded_vector(w.n_params, 1)
    grad = gradient_job(w)
    jobs: dict[str, Callable[[], Any]] = {"gradient": grad}
    warm_ops: dict[str, Any] = {}
    if cfg.warmup:
        # Warm-up: the first call of every kernel, for every tool.
        grad()
        for tool in tools.values():
            tool.hvp(v)
        warm_ops.update({name: tool.operator() for name, tool in tools.items()})
        for name, tool in tools.items():
            tool.hvp(v, warm_ops[name])  # builds the curvature graph cache
        for name, tool in tools.items():
            jobs[f"hvp/{name}"] = lambda tool=tool: tool.hvp(v)
            jobs[f"hvp_warm/{name}"] = lambda tool=tool, name=name: tool.hvp(v, warm_ops[name])
    else:
        # No untimed warm-up (large models, where kernel start-up is negligible): the
        # fresh product is the first product of the operator the warm one then reuses.
        def fresh(name: str, tool: Any) -> Any:
            warm_ops[name] = tool.operator()
            return tool.hvp(v, warm_ops[name])

        for name, tool in tools.items():
            jobs[f"hvp/{name}"] = lambda tool=tool, name=name: fresh(name, tool)
            jobs[f"hvp_warm/{name}"] = lambda tool=tool, name=name: tool.hvp(v, warm_ops[name])
    runs = interleaved(jobs, cfg.hvp_repeats, long_s=cfg.long_s, timeout_s=cfg.timeout_s, log=log)
    grad_s = statistics.median(runs["gradient"].seconds)
    rows.append(_row(w, "gradient", "torch", runs["gradient"], grad_s))
    ref_hv = runs["hvp/curvature"].value
    for key, run in runs.items():
        if key == "gradient":
            continue
        task, name = key.split("/")
        err = rel_err_vec(run.value, ref_hv) if run.value is not None else math.nan
        rows.append(_row(w, task, name, run, grad_s, rel_error=err,
                         error_metric="||Hv - Hv_curvature|| / ||Hv_curvature||"))
    warm_ops.clear()  # frees the warm operators (and their graph caches)
    log(f"   gradient {1e3 * grad_s:.1f} ms; HVP/gradient: " + ", ".join(
        f"{r['tool']} {r['task']} {r['time_in_gradients']:.2f}" for r in rows if r["task"] != "gradient"))

    # -- extreme eigenvalues
    for task in ("lambda_max", "top10"):
        if task not in tasks:
            continue
        method = "lambda_max" if task == "lambda_max" else "top"
        jobs = {name: (lambda tool=tool, method=method: getattr(tool, method)(cfg, 0))
                for name, tool in tools.items()}
        runs = interleaved(jobs, cfg.repeats, long_s=cfg.long_s, timeout_s=cfg.timeout_s, log=log)
        for name, run in runs.items():
            if run.error or run.timed_out:
                rows.append(_row(w, task, name, run, grad_s))
                continue
            if task == "lambda_max":
                err, metric = rel_err(float(np.max(run.value)), truth.top[0]), "|lmax - truth| / truth"
            else:
                err, metric = top_err(run.value, truth.top), "max_i |l_i - truth_i| / |truth_i|"
            rows.append(_row(w, task, name, run, grad_s, rel_error=err, error_metric=metric))
        log("   " + task + ": " + _summary(rows, w.name, task))

    hvp_s = {r["tool"]: r["time_s"] for r in rows if r["task"] == "hvp_warm"}
    if "trace" in tasks:
        rows += task_trace(w, tools, truth, cfg, grad_s, hvp_s, log)
        log("   trace: " + _summary(rows, w.name, "trace"))

    if "density" in tasks:
        jobs = {}
        for name, tool in tools.items():
            # A tool whose 10 x 80 single products would exceed the budget runs fewer
            # probes (each probe is an independent, identical loop) and is scaled up.
            # curvature advances its probes together: its estimate is 80 block products.
            if name not in cfg.density_tools:
                continue
            est = cfg.probes * cfg.steps * hvp_s.get(name, math.inf)
            if name == "curvature":
                est = cfg.steps * _block_product_s(tool, cfg.probes)
            probes = max(1, min(cfg.probes, int(cfg.probes * cfg.budget_s / est)))
            # A peer whose single probe exceeds the budget runs fewer Lanczos steps; its
            # time and products are scaled to the full run (curvature always runs them all).
            steps = cfg.steps
            if name != "curvature" and est / cfg.probes > cfg.budget_s:
                steps = max(cfg.min_steps, min(cfg.steps, int(cfg.budget_s / hvp_s[name])))
            jobs[name] = lambda tool=tool, probes=probes, steps=steps: tool.density(
                cfg, 0, probes, steps)
        runs = interleaved(jobs, cfg.repeats, long_s=cfg.long_s, timeout_s=cfg.timeout_s, log=log)
        extras["density"] = {}
        for name, run in runs.items():
            if run.error or run.timed_out:
                rows.append(_row(w, "density", name, run, grad_s))
                continue
            nodes, weights = run.value
            extras["density"][name] = (nodes, weights)
            err, metric = density_error(w, truth, nodes, weights)
            note = (f"{1 / run.scale:.0%} of the products run (fewer probes or steps); time "
                    "and HVPs scaled" if run.extrapolated else "")
            if name == "curvlinops" and run.extrapolated:
                note = "boundaries + fewer probes run; probe time and HVPs scaled"
            if run.extrapolated and name != "curvature":
                note += "; error is that of the part run"
            rows.append(_row(w, "density", name, run, grad_s, rel_error=err, error_metric=metric,
                             note=note))
        log("   density: " + _summary(rows, w.name, "density"))

    if "blocks" in tasks:
        rows.append(task_blocks(w, cfg, grad_s, log))
    return rows, extras


def task_blocks(w: Workload, cfg: Config, grad_s: float, log: Callable[[str], None]) -> dict:
    """Per-layer spectra (:func:`curvature.block_spectra`: lambda_max, lambda_min and a
    Hutchinson trace of every diagonal block, all blocks in lockstep); curvature only, no
    peer has it. ``hvps`` counts passes over the data (one multi-column product each)."""
    import curvature as cv

    out: dict[str, Any] = {}

    def job() -> tuple[None, int]:
        blocks = w.blocks if w.blocks is not None else cfg.block_kind
        r = cv.block_spectra(w.model, w.loss, w.data, blocks=blocks, tol=cfg.tol,
                             max_steps=cfg.block_steps, trace_matvecs=cfg.block_trace, seed=0)
        out["r"] = r
        return None, r.num_passes

    run = interleaved({"blocks": job}, 1, long_s=cfg.long_s, timeout_s=cfg.timeout_s, log=log)
    run = run["blocks"]
    note = ""
    if "r" in out:
        r = out["r"]
        conv = sum(b.converged_max for b in r.blocks)
        top = max(r.blocks, key=lambda b: b.lambda_max)
        kind = cfg.block_kind if w.blocks is None else "given groups"
        note = (f"{len(r.blocks)} blocks ({kind}), {r.num_matvecs} columns in "
                f"{r.num_passes} passes; lambda_max converged in {conv} of {len(r.blocks)} "
                f"(max {cfg.block_steps} steps); largest block lambda_max {top.lambda_max:.4g} "
                f"({top.name})")
    row = _row(w, "blocks", "curvature", run, grad_s)
    row["note"] = row["note"] or note
    log(f"   blocks: {row['time_s']:.2f} s, {note}")
    return row


def _block_product_s(tool: CurvatureTool, k: int) -> float:
    """Seconds of one warm ``k``-column product (the second of two on one operator)."""
    op = tool.operator()
    V = seeded_vector(op.shape[0] * k, 1).reshape(op.shape[0], k)
    return times(lambda: op.matmat(V), 2)[-1]


def _summary(rows: list[dict], workload: str, task: str) -> str:
    return ", ".join(
        f"{r['tool']} {r['time_s']:.2f}s/{r['hvps']} HVPs/err {r['rel_error']:.1e}"
        if r["status"] == "ok" else f"{r['tool']} error"
        for r in rows if r["workload"] == workload and r["task"] == task
    )


def task_trace(w: Workload, tools: dict[str, Any], truth: Truth, cfg: Config, grad_s: float,
               hvp_s: dict[str, float], log: Callable[[str], None]) -> list[dict]:
    """Trace to 1%: each estimator at the budget where its standard error is 1% of the trace.

    * curvature (Hutch++): the smallest budget of ``cfg.trace_ladder`` whose reported
      standard error is at most 1% of the estimate (found once, untimed), then timed;
    * curvlinops (Hutch++, same algorithm): timed at the same budget (rounded to a
      multiple of 3, which its ``hutchpp_trace`` requires);
    * PyHessian (Hutchinson): ``Var[z^T H z] / (0.01 tr H)^2`` products (the variance
      exact from the dense Hessian, else estimated from 48 samples); run for real up to
      ``cfg.pyhessian_trace_cap`` products, beyond that the time is extrapolated
      linearly from the capped run (``extrapolated=True``). Its own stopping rule
      (``tol=1e-2`` on the change of the running mean) is reported as a separate row.
    """
    rows = []
    cur = tools["curvature"]
    budget, reached, rel_se, est = cfg.trace_ladder[0], False, math.inf, math.nan
    search: Run | None = None
    for m in cfg.trace_ladder:
        if m > cfg.trace_ladder[0] and m * hvp_s.get("curvature", 0.0) > cfg.budget_s:
            break  # the next rung would take too long on this machine: stop the search
        # Each rung is a timed run; with one repeat the last rung is curvature's row.
        search = interleaved({"curvature": lambda m=m: (lambda r: (r[:2], r[2]))(cur.trace(m, seed=0))}, 1,
                             long_s=cfg.long_s, timeout_s=cfg.timeout_s, log=log)["curvature"]
        if search.error or search.timed_out:
            break
        (est, se), budget = search.value, m
        rel_se = se / abs(est)
        if rel_se <= cfg.trace_rel:
            reached = True
            break
    # Compared at equal accuracy: 1%, or what Hutch++ reached if it stopped short of 1%.
    target = max(cfg.trace_rel, rel_se)
    tr = truth.trace if math.isfinite(truth.trace) else est
    m_hutch = max(2, math.ceil(truth.hutchinson_var / (target * tr) ** 2))
    affordable = int(cfg.budget_s / hvp_s.get("pyhessian", math.inf))
    m_run = max(min(10, cfg.pyhessian_trace_cap), min(m_hutch, cfg.pyhessian_trace_cap, affordable))
    log(f"   trace budgets: Hutch++ {budget} products (standard error {rel_se:.2%}"
        f"{'' if reached else ', 1% not reached'}); Hutchinson needs {m_hutch} for "
        f"{target:.2%} "
        f"(Var[z'Hz] = {truth.hutchinson_var:.3g}), run {m_run}")
    jobs: dict[str, Callable[[], Any]] = {}
    if cfg.repeats > 1 or search is None:
        jobs["curvature"] = lambda: (lambda r: ((r[0], r[1]), r[2]))(cur.trace(budget, seed=0))
    if "curvlinops" in tools:
        jobs["curvlinops"] = lambda: (lambda r: ((r[0], r[1]), r[2]))(
            tools["curvlinops"].trace(budget, seed=0))
    if "pyhessian" in tools and cfg.trace_own_rule:
        def pyh_own() -> tuple[tuple[float, float], int]:
            s, n = tools["pyhessian"].trace_samples(cfg.power_max_iter, seed=0, tol=cfg.trace_rel)
            return (float(np.mean(s)), math.nan), n

        jobs["pyhessian (own rule)"] = pyh_own
    if "pyhessian" in tools:
        def pyh() -> tuple[tuple[float, float], int]:
            s, n = tools["pyhessian"].trace_samples(m_run, seed=0)
            return (float(np.mean(s)), float(np.std(s, ddof=1) / math.sqrt(len(s)))), n

        jobs["pyhessian"] = pyh
    runs = interleaved(jobs, cfg.repeats, long_s=cfg.long_s, timeout_s=cfg.timeout_s, log=log)
    if "curvature" not in runs and search is not None:
        runs = {"curvature": search, **runs}
    metric = "|tr - truth| / |truth|" + (" (truth: Hutch++ reference)" if truth.trace_stderr else "")
    for name, run in runs.items():
        if run.error or run.timed_out:
            rows.append(_row(w, "trace", name, run, grad_s))
            continue
        est, se = run.value
        row = _row(w, "trace", name, run, grad_s, rel_error=rel_err(est, truth.trace),
                   error_metric=metric, note=f"estimate {est:.6g}" + (
                       f", stderr {se:.3g}" if se == se else ""))
        if name in ("curvature", "curvlinops") and not reached:
            row["note"] += (f"; 1% not reached: Hutch++ standard error {rel_se:.1%} at the "
                            f"largest budget tried ({budget})")
        ran = int(run.hvps)
        if name == "pyhessian" and m_hutch > ran:
            for col in ("time_s", "time_min_s", "time_max_s"):
                row[col] *= m_hutch / ran
            row["time_in_gradients"] = row["time_s"] / grad_s
            row["hvps"] = m_hutch
            row["extrapolated"] = True
            row["note"] += f"; ran {ran} of the {m_hutch} products needed, error is at {ran}"
        if name == "pyhessian" and not reached:
            row["note"] += (f"; products for {target:.1%} standard error, the accuracy "
                            "Hutch++ reached")
        if name == "pyhessian (own rule)":
            row["tool"], row["task"] = "pyhessian", "trace_own_rule"
        rows.append(row)
    return rows

