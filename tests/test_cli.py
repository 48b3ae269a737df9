"""End-to-end tests of the ``curvature`` command (subprocesses, as a user runs it).

One small SAM run on a digits subset is trained once per module and shared. Every
number the CLI reports is checked against an independent ground truth: eigenvalues
and trace against the eigendecomposition of the dense float64 Hessian
(``cv.dense_hessian`` + ``torch.linalg.eigvalsh``), losses against a direct forward
pass. Every kind of bad input must exit with status 2, one line on stderr naming the
problem, no traceback, and nothing written under ``--out``.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import curvature as cv
from curvature.checkpoint import load_checkpoint
from curvature.data import load_dataset
from curvature.pipeline import make_loss

DATA = "digits:n_train=160,n_test=80"
HIDDEN = [8]
N_PARAMS = 64 * 8 + 8 + 8 * 10 + 10
SMALL = ["--top-k", "3", "--trace-matvecs", "24", "--density-probes", "2",
         "--density-steps", "16", "--landscape-points", "5", "--landscape-grid", "3"]
PNG = b"\x89PNG\r\n\x1a\n"


def run(*args: str, env_extra: dict[str, str] | None = None, cwd: Path | None = None):
    env = {**os.environ, "OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "curvature.cli", *args],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=300,
    )


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


def dense_spectrum(model: torch.nn.Module, loss: str, x: torch.Tensor, y: torch.Tensor):
    H = cv.dense_hessian(model, make_loss(loss), (x, y))
    return torch.linalg.eigvalsh(H)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train") / "run"
    proc = run("train", "--model", "mlp", "--model-kwargs", json.dumps({"hidden": HIDDEN}),
               "--data", DATA, "--optimizer", "sam", "--rho", "0.05", "--lr", "0.2",
               "--momentum", "0.9", "--steps", "30", "--batch-size", "32",
               "--save-at", "10,20", "--seed", "3", "--out", str(out), "-q")
    assert_ok(proc)
    return out


@pytest.fixture(scope="module")
def analysed(trained, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("analyze") / "final"
    assert_ok(run("analyze", str(trained / "final.pt"), "--out", str(out), "-q", *SMALL))
    return out


# ----------------------------------------------------------------------------- train


def test_train_writes_checkpoints_with_everything_needed(trained):
    files = sorted(p.name for p in trained.iterdir())
    assert files == ["evaluations.csv", "final.pt", "history.csv", "step_000010.pt",
                     "step_000020.pt", "train.json"]
    history = pd.read_csv(trained / "history.csv")
    assert history["step"].tolist() == list(range(1, 31))
    assert "lambda_max" in history  # SAM's own estimate is logged every step
    ckpt = load_checkpoint(trained / "final.pt")
    meta = ckpt.metadata
    assert ckpt.factory == "curvature.models:mlp"
    assert ckpt.factory_kwargs == {"in_features": 64, "num_classes": 10, "hidden": HIDDEN}
    assert ckpt.data_spec == load_dataset(DATA).spec
    assert meta["optimizer"] == "sam" and meta["step"] == 30 and meta["seed"] == 3
    assert meta["hyperparameters"]["rho"] == 0.05 and meta["hyperparameters"]["lr"] == 0.2
    assert meta["hyperparameters"]["momentum"] == 0.9
    # the recorded metrics are those of the saved weights (independent forward pass)
    ds = load_dataset(DATA)
    with torch.no_grad():
        out = ckpt.model(ds.x_test)
        test_loss = float(torch.nn.functional.cross_entropy(out, ds.y_test))
        test_acc = float((out.argmax(1) == ds.y_test).double().mean())
    assert meta["test_loss"] == pytest.approx(test_loss, rel=1e-5)
    assert meta["test_accuracy"] == pytest.approx(test_acc)
    assert meta["train_accuracy"] > 0.5  # it learned something in 30 steps
    early = load_checkpoint(trained / "step_000010.pt")
    assert early.metadata["step"] == 10
    assert not torch.equal(early.state_dict["1.weight"], ckpt.state_dict["1.weight"])


# --------------------------------------------------------------------------- analyze


def test_analyze_matches_dense_hessian(trained, analysed):
    files = {p.name for p in analysed.iterdir()}
    for name in ("summary.json", "report.md", "eigenvalues.csv", "density.csv",
                 "slq_nodes.csv", "landscape_1d.csv", "landscape_2d.csv", "spectrum.png",
                 "eigenvalues.png", "landscape_1d.png", "landscape_2d_eigen.png",
                 "landscape_2d_random.png"):
        assert name in files, name
    for png in analysed.glob("*.png"):
        assert png.read_bytes()[:8] == PNG
    s = json.loads((analysed / "summary.json").read_text())
    assert s["num_params"] == N_PARAMS
    ckpt = load_checkpoint(trained / "final.pt")
    ds = load_dataset(DATA)
    for split, (x, y) in (("train", (ds.x_train, ds.y_train)), ("test", (ds.x_test, ds.y_test))):
        ev = dense_spectrum(ckpt.model, "ce", x, y)
        sp = s["splits"][split]
        assert sp["lambda_max"] == pytest.approx(float(ev[-1]), rel=1e-6)
        assert sp["lambda_min"] == pytest.approx(float(ev[0]), rel=1e-5, abs=1e-9)
        assert sp["eigenvalues_largest"] == pytest.approx(ev.flip(0)[:3].tolist(), rel=1e-5)
        assert sp["converged_largest"] and sp["converged_smallest"]
        # Hutch++ with 24 products: within 4 standard errors of the exact trace
        assert abs(sp["trace"] - float(ev.sum())) <= 4 * sp["trace_stderr"] + 1e-9
        with torch.no_grad():
            m64 = copy.deepcopy(ckpt.model).double()
            loss = float(torch.nn.functional.cross_entropy(m64(x.double()), y))
        assert sp["loss"] == pytest.approx(loss, rel=1e-9)
    for key in ("lambda_max", "lambda_min", "trace", "trace_stderr", "loss", "accuracy",
                "num_matvecs", "timings_s", "converged"):
        assert key in s
    assert s["lambda_max"] == s["splits"]["train"]["lambda_max"]
    # the 1-D landscape passes through the analysed loss at a = 0
    lines = pd.read_csv(analysed / "landscape_1d.csv")
    zero = lines[(lines["alpha"] == 0) & (lines["split"] == "train")]
    assert set(zero["direction"]) == {"v_max", "v_min", "random"}
    assert zero["loss"].to_numpy() == pytest.approx(s["loss"], rel=1e-9)
    report = (analysed / "report.md").read_text()
    assert "![spectrum.png](spectrum.png)" in report and "λ_max" in report


def test_analyze_bare_state_dict_of_an_outside_model(tmp_path):
    """A model defined outside the project, saved as a bare state dict."""
    (tmp_path / "mymod.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "def make(width=5):\n"
        "    return nn.Sequential(nn.Linear(4, width), nn.Tanh(), nn.Linear(width, 3))\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        import mymod
    finally:
        sys.path.remove(str(tmp_path))
    torch.manual_seed(0)
    model = mymod.make()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    data = "synthetic-classification:d=4,classes=3,n_train=64,n_test=16"
    out = tmp_path / "out"
    proc = run("analyze", str(tmp_path / "weights.pt"), "--model", "mymod:make", "--data", data,
               "--metrics", "eigenvalues,trace", "--top-k", "2", "--tol", "1e-8",
               "--trace-matvecs", "130", "--out", str(out), "-q",
               env_extra={"PYTHONPATH": str(tmp_path)}, cwd=tmp_path)
    assert_ok(proc)
    s = json.loads((out / "summary.json").read_text())
    ds = load_dataset(data)
    ev = dense_spectrum(model, "ce", ds.x_train, ds.y_train)
    assert s["num_params"] == 4 * 5 + 5 + 5 * 3 + 3
    assert s["lambda_max"] == pytest.approx(float(ev[-1]), rel=1e-6)
    assert s["lambda_min"] == pytest.approx(float(ev[0]), rel=1e-6, abs=1e-10)
    assert s["factory"] == "mymod:make" and s["bare_state_dict"] is True
    # 130 products: the sketch has min(130 // 3, n) = n = 43 columns, so Hutch++ is exact
    assert s["trace"] == pytest.approx(float(ev.sum()), rel=1e-6)
    assert not (out / "spectrum.png").exists()  # density not requested


# --------------------------------------------------------------------------- compare


def test_compare_tabulates_and_overlays(trained, analysed, tmp_path):
    early = tmp_path / "early"
    assert_ok(run("analyze", str(trained / "step_000010.pt"), "--out", str(early), "-q",
                  "--no-test", "--metrics", "eigenvalues,density", *SMALL))
    out = tmp_path / "cmp"
    proc = run("compare", str(early), str(analysed), "--labels", "step 10,step 30",
               "--out", str(out), "-q")
    assert_ok(proc)
    assert proc.stdout.strip() == f"report: {out / 'report.md'}"
    table = pd.read_csv(out / "metrics.csv")
    assert table["run"].tolist() == ["step 10", "step 30"]
    for row, folder in zip(table.itertuples(), (early, analysed)):
        s = json.loads((folder / "summary.json").read_text())
        assert row.lambda_max == pytest.approx(s["lambda_max"], rel=1e-12)
    assert pd.isna(table["trace"][0]) and table["trace"][1] > 0
    for name in ("spectra.png", "eigenvalues.png", "landscapes.png", "metrics.png"):
        assert (out / name).read_bytes()[:8] == PNG, name
    report = (out / "report.md").read_text()
    assert "step 10" in report and "step 30" in report and "spectra.png" in report


# ------------------------------------------------------------------------------ demo


def test_demo_quick(tmp_path):
    proc = run("demo", "--quick", "--out", "demo", "-q", cwd=tmp_path)
    assert_ok(proc)
    out = tmp_path / "demo"
    assert proc.stdout.strip() == f"report: {Path('demo') / 'report.md'}"
    for rel in ("report.md", "training.png", "sgd/final.pt", "sam/final.pt",
                "sgd/analysis/summary.json", "sam/analysis/spectrum.png",
                "comparison/metrics.csv", "comparison/spectra.png"):
        assert (out / rel).is_file(), rel
    table = pd.read_csv(out / "comparison" / "metrics.csv")
    for row, name in zip(table.itertuples(), ("sgd", "sam")):
        s = json.loads((out / name / "analysis" / "summary.json").read_text())
        assert row.lambda_max == pytest.approx(s["lambda_max"], rel=1e-12)
        assert s["metadata"]["optimizer"] == ("momentum" if name == "sgd" else "sam")
    report = (out / "report.md").read_text()
    assert "comparison/spectra.png" in report and "SAM" in report
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


# ------------------------------------------------------------------------- bad input


class _Hostile:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _bad_cases(trained: Path, root: Path) -> dict[str, list[str]]:
    """Build every bad input under ``root``; return ``name -> command line``."""
    (root / "notes.txt").write_text("hello, I am not a checkpoint\n")
    blob = (trained / "final.pt").read_bytes()
    (root / "cut.pt").write_bytes(blob[: len(blob) // 2])
    with open(root / "evil.pt", "wb") as f:
        pickle.dump({"state_dict": _Hostile(str(root / "pwned"))}, f)
    sd = dict(load_checkpoint(trained / "final.pt").state_dict)
    torch.save(sd, root / "sd.pt")
    del sd["3.bias"]
    sd["1.weight"] = torch.zeros(9, 64)
    sd["head.weight"] = torch.zeros(2)
    torch.save(sd, root / "mismatch.pt")
    final, kw = str(trained / "final.pt"), json.dumps({"hidden": HIDDEN})
    return {
        "missing": ["analyze", str(root / "nope.pt")],
        "not_checkpoint": ["analyze", str(root / "notes.txt")],
        "truncated": ["analyze", str(root / "cut.pt")],
        "hostile": ["analyze", str(root / "evil.pt"), "--model", "mlp"],
        "mismatch": ["analyze", str(root / "mismatch.pt"), "--model", "mlp",
                     "--model-kwargs", kw, "--data", DATA],
        "unknown_factory": ["analyze", str(root / "sd.pt"), "--model", "nosuchpkg.mod:make",
                            "--data", DATA],
        "bare_without_model": ["analyze", str(root / "sd.pt"), "--data", DATA],
        "data_shape": ["analyze", final, "--data",
                       "synthetic-classification:d=5,n_train=32,n_test=8"],
        "unknown_data": ["analyze", final, "--data", "nosuchdata"],
        "unknown_metric": ["analyze", final, "--metrics", "eigenvalues,magic"],
        "unknown_optimizer": ["train", "--optimizer", "nosuchopt", "--steps", "2",
                              "--data", DATA],
        "not_analysis_folder": ["compare", str(root)],
    }


@pytest.fixture(scope="module")
def bad(trained, tmp_path_factory) -> dict[str, tuple[str, Path]]:
    """Run every bad input (4 processes at a time); ``name -> (stderr line, case dir)``.

    Each case must exit 2 with exactly one line on stderr, no traceback, and leave
    neither its ``--out`` folder nor a temporary folder behind."""
    from concurrent.futures import ThreadPoolExecutor

    root = tmp_path_factory.mktemp("bad")
    cases = _bad_cases(trained, root)

    def one(item):
        name, argv = item
        case = root / name
        case.mkdir()
        return name, case, run(*argv, "--out", str(case / "out"), "-q")

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(one, cases.items()))
    out = {}
    for name, case, proc in results:
        assert proc.returncode == 2, (name, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, (name, proc.stderr)
        assert "Traceback" not in proc.stderr, name
        assert list(case.iterdir()) == [], (name, list(case.iterdir()))  # nothing written
        out[name] = (lines[0], root)
    return out


def test_missing_and_non_checkpoint_files(bad):
    msg = bad["missing"][0]
    assert "nope.pt" in msg and "does not exist" in msg
    assert "not a checkpoint" in bad["not_checkpoint"][0]


def test_truncated_checkpoint(bad):
    msg = bad["truncated"][0]
    assert "cut.pt" in msg and ("truncated" in msg or "corrupt" in msg)


def test_hostile_pickle_is_refused_and_never_run(bad):
    msg, root = bad["hostile"]
    assert "refused" in msg
    assert not (root / "pwned").exists()


def test_state_dict_that_does_not_match_the_model(bad):
    msg = bad["mismatch"][0]
    assert "missing keys: 3.bias" in msg
    assert "unexpected keys: head.weight" in msg
    assert "1.weight (checkpoint [9, 64], model [8, 64])" in msg


def test_unknown_factory_and_bare_state_dict_without_model(bad):
    msg = bad["unknown_factory"][0]
    assert "nosuchpkg.mod" in msg and "unknown model factory" in msg
    msg = bad["bare_without_model"][0]
    assert "bare state dict" in msg and "--model" in msg


def test_data_that_does_not_fit_the_model(bad):
    msg = bad["data_shape"][0]
    assert "data of shape [32, 5]" in msg and "does not fit model" in msg
    assert "curvature.models:mlp" in msg


def test_labels_beyond_the_model_outputs_are_caught_before_any_work():
    """Two trial examples may have small labels; every label is checked."""
    from curvature.pipeline import InputError, check_data_fits

    model = torch.nn.Linear(3, 4)
    x, y = torch.randn(10, 3), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 7])
    mode = model.training
    with pytest.raises(InputError, match="class labels up to 7 but model lin has 4 outputs"):
        check_data_fits(model, torch.nn.CrossEntropyLoss(), x, y, "lin")
    assert model.training == mode
    check_data_fits(model, torch.nn.CrossEntropyLoss(), x, y.clamp(max=3), "lin")  # fits


def test_bad_options(bad):
    assert "unknown dataset 'nosuchdata'" in bad["unknown_data"][0]
    assert "magic" in bad["unknown_metric"][0]
    assert "unknown optimizer 'nosuchopt'" in bad["unknown_optimizer"][0]
    assert "not an analysis folder" in bad["not_analysis_folder"][0]


# ------------------------------------------------------------ --model factory modules

CONSOLE = ("import os, sys\n"
           "sys.path[:] = [p for p in sys.path if p not in ('', os.getcwd())]\n"
           "from curvature.cli import main\n"
           "sys.exit(main())\n")
"""``curvature`` as its console script starts: the current directory is not on ``sys.path``
(unlike ``python -m``), so only ``--model``'s own search can find a module there."""


