"""The fixed prose of the benchmark report (``report.md``), kept apart from the code that
computes the numbers. Templates take their numbers through ``str.format`` fields."""

from __future__ import annotations

HEADER = (
    "# Benchmark: curvature vs PyHessian vs curvlinops\n"
    "\n"
    "Regenerate: `{command}` (runtime of this run: {runtime:.0f} s; {mode}).\n"
    "\n"
    "Machine: {machine}; torch {torch}, {threads} threads (`{omp}`); peers: {peers}. "
    "Load average at start / end: {load_start} / {load_end}. The 2 cores "
    "are shared with other engineers running tests, so absolute times are noisy; every "
    "ratio below is taken within one process, the tools interleaved repeat by repeat, "
    "medians over repeats (the `repeats` column; a task slower than "
    "{long_s:g} s on its first run is run once)."
)
QUICK_MODE = "QUICK smoke variant: sizes too small to mean anything"
FULL_MODE = "full run"


# How every tool is called.
SETUP = (
    "Every tool sees the same `nn.Module` (eval mode), the same list of float32 batches "
    "and `nn.CrossEntropyLoss()`: PyHessian in its full-dataset mode "
    "(`hessian(model, criterion, dataloader=batches, cuda=False)`), curvlinops as "
    "`HessianLinearOperator(model, loss, params, batches, check_deterministic=False, "
    "num_data=N)`, curvature as `HessianOperator(model, loss, batches)` with its defaults "
    "(graph cache on under the 1 GiB bound). Each task builds its operator inside the "
    "timed region."
)

# Below the summary pivot.
SUMMARY_NOTE = (
    "`>=`: the peer was stopped at the time limit (a lower bound); `extrap.`: time "
    "scaled from part of the work (see Method notes). Accuracy, product counts and "
    "memory for every cell are in the next table."
)

# Below the ratio table: what the accuracy and memory columns mean.
ERROR_NOTE = (
    "`*_err` is the accuracy against ground truth (the metric per task is in "
    "`results.csv`, column `error_metric`): relative error of lambda_max; the worst "
    "relative error over the top 10; relative trace error; for the density the "
    "Wasserstein-1 distance to the exact spectrum divided by its width (dense cases) or "
    "the relative error of the trace implied by the density. For `hvp` rows it is the "
    "distance to curvature's product (all three compute the same exact HVP). "
    "`*_mem_mib` is the peak resident-set rise during the task (see below)."
)

# Below the table of all rows.
DENSITY_EDGE_NOTE = (
    "`density_lmax_rel_error`: the top edge of the density (largest Ritz value; for "
    "curvlinops the upper ARPACK boundary its grid is built on) against the reference "
    "lambda_max -- a check of the quadrature that does not depend on the probe count. "
    "On the large models the density rows' `rel_error` (trace implied by the density) is "
    "dominated by probe noise: one Rademacher probe's relative standard deviation there "
    "is `sqrt(Var[z'Hz]) / tr H` (see the trace budgets), and the scaled-down runs use "
    "few probes."
)

