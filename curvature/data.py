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

import io
import math
import os
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

__all__ = [
    "DATASETS",
    "Dataset",
    "batches",
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
    sizes_required = name.startswith("synthetic")
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
    task, x_tr, y_tr, x_te, y_te, num_classes = _LOADERS[opts["name"]](opts, rng)
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


# ------------------------------------------------------------------------- loaders

_Arrays = tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray, "int | None"]


def _subset(x: np.ndarray, y: np.ndarray, n: int | None, rng: np.random.Generator, what: str):
    if n is None:
        return x, y
    if n > len(x):
        raise ValueError(f"{what}={n} but only {len(x)} examples are available")
    idx = np.sort(rng.permutation(len(x))[:n])
    return x[idx], y[idx]


def _split(x: np.ndarray, y: np.ndarray, fraction: float, rng: np.random.Generator,
           stratify: bool):
    """Seeded split with ``round(fraction * N)`` test examples (per class if ``stratify``)."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not (
        0 <= fraction < 1
    ):
        raise ValueError(f"test_fraction must be in [0, 1), got {fraction!r}")
    test = np.zeros(len(x), dtype=bool)
    groups = [np.flatnonzero(y == c) for c in np.unique(y)] if stratify else [np.arange(len(x))]
    for g in groups:
        test[rng.permutation(g)[: int(round(fraction * len(g)))]] = True
    return x[~test], y[~test], x[test], y[test]


def _digits(opts: dict[str, Any], rng: np.random.Generator) -> _Arrays:
    from sklearn.datasets import load_digits  # embedded in scikit-learn, no download

    raw = load_digits()
    x = raw.data.astype(np.float64)
    y = raw.target.astype(np.int64)
    x_tr, y_tr, x_te, y_te = _split(x, y, opts["test_fraction"], rng, stratify=True)
    x_tr, y_tr = _subset(x_tr, y_tr, opts["n_train"], rng, "n_train")
    x_te, y_te = _subset(x_te, y_te, opts["n_test"], rng, "n_test")
    if opts["name"] == "digits":
        mean, std = x_tr.mean(0), x_tr.std(0)
        std[std == 0] = 1.0  # border pixels that are always 0 in the training set
    else:
        mean, std = x_tr.mean(), x_tr.std()
    shape = (-1, 64) if opts["name"] == "digits" else (-1, 1, 8, 8)
    def prep(a: np.ndarray) -> np.ndarray:
        return ((a - mean) / std).astype(np.float32).reshape(shape)

    return "classification", prep(x_tr), y_tr, prep(x_te), y_te, 10


def _balanced_labels(n: int, classes: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % classes).astype(np.int64)


def _synthetic_classification(opts: dict[str, Any], rng: np.random.Generator) -> _Arrays:
    d, c = opts["d"], opts["classes"]
    g = rng.standard_normal((c, d))
    means = opts["separation"] * g / np.linalg.norm(g, axis=1, keepdims=True)

    def draw(n: int):
        y = _balanced_labels(n, c, rng)
        return (means[y] + rng.standard_normal((n, d))).astype(np.float32), y

    x_tr, y_tr = draw(opts["n_train"])
    x_te, y_te = draw(opts["n_test"])
    return "classification", x_tr, y_tr, x_te, y_te, c


def _synthetic_regression(opts: dict[str, Any], rng: np.random.Generator) -> _Arrays:
    d, h, k = opts["d"], opts["hidden"], opts["outputs"]
    w1 = rng.standard_normal((d, h)) / math.sqrt(d)
    b1 = rng.standard_normal(h) * 0.1
    w2 = rng.standard_normal((h, k)) / math.sqrt(h)

    def draw(n: int):
        x = rng.standard_normal((n, d))
        y = np.tanh(x @ w1 + b1) @ w2 + opts["noise"] * rng.standard_normal((n, k))
        return x.astype(np.float32), y.astype(np.float32)

    x_tr, y_tr = draw(opts["n_train"])
    x_te, y_te = draw(opts["n_test"])
    return "regression", x_tr, y_tr, x_te, y_te, None


def _synthetic_image(opts: dict[str, Any], rng: np.random.Generator) -> _Arrays:
    shape = (opts["channels"], opts["size"], opts["size"])
    c = opts["classes"]
    teacher = rng.standard_normal((math.prod(shape), c)).astype(np.float32)

    def draw(n: int):
        x = rng.standard_normal((n, *shape), dtype=np.float32)
        return x, np.argmax(x.reshape(n, -1) @ teacher, axis=1).astype(np.int64)

    x_tr, y_tr = draw(opts["n_train"])
    x_te, y_te = draw(opts["n_test"])
    return "classification", x_tr, y_tr, x_te, y_te, c


def _npz(opts: dict[str, Any], rng: np.random.Generator) -> _Arrays:
    path = opts["path"]
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"dataset file {path!r} not found (expected a .npz with arrays 'x' and 'y', "
            f"optionally 'x_test' and 'y_test')"
        )
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:  # zipfile.BadZipFile, OSError, ValueError (pickled objects)
        raise ValueError(
            f"{path}: not a .npz file readable without pickle ({type(e).__name__}: {e})"
        ) from None
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing or (("x_test" in arrays) != ("y_test" in arrays)):
        raise ValueError(
            f"{path}: needs arrays 'x' and 'y' (and 'x_test' with 'y_test', or neither); "
            f"found {sorted(arrays)}"
        )
    x, y = arrays["x"], arrays["y"]
    for a, b in (("x", "y"), ("x_test", "y_test")):
        if a in arrays and (arrays[a].ndim == 0 or len(arrays[a]) != len(arrays[b])):
            raise ValueError(
                f"{path}: {a} and {b} must have the same number of examples, got shapes "
                f"{arrays[a].shape} and {arrays[b].shape}"
            )
    task = opts["task"]
    if task is None:
        task = "classification" if np.issubdtype(y.dtype, np.integer) and y.ndim == 1 else (
            "regression"
        )
    if task not in ("classification", "regression"):
        raise ValueError(f"task must be 'classification', 'regression' or None, got {task!r}")
    if "x_test" in arrays:
        x_tr, y_tr, x_te, y_te = x, y, arrays["x_test"], arrays["y_test"]
    else:
        x_tr, y_tr, x_te, y_te = _split(x, y, opts["test_fraction"], rng,
                                        stratify=task == "classification")
    x_tr, y_tr = _subset(x_tr, y_tr, opts["n_train"], rng, "n_train")
    x_te, y_te = _subset(x_te, y_te, opts["n_test"], rng, "n_test")
    if task == "classification":
        ys = np.concatenate([y_tr.ravel(), y_te.ravel()])
        if y.ndim != 1 or not np.all(np.equal(np.mod(ys, 1), 0)) or (ys.size and ys.min() < 0):
            raise ValueError(f"{path}: classification targets must be [N] class indices >= 0")
        num_classes = int(ys.max()) + 1 if ys.size else 0
        y_tr, y_te = y_tr.astype(np.int64), y_te.astype(np.int64)
    else:
        num_classes = None
        y_tr = y_tr.astype(np.float32).reshape(len(y_tr), -1)
        y_te = y_te.astype(np.float32).reshape(len(y_te), -1)
    return task, x_tr.astype(np.float32), y_tr, x_te.astype(np.float32), y_te, num_classes


# --------------------------------------------------------------------------- CIFAR

CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    # Python 3 pickles bytes at protocol <= 2 as _codecs.encode(str, "latin1")
    if not isinstance(text, str) or encoding.lower().replace("-", "") != "latin1":
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _numpy_globals() -> dict[tuple[str, str], Callable[..., Any]]:
    try:
        from numpy._core.multiarray import _reconstruct
        from numpy._core.numeric import _frombuffer
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
        from numpy.core.numeric import _frombuffer  # type: ignore[no-redef]

    def reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        if subtype is not np.ndarray:
            raise pickle.UnpicklingError("refused to reconstruct an ndarray subclass")
        return _reconstruct(subtype, shape, dtype)

    out: dict[tuple[str, str], Callable[..., Any]] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for core in ("numpy.core", "numpy._core"):
        out[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        out[(f"{core}.numeric", "_frombuffer")] = _frombuffer
    return out


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that builds builtin containers, strings, bytes, numbers and plain
    numpy arrays, and refuses every other global (so no code from the file runs)."""

    _allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused to load global {module}.{name}: only numpy arrays are allowed"
            ) from None


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError,
            AttributeError, KeyError) as e:
        raise ValueError(
            f"{path}: not a CIFAR-10 python batch ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a CIFAR-10 python batch (top level is not a dict)")
    obj = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    data, labels = obj.get("data"), obj.get("labels")
    if (
        not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2
        or data.shape[1] != 3072 or not isinstance(labels, list)
        or len(labels) != len(data)
        or not all(isinstance(v, int) and 0 <= v < 10 for v in labels)
    ):
        raise ValueError(
            f"{path}: not a CIFAR-10 python batch (expected 'data' uint8 [N, 3072] and "
            f"'labels' a list of N ints in 0..9)"
        )
    return data, np.asarray(labels, dtype=np.int64)