def run_console(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}
    repo = str(Path(__file__).resolve().parents[1])  # this checkout's curvature
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-c", CONSOLE, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_model_factory_module_in_the_current_directory(tmp_path):
    (tmp_path / "tinynet.py").write_text(
        "from torch import nn\n\n"
        "def make(width: int = 3) -> nn.Module:\n"
        "    return nn.Sequential(nn.Linear(4, width), nn.Tanh(), nn.Linear(width, 3))\n")
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 3))
    torch.save(model.state_dict(), tmp_path / "w.pt")
    data = "synthetic-classification:d=4,classes=3,n_train=40,n_test=8"
    proc = run_console("analyze", "w.pt", "--model", "tinynet:make", "--data", data,
                       "--metrics", "eigenvalues", "--top-k", "1", "--tol", "1e-9",
                       "--no-test", "--out", "out", "-q", cwd=tmp_path)
    assert_ok(proc)
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    ds = load_dataset(data)
    ev = dense_spectrum(model, "ce", ds.x_train, ds.y_train)
    assert s["factory"] == "tinynet:make" and s["num_params"] == 4 * 3 + 3 + 3 * 3 + 3
    assert s["lambda_max"] == pytest.approx(float(ev[-1]), rel=1e-6)


@pytest.fixture(scope="module")
def factory_errors(tmp_path_factory) -> dict[str, tuple[str, Path]]:
    """``--model`` modules that fail to import, each run as the console script in a
    folder holding the module: ``name -> (the one stderr line, folder)``."""
    from concurrent.futures import ThreadPoolExecutor

    root = tmp_path_factory.mktemp("factory_errors")
    torch.save(torch.nn.Linear(64, 10).state_dict(), root / "w.pt")
    (root / "brokenext.py").write_text(  # what a torchvision built for another torch does
        "raise RuntimeError('operator torchvision::nms does not exist')\n")
    (root / "typo.py").write_text("def make(:\n    pass\n")
    cases = {
        "runtime": ["analyze", "w.pt", "--model", "brokenext:make", "--data", DATA],
        "syntax": ["train", "--model", "typo:make", "--data", DATA, "--steps", "1"],
        "missing": ["analyze", "w.pt", "--model", "notthere:make", "--data", DATA],
    }

    def one(item):
        name, argv = item
        return name, run_console(*argv, "--out", f"out-{name}", "-q", cwd=root)

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = dict(pool.map(one, cases.items()))
    out = {}
    for name, proc in results.items():
        assert proc.returncode == 2, (name, proc.returncode, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr, (name, proc.stderr)
        assert not (root / f"out-{name}").exists(), name
        out[name] = (lines[0], root)
    return out


def test_factory_module_raising_at_import_exits_2_with_one_line(factory_errors):
    msg = factory_errors["runtime"][0]
    assert "'brokenext'" in msg and "RuntimeError: operator torchvision::nms does not exist" in msg
    msg = factory_errors["syntax"][0]
    assert "'typo'" in msg and "SyntaxError" in msg


def test_missing_factory_module_says_how_to_fix_it(factory_errors):
    msg, root = factory_errors["missing"]
    assert "no module named 'notthere'" in msg and "unknown model factory" in msg
    assert f"current directory ({root})" in msg
    assert "notthere.py" in msg and "PYTHONPATH" in msg and "pip install" in msg


def test_load_checkpoint_reports_a_factory_module_that_raises_at_import(tmp_path, monkeypatch):
    """The Python API too: a CheckpointError naming the module and the cause."""
    from curvature.checkpoint import CheckpointError

    (tmp_path / "raises_on_import.py").write_text("raise OSError('libfoo.so: cannot open')\n")
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "w.pt")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(CheckpointError, match=r"importing module 'raises_on_import' failed: "
                                              r"OSError: libfoo\.so: cannot open"):
        load_checkpoint(tmp_path / "w.pt", model_factory="raises_on_import:make")


