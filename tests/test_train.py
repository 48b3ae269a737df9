"""The training loop: every named optimizer steps through the closure protocol,
runs are reproducible from the seed, and checkpoints carry what analysis needs."""

from __future__ import annotations

import pytest
import torch

from curvature.checkpoint import load_checkpoint
from curvature.data import load_dataset
from curvature.models import build_model
from curvature.train import OPTIMIZERS, make_optimizer, train

DATA = "synthetic-classification:d=6,classes=3,n_train=48,n_test=16"


def _model():
    torch.manual_seed(0)
    return build_model("mlp", in_features=6, hidden=[5], num_classes=3)


@pytest.mark.parametrize("name", [*OPTIMIZERS, "rmsprop"])
def test_every_optimizer_trains(name):
    ds = load_dataset(DATA)
    model = _model()
    w0 = torch.nn.utils.parameters_to_vector(model.parameters()).clone()
    lr = 0.01 if name in ("adam", "adamw", "rmsprop", "adahessian") else 0.05
    res = train(model, ds, optimizer=name, lr=lr, steps=4, batch_size=16, progress=False)
    assert len(res.history) == 4 and res.history["loss"].notna().all()
    assert not torch.equal(w0, torch.nn.utils.parameters_to_vector(model.parameters()))
    assert res.metadata["optimizer"] == name and res.metadata["step"] == 4


def test_same_seed_same_weights_and_checkpoints(tmp_path):
    ds = load_dataset(DATA)
    runs = []
    for out in (tmp_path / "a", tmp_path / "b"):
        m = _model()
        res = train(m, ds, optimizer="sam", lr=0.1, rho=0.05, momentum=0.9, steps=6,
                    batch_size=16, seed=4, out=out, save_at=[3], factory="mlp",
                    factory_kwargs={"in_features": 6, "hidden": [5], "num_classes": 3},
                    progress=False)
        runs.append((m, res))
    (m1, r1), (m2, r2) = runs
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert [p.name for p in r1.checkpoints] == ["step_000003.pt", "final.pt"]
    c = load_checkpoint(r1.checkpoints[-1])
    assert all(torch.equal(c.state_dict[k], v) for k, v in m1.state_dict().items())
    assert c.metadata["hyperparameters"] == {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0,
                                             "rho": 0.05, "base_optimizer": "SGD"}
    assert c.metadata["train_loss"] == pytest.approx(r1.evaluations["train_loss"].iloc[-1])


def test_bad_arguments():
    ds = load_dataset(DATA)
    with pytest.raises(ValueError, match="unknown optimizer 'nope'"):
        make_optimizer("nope", _model())
    with pytest.raises(ValueError, match="outside 1..5"):
        train(_model(), ds, steps=5, save_at=[7], progress=False)
    linear = build_model("mlp", in_features=6, hidden=[5], num_classes=3, activation="identity")
    with pytest.raises(FloatingPointError, match="diverged"):
        train(linear, ds, optimizer="sgd", lr=1e30, steps=20, batch_size=16, progress=False)