def cifar10_directory(root: str | os.PathLike) -> Path:
    """The directory holding the CIFAR-10 python batches: ``root`` itself or
    ``root/cifar-10-batches-py``.

    Raises:
        FileNotFoundError: naming the expected layout and the missing files.
    """
    root = Path(root)
    for cand in (root / "cifar-10-batches-py", root):
        if all((cand / f).is_file() for f in CIFAR10_FILES):
            return cand
    cand = root / "cifar-10-batches-py"
    cand = cand if cand.is_dir() else root
    missing = [f for f in CIFAR10_FILES if not (cand / f).is_file()]
    raise FileNotFoundError(
        f"CIFAR-10 not found under {str(root)!r}: expected the python version "
        f"(cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, "
        f"extracted) as {str(root / 'cifar-10-batches-py')}/{{{', '.join(CIFAR10_FILES)}}}; "
        f"missing in {str(cand)!r}: {', '.join(missing)}. Nothing is downloaded."
    )


def _cifar10(opts: dict[str, Any], rng: np.random.Generator) -> _Arrays:
    folder = cifar10_directory(opts["root"])
    train = [_read_cifar_batch(folder / f) for f in CIFAR10_FILES[:5]]
    x_tr = np.concatenate([b[0] for b in train])
    y_tr = np.concatenate([b[1] for b in train])
    x_te, y_te = _read_cifar_batch(folder / "test_batch")
    x_tr, y_tr = _subset(x_tr, y_tr, opts["n_train"], rng, "n_train")
    x_te, y_te = _subset(x_te, y_te, opts["n_test"], rng, "n_test")

    def prep(a: np.ndarray) -> np.ndarray:
        # rows are 1024 red, 1024 green, 1024 blue values of a 32x32 image, row-major
        x = a.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
        if opts["normalize"]:
            mean = np.asarray(CIFAR10_MEAN, np.float32).reshape(1, 3, 1, 1)
            std = np.asarray(CIFAR10_STD, np.float32).reshape(1, 3, 1, 1)
            x = (x - mean) / std
        return x

    return "classification", prep(x_tr), y_tr, prep(x_te), y_te, 10


_LOADERS: dict[str, Callable[[dict[str, Any], np.random.Generator], _Arrays]] = {
    "digits": _digits,
    "digits-image": _digits,
    "synthetic-classification": _synthetic_classification,
    "synthetic-regression": _synthetic_regression,
    "synthetic-image": _synthetic_image,
    "npz": _npz,
    "cifar10": _cifar10,
}