# ----------------------------------------------------------------------- distributed


@pytest.mark.slow  # two extra interpreters (~16 s): run with -m distributed or -m slow
@pytest.mark.distributed
def test_analyze_under_torchrun_gives_the_single_process_report(trained, analysed, tmp_path):
    """Two gloo ranks, each with every other example: same numbers as one process (under
    a generous --budget: the ranks share one plan, made from the slowest rank's times)."""
    out = tmp_path / "dist"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "-m", "curvature.cli", "analyze", str(trained / "final.pt"), "--out", str(out),
         "-q", "--budget", "1h", *SMALL],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert_ok(proc)
    one = json.loads((analysed / "summary.json").read_text())
    two = json.loads((out / "summary.json").read_text())
    for split in ("train", "test"):
        a, b = one["splits"][split], two["splits"][split]
        assert b["num_examples"] == a["num_examples"]
        for key in ("loss", "accuracy", "lambda_max", "lambda_min", "trace"):
            assert b[key] == pytest.approx(a[key], rel=1e-9, abs=1e-12), (split, key)
    for key in ("sharpness_worst", "sharpness_average", "sharpness_average_stderr"):
        assert two[key] == pytest.approx(one[key], rel=1e-9, abs=1e-12), key
    la, lb = (pd.read_csv(d / "landscape_2d.csv") for d in (analysed, out))
    assert lb["loss"].to_numpy() == pytest.approx(la["loss"].to_numpy(), rel=1e-9)
