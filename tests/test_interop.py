"""Models nobody here wrote: HuggingFace GPT-2 and ViT, through the Python API and the CLI.

Small configurations with random initialisation (nothing is downloaded). Every number
is checked against a float64 Hessian built here by a plain double-backward loop over the
concatenated data (independent of the engine's batching, caching and vectorised paths)
and diagonalised with ``numpy.linalg.eigh``; the project's own ``cv.dense_hessian`` is
checked against it too. The attention runs with ``attn_implementation="eager"``: the
default fused kernel has no double backward on the CPU.

The CLI tests write a factory module into a temporary folder, make it the current
directory and run ``curvature analyze`` (its entry point ``curvature.cli.main``, with the
current directory off ``sys.path`` as for the console script) on a bare state dict
(``torch.save`` or safetensors) and an ``.npz`` of inputs and labels.

The first test guards the test set-up itself: ``import transformers`` works, and
torchvision is either absent or importable (a torchvision built for another torch breaks
both; see requirements-peers.txt).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import curvature as cv


def test_transformers_imports_and_torchvision_is_absent_or_importable():
    """torchvision in a fresh interpreter, so a broken extension cannot take this session
    down; then transformers' model classes here (the later tests share the import)."""
    proc = subprocess.run([sys.executable, "-c", (
        "import importlib.util, sys\n"
        "if importlib.util.find_spec('torchvision') is None:\n"
        "    print('absent'); sys.exit(0)\n"
        "import torch, torchvision\n"
        "b = torch.tensor([[0., 0., 1., 1.], [0., 0., 1., 1.]])\n"
        "print(torchvision.ops.nms(b, torch.tensor([1., .5]), .5).tolist())\n")],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (
        "torchvision is installed but cannot be used beside this torch (it also breaks "
        "`import transformers`): uninstall it\n" + proc.stderr[-3000:])
    assert proc.stdout.strip() in ("absent", "[0]"), proc.stdout
    import transformers
    from transformers import GPT2LMHeadModel, ViTForImageClassification

    assert issubclass(GPT2LMHeadModel, nn.Module) and issubclass(ViTForImageClassification, nn.Module)
    assert int(transformers.__version__.split(".")[0]) >= 4


def needs_transformers() -> None:
    pytest.importorskip("transformers", reason="not installed: the [test] extra installs it "
                        "(the test above fails without it)")


# ------------------------------------------------------------------------ ground truth


def independent_hessian(model: nn.Module, loss_fn, inputs: tuple, targets: torch.Tensor,
                        names: list[str] | None = None) -> np.ndarray:
    """Float64 Hessian of ``loss_fn(model(*inputs), targets)`` (one batch, eval mode)
    with respect to the named parameters (default all), row by row by double backward."""
    m = copy.deepcopy(model).double().eval()
    named = dict(m.named_parameters())
    ps = [named[k] for k in (names or list(named))]
    inputs = tuple(t.double() if t.is_floating_point() else t for t in inputs)
    loss = loss_fn(m(*inputs), targets)
    g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, ps, create_graph=True)])
    rows = []
    for i in range(g.numel()):
        r = torch.autograd.grad(g[i], ps, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(p) if d is None else d).reshape(-1)
                               for d, p in zip(r, ps)]))
    H = torch.stack(rows).numpy()
    assert np.allclose(H, H.T, rtol=0, atol=1e-10 * np.abs(H).max())
    return (H + H.T) / 2


def snapshot(model: nn.Module) -> tuple[dict, list[bool]]:
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [m.training for m in model.modules()])


def assert_untouched(model: nn.Module, before: tuple[dict, list[bool]]) -> None:
    state, modes = before
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert [m.training for m in model.modules()] == modes


