"""MNIST-1D (``--data mnist1d``) and the 1-D CNN (``cnn1d``): the offline generator's
shapes, classes and seeding, the split against the ``mnist1d`` package's own
``make_dataset``, training a few steps, and ``curvature train`` -> ``analyze`` end to end
in process."""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest
import torch

import curvature as cv
from curvature.checkpoint import load_checkpoint
from curvature.cli import main
from curvature.data import load_dataset, parse_spec
from curvature.models import build_model, default_kwargs
from curvature.pipeline import make_loss

pytest.importorskip("mnist1d")

SMALL = "mnist1d:n_train=256,n_test=128"


@pytest.fixture(scope="module")
def small():
    return load_dataset(SMALL)


def test_mnist1d_shapes_classes_and_defaults(small):
    assert parse_spec("mnist1d")["n_train"] == 4000 and parse_spec("mnist1d")["n_test"] == 1000
    assert small.task == "classification" and small.num_classes == 10
    assert small.input_shape == (40,)
    assert small.x_train.shape == (256, 40) and small.x_test.shape == (128, 40)
    assert small.x_train.dtype == torch.float32 and small.y_train.dtype == torch.int64
    assert torch.isfinite(small.x_train).all()
    # 390 signals are drawn (39 per class) and the 384 used cover every class
    assert set(small.y_train.tolist()) | set(small.y_test.tolist()) == set(range(10))
    assert small.y_train.bincount(minlength=10).min() > 10
    # train and test are different signals
    d = torch.cdist(small.x_test, small.x_train)
    assert d.min() > 1e-3


def test_mnist1d_seeding_and_global_rng_left_alone(small):
    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    again = load_dataset(SMALL)
    assert np.random.rand() == expected_np and random.random() == expected_py
    for a, b in [(small.x_train, again.x_train), (small.y_train, again.y_train),
                 (small.x_test, again.x_test), (small.y_test, again.y_test)]:
        assert torch.equal(a, b)
    other = load_dataset(SMALL + ",seed=1")
    assert not torch.equal(small.x_train, other.x_train)
    assert not torch.equal(small.y_train, other.y_train)


def test_mnist1d_split_matches_the_package_generator():
    """The first ``n_train`` signals of ``make_dataset`` (same seed, same number of
    signals) are the training set, the next ``n_test`` the test set."""
    from mnist1d.data import get_dataset_args, make_dataset

    ds = load_dataset("mnist1d:n_train=70,n_test=30,seed=5")
    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed = 100, 0.7, 5
    ref = make_dataset(args)
    np.testing.assert_allclose(ds.x_train.numpy(), ref["x"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(ds.x_test.numpy(), ref["x_test"], rtol=0, atol=1e-6)
    assert (ds.y_train.numpy() == ref["y"]).all() and (ds.y_test.numpy() == ref["y_test"]).all()


@pytest.mark.parametrize("spec, match", [
    ("mnist1d:n_train=0", "n_train must be a positive integer"),
    ("mnist1d:n_train=None", "n_train must be a positive integer"),
    ("mnist1d:n_test=-1", "n_test must be a non-negative integer"),
    ("mnist1d:d=3", "has no option 'd'"),
])
def test_mnist1d_bad_options_are_named(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_spec(spec)


def test_cnn1d_trains_on_mnist1d(small):
    torch.manual_seed(0)
    model = build_model("cnn1d", **default_kwargs("cnn1d", small.input_shape, 10))
    assert model(small.x_train[:4]).shape == (4, 10)
    assert torch.equal(model(small.x_train[:4]), model(small.x_train[:4, None, :]))
    loss_fn = small.loss_fn()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with torch.no_grad():
        before = loss_fn(model(small.x_train), small.y_train).item()
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn(model(small.x_train), small.y_train)
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = loss_fn(model(small.x_train), small.y_train).item()
    assert np.isfinite(after) and after < 0.9 * before


def test_cli_train_then_analyze_cnn1d_on_mnist1d(tmp_path):
    """``curvature train --model cnn1d --data mnist1d`` writes a checkpoint that
    ``analyze`` reads; its lambda_max equals the top eigenvalue of the dense float64
    Hessian (518 parameters) of the recorded dataset's training split."""
    run = tmp_path / "run"
    assert main(["train", "--model", "cnn1d", "--model-kwargs", json.dumps({"channels": [4, 4]}),
                 "--data", SMALL, "--steps", "5", "--batch-size", "64", "--seed", "0",
                 "--out", str(run), "-q"]) == 0
    ckpt = load_checkpoint(run / "final.pt")
    assert ckpt.factory == "curvature.models:cnn1d"
    assert ckpt.factory_kwargs["input_length"] == 40 and ckpt.data_spec == parse_spec(SMALL)
    out = tmp_path / "analysis"
    assert main(["analyze", str(run / "final.pt"), "--metrics", "eigenvalues", "--top-k", "1",
                 "--tol", "1e-8", "--out", str(out), "-q"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = pd.read_csv(out / "eigenvalues.csv")
    assert summary["num_params"] == 518 and set(rows["split"]) == {"train", "test"}
    ds = load_dataset(ckpt.data_spec)
    ev = torch.linalg.eigvalsh(
        cv.dense_hessian(ckpt.model, make_loss("ce"), (ds.x_train, ds.y_train)))
    assert summary["lambda_max"] == pytest.approx(float(ev[-1]), rel=1e-5)
    assert summary["converged"]["largest"]