# Above the per-workload table of the scale rows.
SCALE_NOTE = (
    "Groups (`--rows`): `small` (dense-truth-sized MLP, also as a `DataLoader`, ResNet-20 "
    "width 4, ViT; full sizes: 3-5 repeats, 10 x 80 density, trace to 1%), `sweep` (MLP "
    "over N and n), `scale` (MLP 64-150-10 at 11k parameters on the 1347 digits; "
    "ResNet-20 width 10 at 106k on 32 synthetic CIFAR images; a `transformers` GPT-2, 4 "
    "layers, n_embd 128, at 0.86M on 32 random-token sequences of 32; ResNet-20 width 32 "
    "at 1.07M on 8 images) and `big` (ResNet-18, CIFAR variant, 11.2M, on 256 images in "
    "4 batches of 64, issue 13's size). "
    "Every scale and big model is also fed as a non-shuffling `DataLoader` (`-loader` "
    "rows; the 11k MLP also as a shuffling one, `-loader-shuffle`), as PyHessian users "
    "pass it; the loader rows time the gradient, the products, lambda_max and the "
    "density (`big`: the gradient and the products only). Sizes shrink with the model "
    "so that a group fits the 2-core machine (the load at the start and end of the run "
    "is in the header; ratios are taken within one process, and with one repeat they "
    "carry the machine's noise): the scale rows run the solvers once (the products 2-3 "
    "times), the density is 2 probes x 40 Lanczos "
    "steps (20 on the 1M rows, 8 on ResNet-18), per-layer spectra "
    "(`curvature.block_spectra`, one block per top-level layer, per transformer block "
    "for GPT-2) stop after 40 lockstep steps (10 on the 1M rows, 6 on ResNet-18, where "
    "blocks are reported unconverged). The trace is Hutch++ at 30 products against "
    "curvlinops at the same budget, and PyHessian's Hutchinson at the products it needs "
    "for the same standard error, run up to 12 and extrapolated. ResNet-18 (about 30 s "
    "per product on 256 examples) has no trace row (its 3 x 12-product runs alone would "
    "exceed the group's time), a task limit of 480 s, a lambda_max reference at residual "
    "tol 1e-4 and no untimed warm-up (the fresh product is the warm operator's first). "
    "PyHessian's density, where even "
    "one probe would exceed the budget, runs fewer Lanczos steps and its time and "
    "products are scaled to the full run (`extrapolated`; its error is that of the "
    "shorter run). curvlinops' density is not run on the scale rows: its ARPACK "
    "spectral boundaries alone cost more than the row's budget. Columns: `*_grads` = "
    "seconds / one gradient on the same data; speedups = peer time / curvature time "
    "(`>=`: peer stopped at the time limit; `extrap.`: extrapolated)."
)
SCALE_FIGURE_NOTE = (
    "Log-log cost against parameter count over the tensor-fed rows (small, scale and "
    "big groups; the models differ in kind, so the lines join different architectures "
    "and the slopes are descriptive, not a law). Hollow markers: extrapolated or "
    "stopped at the time limit (a lower bound). The lower-left panel's gradients per "
    "product are the machine-independent measure."
)

# Above the figures.
FIGURES_NOTE = (
    "Speedups per task (log scale; dotted: the 3x target). Bars from timed-out or "
    "extrapolated runs are marked in the ratio table (`>=`, `extrap.`)."
)

# Above the k-column product table.
MATMAT_NOTE = (
    "Block estimators (Hutch++, the density's probe block) multiply many vectors at "
    "once. For 8 or more columns curvature times, once per operator, the second "
    "backward batched over the columns (`is_grads_batched`, cached graphs) against "
    "vmapped forward-over-reverse, and keeps the faster only if it matches double "
    "backward; curvlinops vmaps forward-over-reverse (`jvp` of `jacrev`) over them. "
    "Medians of 3."
)

# Above the finite-difference check.
CORRECTNESS_NOTE = (
    "Each tool's HVP against `(g(w + e v) - g(w - e v)) / 2e` (first derivatives "
    "only, independent of autograd's second-order rules), overall and for the worst "
    "parameter tensor."
)

# Appended for a tool whose products disagree with the finite differences.
WRONG_HVP = (
    "**{tool}'s Hessian-vector products are wrong on this model**: "
    "{rel_error:.1e} overall, {worst:.0%} on `{block}`. "
    "The errors sit in the LayerNorm weights, consistent with torch 2.13's "
    "forward-over-reverse (`torch.func` `jvp` of `jacrev`) through affine "
    "LayerNorm, the same defect that makes `torch.func.hessian` wrong there "
    "(see `curvature/operators/dense.py`); double backward (curvature, PyHessian) agrees "
    "with the finite differences. Its ViT rows above are therefore computed on "
    "a slightly wrong operator (the `hvp` rows' distance to curvature's "
    "product shows it at full size)."
)

