"""curvature.inputs and curvature.atomic: one loss per name, atomic folders and figures."""

from __future__ import annotations

import os
import stat
import warnings

import pytest
import torch
from torch import nn

from curvature.atomic import atomic_directory
from curvature.data import load_dataset
from curvature.inputs import InputError, MeanSquaredError, make_loss


def _pair(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64),
            torch.randn(*shape, generator=g, dtype=torch.float64))


def test_mse_is_the_mean_squared_error_for_every_target_form():
    mse = make_loss("mse")
    assert isinstance(mse, MeanSquaredError) and isinstance(mse, nn.MSELoss)
    out, y = _pair((6, 3))
    # targets already shaped like the outputs: the closed form, and torch's MSELoss exactly
    torch.testing.assert_close(mse(out, y), ((out - y) ** 2).mean(), rtol=1e-14, atol=0)
    assert torch.equal(mse(out, y), nn.MSELoss()(out, y))
    # class labels: one-hot targets
    labels = torch.tensor([0, 2, 1, 1, 0, 2])
    onehot = torch.eye(3, dtype=torch.float64)[labels]
    torch.testing.assert_close(mse(out, labels), ((out - onehot) ** 2).mean(), rtol=1e-14, atol=0)
    # [N] targets of a one-output model are compared elementwise, not broadcast to [N, N]
    out1, y1 = out[:, :1], y[:, 0]
    torch.testing.assert_close(mse(out1, y1), ((out1[:, 0] - y1) ** 2).mean(), rtol=1e-14, atol=0)
    # float32 targets against float64 outputs are cast to the outputs' dtype
    assert mse(out, y.float()).dtype == torch.float64


def test_dataset_losses_are_the_losses_of_those_names():
    reg = load_dataset("synthetic-regression:n_train=40,n_test=10,outputs=2")
    cls = load_dataset("synthetic-classification:n_train=40,n_test=10")
    assert type(reg.loss_fn()) is type(make_loss("mse"))
    assert type(cls.loss_fn()) is type(make_loss("ce"))
    # on the dataset's own targets the value is torch's MSELoss (what loss_fn() returned
    # before the two "mse" were made one): no result changes
    model = nn.Linear(reg.input_shape[0], reg.num_outputs)
    with torch.no_grad():
        out = model(reg.x_train)
        assert torch.equal(reg.loss_fn()(out, reg.y_train), nn.MSELoss()(out, reg.y_train))


def test_unknown_loss_name_is_refused():
    with pytest.raises(InputError, match="unknown loss 'l1'; choose ce or mse"):
        make_loss("l1")


def test_atomic_directory_replaces_whole_or_not_at_all(tmp_path):
    out = tmp_path / "report"
    with atomic_directory(out) as tmp:
        (tmp / "a.txt").write_text("one")
    assert (out / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError, match="midway"), atomic_directory(out) as tmp:
        (tmp / "b.txt").write_text("two")
        raise RuntimeError("midway")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no temporary left
    with atomic_directory(out) as tmp:
        (tmp / "c.txt").write_text("three")
    assert sorted(p.name for p in out.iterdir()) == ["c.txt"]  # replaced as a whole
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="exists and is not a directory"):
        with atomic_directory(tmp_path / "file"):
            pass


def test_figures_are_written_atomically_with_ordinary_permissions(tmp_path):
    from curvature import plots

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ax = plots.plot_trajectories([0, 1, 2], {"a": [1.0, 2.0, 3.0]})
    path = plots.save_figure(ax.figure, tmp_path / "t.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    umask = os.umask(0)
    os.umask(umask)
    # like every other file of a report (the temporary file's 0o600 used to survive)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["t.png"]
