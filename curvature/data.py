"""Small datasets for demos, tests and experiments, named by JSON-able specs.

A *spec* is a string or a dict; :func:`load_dataset` turns it into a
:class:`Dataset` whose ``spec`` is the canonical dict (every option filled in), so
``load_dataset(ds.spec)`` -- e.g. from a checkpoint -- rebuilds the same tensors.

==============================  ==========================================================
spec                            data
==============================  ==========================================================
``"digits"``                    scikit-learn's embedded 8x8 digits (1797 images, 10
                                classes) as ``[N, 64]`` features, each standardised with
                                training-set mean and std; stratified seeded split
``"digits-image"``              the same split as images ``[N, 1, 8, 8]``, standardised
                                with the global training-set mean and std
``"synthetic-classification"``  Gaussian mixture: ``classes`` means at distance
                                ``separation`` from the origin in ``d`` dimensions, unit
                                isotropic noise, balanced labels
``"synthetic-regression"``      ``y = teacher(x) + noise * eps``, ``teacher`` a random
                                one-hidden-layer tanh network, ``x, eps ~ N(0, I)``
``"synthetic-image"``           ``N(0, 1)`` images ``[channels, size, size]`` (default
                                CIFAR's ``3 x 32 x 32``), labels ``argmax`` of a random
                                linear teacher -- for timing at realistic input shapes
``"mnist1d"``                   MNIST-1D (Greydanus & Kobak, ICML 2024): 1-D signals
                                ``[N, 40]``, 10 classes, generated offline by the
                                ``mnist1d`` package (default 4000 train / 1000 test)
``"path/to/file.npz"``          arrays ``x`` and ``y`` (optionally ``x_test``, ``y_test``;
                                else a seeded ``test_fraction`` split); loaded with
                                ``allow_pickle=False``
``"cifar10:/dir"``              CIFAR-10 from a local copy of the official python
                                version (``cifar-10-batches-py/data_batch_1..5``,
                                ``test_batch``), read with a restricted unpickler
==============================  ==========================================================

Options are given as ``"name:key=value,key=value"`` (a bare first item is the path
for ``npz`` and ``cifar10``) or as a dict ``{"name": ..., "key": value}``. Every
dataset takes ``seed`` (all randomness: split, subsets, synthetic draws) and
``n_train`` / ``n_test`` (number of examples; for file datasets a seeded random
subset, ``None`` keeps all). Nothing is ever downloaded.

Inputs are ``float32``; targets are ``int64`` class indices ``[N]`` for
classification and ``float32`` ``[N, outputs]`` for regression.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from curvature.datasets import CIFAR10_FILES, CIFAR10_MEAN, CIFAR10_STD, LOADERS, cifar10_directory

__all__ = [
    "CIFAR10_FILES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DATASETS",
    "Dataset",
    "batches",
    "cifar10_directory",
    "load_dataset",
    "loader",
    "parse_spec",
]


@dataclass(frozen=True, repr=False, eq=False)
class Dataset:
    """A train/test split held in memory.

    Attributes:
        name: dataset name (``"digits"``, ``"cifar10"``, ...).
        spec: canonical JSON-able spec; ``load_dataset(spec)`` rebuilds this dataset.
        task: ``"classification"`` or ``"regression"``.
        num_classes: number of classes (``None`` for regression).
        input_shape: shape of one input, without the batch dimension.
        x_train, y_train, x_test, y_test: inputs ``float32 [N, *input_shape]``; targets
            ``int64 [N]`` (classification) or ``float32 [N, outputs]`` (regression).
    """

    name: str
    spec: dict[str, Any]
    task: str
    num_classes: int | None
    input_shape: tuple[int, ...]
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor

    @property
    def num_outputs(self) -> int:
        """Width of the model output: classes, or regression targets."""
        if self.task == "classification":
            return int(self.num_classes)  # type: ignore[arg-type]
        return int(self.y_train.shape[1])

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> Dataset:
        """A copy on ``device`` with floating tensors (inputs, regression targets) cast
        to ``dtype`` -- e.g. ``ds.to(dtype=torch.float64)`` for ground-truth checks.
        Class indices stay ``int64``."""

        def move(t: Tensor) -> Tensor:
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)

        return replace(self, x_train=move(self.x_train), y_train=move(self.y_train),
                       x_test=move(self.x_test), y_test=move(self.y_test))

    def loss_fn(self) -> nn.Module:
        """Mean cross-entropy for classification, mean squared error for regression:
        :func:`curvature.inputs.make_loss` of ``"ce"`` / ``"mse"``, the losses the
        ``curvature`` command uses under those names."""
        from curvature.inputs import make_loss

        return make_loss("ce" if self.task == "classification" else "mse")

    def train_batches(self, batch_size: int | None = None) -> list[tuple[Tensor, Tensor]]:
        """The training set as a list of ``(x, y)`` batches, in order (see :func:`batches`)."""
        return batches(self.x_train, self.y_train, batch_size)

    def test_batches(self, batch_size: int | None = None) -> list[tuple[Tensor, Tensor]]:
        """The test set as a list of ``(x, y)`` batches, in order (see :func:`batches`)."""
        return batches(self.x_test, self.y_test, batch_size)

    def __repr__(self) -> str:
        out = f"num_classes={self.num_classes}" if self.num_classes else "outputs=" + str(
            self.num_outputs
        )
        return (
            f"Dataset({self.name!r}, {self.task}, {out}, input_shape={self.input_shape}, "
            f"train={len(self.x_train)}, test={len(self.x_test)})"
        )


def batches(x: Tensor, y: Tensor, batch_size: int | None = None) -> list[tuple[Tensor, Tensor]]:
    """Split ``(x, y)`` into consecutive batches ``[(x[0:b], y[0:b]), ...]``.

    The last batch holds the remainder and may be smaller; ``batch_size=None`` gives
    one batch with everything. The batches are views (no copy).
    """
    _check_pair(x, y)
    n = len(x)
    if batch_size is None:
        batch_size = max(n, 1)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, n, batch_size)]


def loader(
    x: Tensor,
    y: Tensor,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    *,
    drop_last: bool = False,
) -> DataLoader:
    """A ``DataLoader`` over ``(x, y)``; with ``shuffle=True`` the order of every epoch
    is drawn from a generator seeded with ``seed`` (the same sequence of epochs for the
    same seed)."""
    _check_pair(x, y)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    generator = torch.Generator().manual_seed(int(seed)) if shuffle else None
    return DataLoader(
        TensorDataset(x, y),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        drop_last=drop_last,
    )


def _check_pair(x: Any, y: Any) -> None:
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise TypeError(
            f"x and y must be tensors, got {type(x).__name__} and {type(y).__name__}"
        )
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
        raise ValueError(
            f"x and y must have the same leading (example) dimension, got shapes "
            f"{list(x.shape)} and {list(y.shape)}"
        )


# --------------------------------------------------------------------------- specs

_COMMON = {"seed": 0, "n_train": None, "n_test": None}

DATASETS: dict[str, dict[str, Any]] = {
    "digits": {**_COMMON, "test_fraction": 0.25},
    "digits-image": {**_COMMON, "test_fraction": 0.25},
    "synthetic-classification": {
        **_COMMON, "n_train": 512, "n_test": 256, "d": 16, "classes": 4, "separation": 3.0,
    },
    "synthetic-regression": {
        **_COMMON, "n_train": 512, "n_test": 256, "d": 8, "outputs": 1, "hidden": 16,
        "noise": 0.1,
    },
    "synthetic-image": {
        **_COMMON, "n_train": 256, "n_test": 128, "channels": 3, "size": 32, "classes": 10,
    },
    "mnist1d": {**_COMMON, "n_train": 4000, "n_test": 1000},
    "npz": {**_COMMON, "path": None, "test_fraction": 0.2, "task": None},
    "cifar10": {**_COMMON, "root": None, "normalize": True},
}
"""Dataset names and their options with default values."""

_PATH_OPTION = {"npz": "path", "cifar10": "root"}
_ALIASES = {"n": "n_train", "num_classes": "classes"}


def _parse_value(text: str) -> Any:
    low = text.strip().lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip()


def parse_spec(spec: str | Mapping[str, Any]) -> dict[str, Any]:
    """The canonical dict of a dataset spec: ``{"name": ..., <every option>: value}``.

    Strings: ``"digits"``, ``"synthetic-classification:n_train=256,d=10,classes=3"``,
    ``"cifar10:/data/cifar,n_train=1000"``, ``"runs/data.npz,n_train=100"`` or
    ``"npz:runs/data.npz"``. Values are read as None/booleans/integers/floats where they
    parse as such, else strings; a path with ``,`` or ``=`` in it needs the dict form.
    Paths are made absolute so the spec stays valid from another working directory.

    Raises:
        ValueError: unknown dataset or option, or a malformed string.
    """
    if isinstance(spec, Dataset):
        return dict(spec.spec)
    if isinstance(spec, Mapping):
        opts = dict(spec)
        if "name" not in opts:
            raise ValueError(f"dataset spec dict needs a 'name' key, got keys {sorted(opts)}")
        name = opts.pop("name")
    elif isinstance(spec, str) and spec.strip():
        text = spec.strip()
        if ":" in text and text.split(":", 1)[0] in DATASETS:
            name, rest = text.split(":", 1)
        elif text.split(",", 1)[0].endswith(".npz"):
            name, rest = "npz", text
        else:
            name, rest = text, ""
        opts = {}
        for i, item in enumerate(rest.split(",") if rest else []):
            if "=" in item:
                key, value = item.split("=", 1)
                opts[key.strip()] = _parse_value(value)
            elif i == 0 and name in _PATH_OPTION:
                opts[_PATH_OPTION[name]] = item
            else:
                raise ValueError(
                    f"dataset spec {spec!r}: expected key=value, got {item!r}"
                )
    else:
        raise ValueError(f"dataset spec must be a non-empty string or a dict, got {spec!r}")
    if name not in DATASETS:
        raise ValueError(
            f"unknown dataset {name!r}; choose one of {sorted(DATASETS)} or a .npz file path"
        )
    defaults = DATASETS[name]
    out: dict[str, Any] = {"name": name, **defaults}
    for key, value in opts.items():
        key = _ALIASES.get(key, key)
        if key not in defaults:
            raise ValueError(
                f"dataset {name!r} has no option {key!r}; options: {sorted(defaults)}"
            )
        out[key] = value
    if name in _PATH_OPTION:
        key = _PATH_OPTION[name]
        if not isinstance(out[key], (str, os.PathLike)) or not str(out[key]):
            raise ValueError(f"dataset {name!r} needs option {key!r} (a path)")
        out[key] = os.path.abspath(os.fspath(out[key]))
    for key in ("seed",):
        if isinstance(out[key], bool) or not isinstance(out[key], int):
            raise ValueError(f"dataset option {key} must be an integer, got {out[key]!r}")
    for key in ("separation", "noise"):
        v = out.get(key, 0.0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
            raise ValueError(f"dataset option {key} must be a non-negative number, got {v!r}")
    if not isinstance(out.get("normalize", True), bool):
        raise ValueError(f"dataset option normalize must be true or false, got {out['normalize']!r}")
    sizes_required = name.startswith("synthetic") or name == "mnist1d"
    for key in ("n_train", "n_test", "d", "classes", "outputs", "hidden", "channels", "size"):
        if key in out and (out[key] is not None or sizes_required):
            v = out[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < (key != "n_test"):
                raise ValueError(
                    f"dataset option {key} must be a {'non-negative' if key == 'n_test' else 'positive'} "
                    f"integer, got {v!r}"
                )
    return out


def load_dataset(spec: str | Mapping[str, Any]) -> Dataset:
    """Load (or generate) a dataset from its spec; see the module docstring.

    Returns:
        a :class:`Dataset` whose ``spec`` is the canonical dict of ``spec``.

    Raises:
        ValueError: bad spec, or file contents that are not a dataset.
        FileNotFoundError: a file dataset is absent (the message names the expected layout).
    """
    opts = parse_spec(spec)
    rng = np.random.default_rng(opts["seed"])
    task, x_tr, y_tr, x_te, y_te, num_classes = LOADERS[opts["name"]](opts, rng)
    return Dataset(
        name=opts["name"],
        spec=opts,
        task=task,
        num_classes=num_classes,
        input_shape=tuple(int(s) for s in x_tr.shape[1:]),
        x_train=torch.as_tensor(x_tr),
        y_train=torch.as_tensor(y_tr),
        x_test=torch.as_tensor(x_te),
        y_test=torch.as_tensor(y_te),
    )