# The method notes, one bullet each.
METHOD_NOTES = [
    "* **Tolerances.** lambda_max and top-10 at relative tolerance 1e-3 for every tool: "
    "curvature's Lanczos stops on the residual `||Hv - lv|| <= 1e-3 |l|` (an eigenvalue "
    "error bound), started from the loss gradient (`v0`, as `curvature analyze` does; the "
    "gradient pass is inside the timed run and not counted as a product); PyHessian's "
    "power iteration stops when the Rayleigh quotient changes by less than 1e-3 relative "
    "between iterations (`maxIter=100` per eigenvalue, its "
    "default); ARPACK (`eigsh(..., which='LA', tol=1e-3)`) on curvlinops' operator. The "
    "accuracy columns say what each rule delivered.",
    "* **Trace to 1%.** Budgets are chosen so that the one-standard-error relative "
    "accuracy is 1% (where Hutch++ cannot reach 1% within the time budget, both are "
    "compared at the standard error it did reach): Hutch++ (curvature; curvlinops' `hutchpp_trace` at the same budget, "
    "rounded to a multiple of 3) takes the smallest budget of the ladder "
    "30, 60, 120, ... whose reported standard error is within 1% of the estimate; "
    "PyHessian's Hutchinson needs `Var[z'Hz] / (0.01 tr H)^2` products (variance exact "
    "from the dense Hessian, else from 48 samples). PyHessian is run for real up to "
    "300 products; above that its time is extrapolated linearly (`extrapolated` "
    "column) -- each of its products costs the same, so the extrapolation is the "
    "measured per-product time times the count. Its own stopping rule (`tol=1e-2` on "
    "the running mean) is the separate row `trace_own_rule`: it stops early with an "
    "error well above 1%.",
    "* **References on the large models.** No exact trace is affordable there (it "
    "takes n products); the reference is a 200-product Hutch++ estimate whose standard "
    "error (listed under Workloads) bounds what the trace and density-trace errors on "
    "those rows can resolve: differences below about twice it are noise. Eigenvalue "
    "references are ARPACK at tolerance 1e-6, so errors below about 1e-6 are at the "
    "reference's resolution.",
    "* **Budgets and extrapolation.** A tool whose 10 x 80 density (estimated from its "
    "own measured product time: 800 single products for the peers, 80 ten-column "
    "products for curvature, which advances its probes together) would exceed 40 s "
    "runs fewer probes -- each probe is an "
    "independent, identical loop -- and its time and product count are scaled to 10 "
    "probes (`extrapolated` column; for curvlinops only the probe part is scaled, the "
    "ARPACK boundary estimate is timed once). For curvature this is conservative: fewer "
    "probes per block batch less well. A run still going after 90 s is stopped; its "
    "time is then a lower bound (`status = timeout`, ratios marked `>=`).",
    "* **Density.** 10 Rademacher probes x 80 Lanczos steps for each tool (PyHessian "
    "`density(iter=80, n_v=10)`; curvlinops `lanczos_approximate_spectrum(ncv=80, "
    "num_repeats=10)`, which also spends products on ARPACK estimates of the spectral "
    "boundaries; curvature `spectral_density(num_steps=80, num_probes=10)`, which "
    "advances the probes together through one batched product per step).",
    "* **PyHessian on torch 2.13.** `hessian.density` calls `torch.eig`, removed in "
    "torch 2.0; the benchmark supplies a `torch.eig` built on `torch.linalg.eigh` for "
    "the duration of that call only (the tridiagonal matrix is symmetric, so the pairs "
    "are the same). Nothing in `curvature` depends on this.",
    "* **Peak memory.** Resident-set high-water mark: before each run garbage is "
    "collected, `malloc_trim(0)` hands freed heap pages back, and writing `5` to "
    "`/proc/self/clear_refs` resets `VmHWM` to the current `VmRSS`; the column is "
    "`VmHWM - VmRSS_before` (MiB), the maximum over repeats. `tracemalloc` does not see "
    "torch's CPU allocations, so it is not used. Memory that the allocator keeps without "
    "returning to the kernel can make a later run look smaller; the tools are "
    "interleaved, so none is favoured systematically."
]