def check_operator(model, loss_fn, data, inputs, targets, params=None, *, trace_tol=4.0):
    """HVPs, both ends of the spectrum and the trace of ``HessianOperator`` against an
    independent float64 Hessian; returns its eigenvalues."""
    names = None
    if params is not None:
        ids = {id(p): k for k, p in model.named_parameters()}
        names = [ids[id(p)] for p in params]
    before = snapshot(model)
    H = independent_hessian(model, loss_fn, inputs, targets, names)
    ev = np.linalg.eigh(H)[0]
    scale = np.abs(ev).max()
    n = H.shape[0]
    own = cv.dense_hessian(model, loss_fn, data, params=params).numpy()
    assert np.abs(own - H).max() <= 1e-9 * scale

    op = cv.HessianOperator(model, loss_fn, data, params=params, dtype=torch.float64)
    assert op.shape == (n, n)
    V = torch.randn(n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert np.abs(op.matmat(V).numpy() - H @ V.numpy()).max() <= 1e-9 * scale
    assert np.abs((op @ V[:, 0]).numpy() - H @ V[:, 0].numpy()).max() <= 1e-9 * scale
    op32 = cv.HessianOperator(model, loss_fn, data, params=params)  # the model's float32
    hv32 = (op32 @ V[:, 0].float()).double().numpy()
    assert np.linalg.norm(hv32 - H @ V[:, 0].numpy()) <= 1e-3 * np.linalg.norm(H @ V[:, 0].numpy())

    top = cv.eigenvalues(op, k=2, which="largest", tol=1e-9, seed=0)
    assert top.converged
    assert np.sort(top.values.numpy()) == pytest.approx(ev[-2:], rel=1e-7, abs=1e-9 * scale)
    bottom = cv.eigenvalues(op, k=1, which="smallest", tol=1e-9, seed=0)
    assert bottom.converged
    assert float(bottom.values[0]) == pytest.approx(ev[0], rel=1e-7, abs=1e-9 * scale)

    tr = cv.trace(op, method="hutch++", num_matvecs=60, seed=0)
    assert 0 < tr.stderr < 0.2 * np.abs(ev).sum()
    assert abs(tr.estimate - ev.sum()) <= trace_tol * tr.stderr
    assert_untouched(model, before)
    return ev


# ----------------------------------------------------------------------- Python API


class CausalLM(nn.Module):
    """A HuggingFace causal LM as ``(input_ids, attention_mask) -> logits [N, T, V]``."""

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        self.hf = hf

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=input_ids, attention_mask=attention_mask).logits


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over every position: ``[N, T, V]``, ``[N, T]``."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


def test_gpt2_python_api_matches_float64_truth():
    needs_transformers()
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50,
                                    n_positions=16, bos_token_id=0, eos_token_id=0,
                                    attn_implementation="eager"))
    model = CausalLM(hf)  # left in train mode (dropout 0.1): the operator uses eval mode
    ids = torch.randint(0, 50, (5, 11), generator=torch.Generator().manual_seed(2))
    x, y, mask = ids[:, :-1], ids[:, 1:], torch.ones(5, 10, dtype=torch.long)
    data = [((x[:3], mask[:3]), y[:3]), ((x[3:], mask[3:]), y[3:])]  # uneven batches
    t = hf.transformer
    params = [t.h[1].ln_1.weight, t.h[1].attn.c_attn.bias, t.h[0].mlp.c_proj.bias,
              t.ln_f.weight, t.ln_f.bias]  # n = 224: one block each of LN, attention, MLP
    ev = check_operator(model, lm_loss, data, (x, mask), y, params)
    assert len(ev) == 224 and ev[0] < 0 < ev[-1]  # a random init is a saddle


class ImageClassifier(nn.Module):
    """A HuggingFace image classifier as ``pixel_values -> logits [N, classes]``."""

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        self.hf = hf

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.hf(pixel_values=pixel_values).logits


def test_vit_python_api_matches_float64_truth_on_every_parameter():
    needs_transformers()
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    hf = ViTForImageClassification(ViTConfig(
        image_size=8, patch_size=4, num_channels=1, hidden_size=6, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=12, num_labels=3,
        attn_implementation="eager"))
    model = ImageClassifier(hf)
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(7, 1, 8, 8, generator=g), torch.randint(0, 3, (7,), generator=g)
    data = [(x[:4], y[:4]), (x[4:], y[4:])]
    ev = check_operator(model, F.cross_entropy, data, (x,), y)
    assert len(ev) == sum(p.numel() for p in model.parameters()) == 525


# ------------------------------------------------------------------------------ CLI

FACTORIES = '''\
"""Model factories for `curvature analyze --model hf_factories:NAME` (tiny, random init)."""
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, ViTConfig, ViTForImageClassification


class NextToken(nn.Module):
    """GPT-2 predicting the token after each sequence: ids [N, T] (any dtype) -> [N, V]."""

    def __init__(self, hf):
        super().__init__()
        self.hf = hf

    def forward(self, x):
        return self.hf(input_ids=x.long()).logits[:, -1]


class ViTLogits(ViTForImageClassification):
    """ViT returning its logits; a subclass keeps the state-dict keys of the HF model."""

    def forward(self, x):
        return super().forward(pixel_values=x).logits


def gpt2(vocab: int = 8) -> nn.Module:
    return NextToken(GPT2LMHeadModel(GPT2Config(
        n_layer=1, n_embd=4, n_head=2, n_inner=8, vocab_size=vocab, n_positions=6,
        bos_token_id=0, eos_token_id=0, attn_implementation="eager")))


def vit(classes: int = 3, attn: str = "eager") -> nn.Module:
    return ViTLogits(ViTConfig(
        image_size=4, patch_size=2, num_channels=1, hidden_size=4, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=8, num_labels=classes,
        attn_implementation=attn))
'''

