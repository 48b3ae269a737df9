"""Dataset builders: what each dataset name of :mod:`curvature.data` makes.

Every builder takes the canonical options of a spec (:func:`curvature.data.parse_spec`)
and a seeded numpy generator and returns :data:`Arrays`: ``(task, x_train, y_train,
x_test, y_test, num_classes)``. :data:`LOADERS` maps the dataset names to them:
scikit-learn's embedded digits, three synthetic generators, MNIST-1D (generated
offline by the ``mnist1d`` package), ``.npz`` files
(``allow_pickle=False``) and CIFAR-10's python batches, read with an unpickler that
builds numpy arrays and nothing else. Nothing is ever downloaded.
"""

from __future__ import annotations

import io
import math
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CIFAR10_FILES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "LOADERS",
    "Arrays",
    "cifar10_directory",
]

Arrays = tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray, "int | None"]
"""``(task, x_train, y_train, x_test, y_test, num_classes)`` of one dataset."""


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


def _digits(opts: dict[str, Any], rng: np.random.Generator) -> Arrays:
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


def _synthetic_classification(opts: dict[str, Any], rng: np.random.Generator) -> Arrays:
    d, c = opts["d"], opts["classes"]
    g = rng.standard_normal((c, d))
    means = opts["separation"] * g / np.linalg.norm(g, axis=1, keepdims=True)

    def draw(n: int):
        y = _balanced_labels(n, c, rng)
        return (means[y] + rng.standard_normal((n, d))).astype(np.float32), y

    x_tr, y_tr = draw(opts["n_train"])
    x_te, y_te = draw(opts["n_test"])
    return "classification", x_tr, y_tr, x_te, y_te, c


def _synthetic_regression(opts: dict[str, Any], rng: np.random.Generator) -> Arrays:
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


def _synthetic_image(opts: dict[str, Any], rng: np.random.Generator) -> Arrays:
    shape = (opts["channels"], opts["size"], opts["size"])
    c = opts["classes"]
    teacher = rng.standard_normal((math.prod(shape), c)).astype(np.float32)

    def draw(n: int):
        x = rng.standard_normal((n, *shape), dtype=np.float32)
        return x, np.argmax(x.reshape(n, -1) @ teacher, axis=1).astype(np.int64)

    x_tr, y_tr = draw(opts["n_train"])
    x_te, y_te = draw(opts["n_test"])
    return "classification", x_tr, y_tr, x_te, y_te, c


def _npz(opts: dict[str, Any], rng: np.random.Generator) -> Arrays:
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


def _cifar10(opts: dict[str, Any], rng: np.random.Generator) -> Arrays:
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

def _mnist1d(opts: dict[str, Any], rng: np.random.Generator) -> Arrays:
    """MNIST-1D (Greydanus & Kobak, ICML 2024) from the ``mnist1d`` package's offline
    generator ``make_dataset`` with its default transformations, seeded by ``seed``.

    ``make_dataset`` draws ``num_samples // 10`` signals per class, shuffles them, and
    standardises all of them with one global mean and std (the reference's recipe);
    the first ``n_train`` are the training set, the next ``n_test`` the test set, so the
    defaults 4000 / 1000 are exactly the reference's 80/20 split of 5000. Inputs are
    ``float32 [N, 40]``. It seeds numpy's and Python's global generators, whose states
    are restored afterwards. About 0.5 ms per example on one CPU core (2.3 s for 5000).
    """
    import random

    from mnist1d.data import get_dataset_args, make_dataset  # offline; never get_dataset

    n_train, n_test = opts["n_train"], opts["n_test"]
    args = get_dataset_args()
    args.num_samples = 10 * math.ceil((n_train + n_test) / 10)  # whole signals per class
    args.train_split = 1.0  # split below, by count
    args.seed = int(opts["seed"])
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    x = np.asarray(data["x"], dtype=np.float32)
    y = np.asarray(data["y"], dtype=np.int64)
    end = n_train + n_test
    return "classification", x[:n_train], y[:n_train], x[n_train:end], y[n_train:end], 10


LOADERS: dict[str, Callable[[dict[str, Any], np.random.Generator], Arrays]] = {
    "digits": _digits,
    "digits-image": _digits,
    "synthetic-classification": _synthetic_classification,
    "synthetic-regression": _synthetic_regression,
    "synthetic-image": _synthetic_image,
    "mnist1d": _mnist1d,
    "npz": _npz,
    "cifar10": _cifar10,
}