# ----------------------------------------------------------------- "What missed, and why"
# One bullet per missed target: MISSED_HEAD, then the explanation of its kind.
ALL_MET = "Every target was met in this run."
MISSED_HEAD = "* **{workload}: {target}** -- measured {measured}."

MISSED_HVP = (
    " A fresh product costs {fresh:.2f} gradients, a product on an "
    "operator with cached graphs {warm:.2f}, PyHessian's {pyhessian:.2f}. The graph "
    "cache removes the forward and first backward (about one gradient); what "
    "remains is the backward of the backward, which for a layer `y = W x` "
    "differentiates both `W^T gy` and `x gy^T` -- four matrix/convolution "
    "products where the gradient has two, plus the tangent of every "
    "nonlinearity -- so an exact product stays near 2 gradients or more on "
    "compute-bound layers."
)
MISSED_HVP_PROFILE = " Top self-CPU operators of a fresh product: {top}."

PEER_FASTER = "{peer} on `{task}` ({peer_s:.3g} s vs {curvature_s:.3g} s){why}"
PEER_FASTER_TRACE = " -- same Hutch++ budget, cheaper block products."
PEER_FASTER_HVP = (
    " -- a one-off product; within the noise of the machine "
    "(see `time_min_s`/`time_max_s`), and it includes building the "
    "operator (moving the batches, checking the graph for "
    "once-differentiable nodes, measuring saved tensors for the "
    "cache decision), which PyHessian does not do"
)

MISSED_TRACE = (
    " Hutch++ computes the trace of a sketched top subspace exactly and "
    "runs Hutchinson on the rest; it needs far fewer products than Hutchinson "
    "only when a few eigenvalues carry most of `||H||_F` (Meyer et al., Thm "
    "1.1). Here Hutchinson needs {hutchinson:.0f} "
    "products and Hutch++ {hutchpp:.0f} at the same standard error: the Hessian's "
    "Frobenius norm is spread over many eigenvalues (and where they have both "
    "signs, they cancel in the trace but not in the variance), so deflating m/3 "
    "directions leaves most of the variance. No "
    "change of implementation moves this ratio; it is a property of the "
    "spectrum."
)
MISSED_TRACE_NOTE = " ({note})"

SPEEDUP_SPLIT = (
    " Speedup = (PyHessian products / ours) x (its time per product / "
    "ours) = {hvp_ratio:.2f} x {per_hvp_ratio:.2f}. "
)
MISSED_LAMBDA_MAX = (
    "Lanczos needs {curvature_hvps:.0f} products; power iteration stops "
    "after {peer_hvps:.0f} on its own rule (change of the Rayleigh "
    "quotient < 1e-3), which left it at error {peer_err:.1e} against "
    "{curvature_err:.1e} for Lanczos -- the top eigenvalue is well "
    "separated, so few products suffice for either and the ratio rests "
    "on the cost per product (cached graphs vs full recomputation)."
)
MISSED_DENSITY = "Both spend 800 products; the ratio is the cost per product."
DENSITY_PROBE_NOISE = (
    " (The density errors on this model are probe noise of the "
    "implied trace; `density_lmax_rel_error` in the rows table "
    "compares the quadratures' top edges instead.)"
)

# What batching columns gives on this model (k-column product costs).
BLOCK_COST = (
    " A k-column product costs curvature {c1:.2f} gradients per column at k = 1 "
    "and {c32:.2f} at k = 32 (the engine's faster checked path), "
    "curvlinops {l32:.2f} at k = 32 (vmap over forward-over-reverse): on this "
    "model batching the second backward over columns {saves}"
    "so block estimators (Hutch++, the density's probe block) get {gets}"
)
BLOCK_SAVES_LITTLE = "saves little, "
BLOCK_HELPS = "helps, "
BLOCK_GETS_LESS = "less from it than a vmapped forward-over-reverse product would give."
BLOCK_GETS_MOST = "most of what batching can give."