def load_factories(folder: Path):
    spec = importlib.util.spec_from_file_location("hf_factories", folder / "hf_factories.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def factory_dir(tmp_path_factory) -> Path:
    needs_transformers()
    d = tmp_path_factory.mktemp("hf")
    (d / "hf_factories.py").write_text(FACTORIES)
    return d


def analyze_args(folder: Path, name: str, weights: Path, x: np.ndarray, y: np.ndarray) -> list[str]:
    """Arguments of ``curvature analyze`` for ``--model hf_factories:NAME`` and an npz of
    ``x, y`` (the training split; a tiny test split that is not analysed)."""
    np.savez(folder / f"{name}.npz", x=x, y=y, x_test=x[:2], y_test=y[:2])
    return ["analyze", str(weights), "--model", f"hf_factories:{name}", "--data", f"{name}.npz",
            "--metrics", "eigenvalues", "--top-k", "1", "--tol", "1e-9", "--no-test",
            "--out", str(folder / f"out-{name}"), "-q"]


def compare_summary(folder: Path, name: str, x: np.ndarray, y: np.ndarray, model: nn.Module):
    """The reported lambda_max and lambda_min against the float64 truth of ``model``
    (cross-entropy on ``x, y``)."""
    s = json.loads((folder / f"out-{name}" / "summary.json").read_text())
    H = independent_hessian(model, F.cross_entropy, (torch.as_tensor(x, dtype=torch.float32),),
                            torch.as_tensor(y))
    ev = np.linalg.eigh(H)[0]
    assert s["num_params"] == H.shape[0] == sum(p.numel() for p in model.parameters())
    assert s["factory"] == f"hf_factories:{name}" and s["bare_state_dict"] is True
    assert s["lambda_max"] == pytest.approx(ev[-1], rel=1e-6)
    assert s["lambda_min"] == pytest.approx(ev[0], rel=1e-6)


def run_cli_here(folder: Path, args: list[str], monkeypatch, capsys) -> None:
    """``curvature.cli.main(args)`` in this process (saves an interpreter start-up; the
    console-script subprocess is tested in test_cli.py) with ``folder`` as the current
    directory and, as for the console script, not on ``sys.path``: the factory module
    is found only because ``--model`` searches the current directory."""
    from curvature.cli import main

    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(folder))])
    monkeypatch.setenv("TQDM_DISABLE", "1")
    try:
        code = main(args)
    finally:
        sys.modules.pop("hf_factories", None)
    assert code == 0, capsys.readouterr().err[-3000:]


def test_gpt2_through_the_cli_with_a_factory_in_the_current_directory(
        factory_dir, monkeypatch, capsys):
    torch.manual_seed(4)
    model = load_factories(factory_dir).gpt2()
    torch.save(model.state_dict(), factory_dir / "gpt2.pt")  # tied embeddings: torch.save
    ids = np.random.default_rng(4).integers(0, 8, size=(12, 6))
    x, y = ids[:, :5], ids[:, 5]  # predict the 6th token from the first five
    run_cli_here(factory_dir, analyze_args(factory_dir, "gpt2", factory_dir / "gpt2.pt", x, y),
                 monkeypatch, capsys)
    compare_summary(factory_dir, "gpt2", x, y, model)


def test_vit_through_the_cli_with_a_safetensors_state_dict(factory_dir, monkeypatch, capsys):
    from safetensors.torch import save_file
    from transformers import ViTForImageClassification

    torch.manual_seed(5)
    model = load_factories(factory_dir).vit()
    plain = ViTForImageClassification(model.config)  # what the user trained and saved
    plain.load_state_dict(model.state_dict())
    save_file(plain.state_dict(), str(factory_dir / "vit.safetensors"))
    rng = np.random.default_rng(5)
    x = rng.standard_normal((10, 1, 4, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=10)
    run_cli_here(factory_dir, analyze_args(factory_dir, "vit", factory_dir / "vit.safetensors",
                                           x, y), monkeypatch, capsys)
    compare_summary(factory_dir, "vit", x, y, model)


def test_fused_attention_through_the_cli_refused_in_one_line_or_run_by_finite_differences(
        factory_dir, monkeypatch, capsys):
    """transformers' default attention (sdpa) has no double backward on the CPU: the exact
    analysis exits 2 with one line naming the way out, and ``--hvp-method fd-central``
    gives the float64 truth of the (identical) eager model."""
    from curvature.cli import main

    torch.manual_seed(6)
    model = load_factories(factory_dir).vit()
    torch.save(model.state_dict(), factory_dir / "vit-sdpa.pt")
    rng = np.random.default_rng(6)
    x = rng.standard_normal((10, 1, 4, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=10)
    args = analyze_args(factory_dir, "vit", factory_dir / "vit-sdpa.pt", x, y)
    args += ["--model-kwargs", '{"attn": "sdpa"}']
    monkeypatch.chdir(factory_dir)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(factory_dir))])
    try:
        assert main(args) == 2
    finally:
        sys.modules.pop("hf_factories", None)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--hvp-method" in err and "eager" in err
    run_cli_here(factory_dir, args + ["--hvp-method", "fd-central"], monkeypatch, capsys)
    compare_summary(factory_dir, "vit", x, y, model)
