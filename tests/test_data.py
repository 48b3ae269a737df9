"""Datasets: shapes, dtypes, seeded determinism, spec round trips, the digits split
against scikit-learn's data, .npz files, and CIFAR-10 from a fake directory in the
official python layout (read without executing pickled code)."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch

from curvature.data import (
    CIFAR10_FILES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    DATASETS,
    Dataset,
    batches,
    load_dataset,
    loader,
    parse_spec,
)

SYNTHETIC = [
    ("synthetic-classification:n_train=60,n_test=20,d=5,classes=3", (5,), 3),
    ("synthetic-regression:n_train=40,n_test=10,d=4,outputs=2", (4,), None),
    ("synthetic-image:n_train=12,n_test=4,channels=3,size=32,classes=5", (3, 32, 32), 5),
]


def _same(a: Dataset, b: Dataset) -> bool:
    return all(
        torch.equal(getattr(a, k), getattr(b, k))
        for k in ("x_train", "y_train", "x_test", "y_test")
    )


@pytest.mark.parametrize("spec, shape, classes", SYNTHETIC)
def test_synthetic_shapes_dtypes_and_seeding(spec, shape, classes):
    ds = load_dataset(spec)
    n_train, n_test = ds.spec["n_train"], ds.spec["n_test"]
    assert ds.input_shape == shape
    assert ds.x_train.shape == (n_train, *shape) and ds.x_test.shape == (n_test, *shape)
    assert ds.x_train.dtype == torch.float32
    if classes is None:
        assert ds.task == "regression" and ds.num_classes is None
        assert ds.y_train.dtype == torch.float32 and ds.y_train.shape == (n_train, 2)
        assert ds.num_outputs == 2 and isinstance(ds.loss_fn(), torch.nn.MSELoss)
    else:
        assert ds.task == "classification" and ds.num_classes == classes
        assert ds.y_train.dtype == torch.int64 and ds.y_train.shape == (n_train,)
        assert int(ds.y_train.min()) >= 0 and int(ds.y_train.max()) < classes
        assert isinstance(ds.loss_fn(), torch.nn.CrossEntropyLoss)
    # the canonical spec is JSON and rebuilds identical tensors; another seed differs
    spec2 = json.loads(json.dumps(ds.spec))
    assert _same(load_dataset(spec2), ds)
    assert load_dataset(spec2).spec == ds.spec
    assert not _same(load_dataset({**spec2, "seed": 1}), ds)
    d64 = ds.to(dtype=torch.float64)
    assert d64.x_train.dtype == torch.float64 and d64.spec == ds.spec
    assert d64.y_train.dtype == (torch.float64 if classes is None else torch.int64)
    torch.testing.assert_close(d64.x_test.float(), ds.x_test, rtol=0, atol=0)


def test_synthetic_classification_is_a_learnable_mixture():
    # nearest-class-mean on the training means classifies held-out points well above
    # chance for separated classes (and at chance for separation 0)
    def accuracy(sep: float) -> float:
        ds = load_dataset({"name": "synthetic-classification", "n_train": 600, "n_test": 600,
                           "d": 8, "classes": 3, "separation": sep, "seed": 3})
        means = torch.stack([ds.x_train[ds.y_train == c].mean(0) for c in range(3)])
        pred = torch.cdist(ds.x_test, means).argmin(1)
        return (pred == ds.y_test).float().mean().item()

    assert accuracy(4.0) > 0.9
    assert accuracy(0.0) < 0.5


def test_synthetic_regression_noise_level():
    # y = teacher(x) + noise * eps: doubling the noise leaves the teacher (same seed)
    # and changes the residual by the noise ratio
    a = load_dataset("synthetic-regression:n_train=4000,noise=0.0")
    b = load_dataset("synthetic-regression:n_train=4000,noise=0.5")
    torch.testing.assert_close(a.x_train, b.x_train)
    resid = b.y_train - a.y_train
    assert abs(resid.std().item() - 0.5) < 0.03
    assert a.y_train.std().item() > 0.1  # the teacher is not constant


def test_digits_split_matches_sklearn():
    from sklearn.datasets import load_digits

    raw = load_digits()
    ds = load_dataset("digits")
    img = load_dataset("digits-image")
    assert ds.x_train.shape == (1347, 64) and ds.x_test.shape == (450, 64)
    assert img.x_train.shape == (1347, 1, 8, 8) and img.input_shape == (1, 8, 8)
    assert ds.num_classes == 10 and ds.x_train.dtype == torch.float32
    # stratified: each class contributes round(25%) to the test set
    counts = np.bincount(raw.target)
    np.testing.assert_array_equal(np.bincount(ds.y_test.numpy()), np.round(0.25 * counts))
    np.testing.assert_array_equal(
        np.bincount(ds.y_train.numpy()) + np.bincount(ds.y_test.numpy()), counts
    )
    # same split and order in both views
    assert torch.equal(ds.y_train, img.y_train) and torch.equal(ds.y_test, img.y_test)
    # per-feature standardisation on the training set (constant pixels stay 0)
    x = ds.x_train.double()
    mean, std = x.mean(0), x.std(0, unbiased=False)
    assert mean.abs().max() < 1e-5
    nonconst = std > 0
    torch.testing.assert_close(std[nonconst], torch.ones_like(std[nonconst]), rtol=1e-5, atol=0)
    assert (x[:, ~nonconst] == 0).all()
    # global standardisation for images: mean 0, std 1 over all training pixels
    assert abs(img.x_train.double().mean().item()) < 1e-5
    assert abs(img.x_train.double().std(unbiased=False).item() - 1) < 1e-5
    # both are affine images of the same raw pixels: per feature, the image value is
    # an exact affine function of the standardised feature
    xi = img.x_train.reshape(-1, 64).double()
    for j in np.flatnonzero(nonconst.numpy())[:10]:
        a = torch.stack([x[:, j], torch.ones_like(x[:, j])], 1)
        coef = torch.linalg.lstsq(a, xi[:, j:j + 1]).solution
        assert (a @ coef - xi[:, j:j + 1]).abs().max() < 1e-4
    # a global affine map of the 17 grey levels 0..16: undo it and the train + test
    # rows are exactly sklearn's rows
    both = torch.cat([img.x_train, img.x_test]).reshape(-1, 64).double()
    levels = torch.unique(both)
    assert len(levels) == 17
    recovered = torch.round((both - levels[0]) / (levels[-1] - levels[0]) * 16)
    torch.testing.assert_close((both - levels[0]) / (levels[-1] - levels[0]) * 16, recovered,
                               rtol=0, atol=1e-4)
    rows = sorted(map(tuple, recovered.numpy()))
    assert rows == sorted(map(tuple, raw.data.astype(np.float64)))


def test_digits_options_and_subsets():
    ds = load_dataset("digits:test_fraction=0.5,n_train=100,n_test=50,seed=3")
    assert len(ds.x_train) == 100 and len(ds.x_test) == 50
    assert _same(ds, load_dataset(ds.spec))
    assert not torch.equal(load_dataset("digits:seed=1").y_train, load_dataset("digits").y_train)
    with pytest.raises(ValueError, match="n_train=5000 but only 1347"):
        load_dataset("digits:n_train=5000")
    with pytest.raises(ValueError, match="test_fraction must be in"):
        load_dataset({"name": "digits", "test_fraction": 1.5})


def test_batches_and_loader():
    x = torch.arange(10.0).reshape(10, 1)
    y = torch.arange(10)
    bs = batches(x, y, 4)
    assert [len(b[0]) for b in bs] == [4, 4, 2]
    assert torch.equal(torch.cat([b[0] for b in bs]), x)
    assert torch.equal(torch.cat([b[1] for b in bs]), y)
    assert len(batches(x, y)) == 1 and batches(x, y)[0][0] is not None
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        batches(x, y, 0)
    with pytest.raises(ValueError, match="same leading"):
        batches(x, y[:3], 2)

    def epochs(seed):
        dl = loader(x, y, 3, shuffle=True, seed=seed)
        return [torch.cat([b[1] for b in dl]).tolist() for _ in range(2)]

    e0 = epochs(0)
    assert e0 == epochs(0)
    assert e0 != epochs(1) and e0[0] != e0[1]
    assert sorted(e0[0]) == list(range(10))
    assert [b[1].tolist() for b in loader(x, y, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert len(list(loader(x, y, 4, drop_last=True))) == 2
    ds = load_dataset("synthetic-classification:n_train=10,n_test=5")
    assert [len(b[1]) for b in ds.train_batches(4)] == [4, 4, 2]
    assert len(ds.test_batches()) == 1


def test_spec_parsing():
    spec = parse_spec("synthetic-classification:n=100,d=5,num_classes=3,separation=1.5")
    assert spec == {"name": "synthetic-classification", "seed": 0, "n_train": 100,
                    "n_test": 256, "d": 5, "classes": 3, "separation": 1.5}
    assert parse_spec(spec) == spec
    assert parse_spec("cifar10:/data/c10,n_train=10")["root"] == "/data/c10"
    assert parse_spec("runs/x.npz")["path"] == os.path.abspath("runs/x.npz")
    assert parse_spec("npz:runs/x.npz,task=regression")["task"] == "regression"
    assert parse_spec("runs/x.npz,n_train=7")["n_train"] == 7
    assert set(DATASETS) >= {"digits", "digits-image", "synthetic-classification",
                             "synthetic-regression", "synthetic-image", "npz", "cifar10"}


@pytest.mark.parametrize(
    "spec, match",
    [
        ("mnist", "unknown dataset 'mnist'"),
        ("digits:foo=1", "dataset 'digits' has no option 'foo'"),
        ("digits:n_train", "expected key=value"),
        ("digits:n_train=-3", "n_train must be a positive integer"),
        ("synthetic-image:size=2.5", "size must be a positive integer"),
        ("digits:seed=abc", "seed must be an integer"),
        ("synthetic-regression:noise=-1", "noise must be a non-negative number"),
        ("synthetic-image:n_train=none", "n_train must be a positive integer"),
        ("cifar10:/x,normalize=1", "normalize must be true or false"),
        ({"seed": 1}, "needs a 'name' key"),
        ("cifar10", "needs option 'root'"),
        ("", "non-empty string"),
        (3, "non-empty string or a dict"),
    ],
)
def test_bad_specs_are_named(spec, match):
    with pytest.raises(ValueError, match=match):
        load_dataset(spec)


# ----------------------------------------------------------------------------- npz


def test_npz_split_and_explicit_test(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 2, 3))
    y = np.arange(50) % 4
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ds = load_dataset(str(tmp_path / "d.npz"))
    assert ds.task == "classification" and ds.num_classes == 4
    assert ds.input_shape == (2, 3) and len(ds.x_train) == 40 and len(ds.x_test) == 10
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    # the split is a partition of the file's rows
    rows = torch.cat([ds.x_train, ds.x_test]).reshape(50, -1).numpy()
    assert sorted(map(tuple, rows)) == sorted(map(tuple, x.reshape(50, -1).astype(np.float32)))
    assert _same(ds, load_dataset(ds.spec))

    np.savez(tmp_path / "r.npz", x=x[:30], y=x[:30, 0, 0], x_test=x[30:], y_test=x[30:, 0, 0])
    r = load_dataset({"name": "npz", "path": str(tmp_path / "r.npz")})
    assert r.task == "regression" and r.y_train.shape == (30, 1) and len(r.x_test) == 20
    torch.testing.assert_close(r.y_test[:, 0], r.x_test[:, 0, 0])


def test_npz_errors_and_no_pickle(tmp_path):
    with pytest.raises(FileNotFoundError, match="arrays 'x' and 'y'"):
        load_dataset(str(tmp_path / "absent.npz"))
    np.savez(tmp_path / "bad.npz", inputs=np.zeros((3, 2)), y=np.zeros(3))
    with pytest.raises(ValueError, match=r"needs arrays 'x' and 'y'.*found \['inputs', 'y'\]"):
        load_dataset(str(tmp_path / "bad.npz"))
    np.savez(tmp_path / "len.npz", x=np.zeros((3, 2)), y=np.zeros(4))
    with pytest.raises(ValueError, match="same number of examples"):
        load_dataset(str(tmp_path / "len.npz"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="not a .npz file readable without pickle"):
        load_dataset(str(tmp_path / "junk.npz"))
    # an object array would need pickle; a hostile object inside is never run
    marker = tmp_path / "pwned"
    hostile = np.empty(3, dtype=object)
    hostile[0] = _Hostile(str(marker))
    np.savez(tmp_path / "evil.npz", x=np.zeros((3, 2)), y=hostile)
    with pytest.raises(ValueError, match="without pickle"):
        load_dataset(str(tmp_path / "evil.npz"))
    assert not marker.exists()


class _Hostile:
    """Unpickling this object runs ``os.system("touch <marker>")``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# --------------------------------------------------------------------------- CIFAR


def _pixels(index: int) -> np.ndarray:
    """A distinct uint8 image [3, 32, 32] for example ``index``: value = c*80 + h + w + index."""
    c, h, w = np.meshgrid(np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    return ((c * 80 + h + w + index) % 256).astype(np.uint8)


def _write_cifar(root, per_batch=3, n_test=4, protocol=2, skip=()):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    idx = 0
    for name in CIFAR10_FILES:
        if name in skip:
            continue
        n = n_test if name == "test_batch" else per_batch
        images = np.stack([_pixels(idx + i) for i in range(n)])
        batch = {  # the official files have bytes keys (pickled by Python 2)
            b"batch_label": name.encode(),
            b"labels": [int((idx + i) % 10) for i in range(n)],
            b"data": images.reshape(n, 3072),
            b"filenames": [f"img{idx + i}.png".encode() for i in range(n)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
        idx += n
    return folder


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_fake_directory(tmp_path, protocol):
    _write_cifar(tmp_path, protocol=protocol)
    ds = load_dataset(f"cifar10:{tmp_path}")
    assert ds.x_train.shape == (15, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    assert ds.num_classes == 10 and ds.x_train.dtype == torch.float32
    # training batches 1..5 in order, then the test batch
    assert ds.y_train.tolist() == [i % 10 for i in range(15)]
    assert ds.y_test.tolist() == [i % 10 for i in range(15, 19)]
    mean = torch.tensor(CIFAR10_MEAN).reshape(3, 1, 1)
    std = torch.tensor(CIFAR10_STD).reshape(3, 1, 1)
    for i in (0, 7, 14):
        pixels = torch.round((ds.x_train[i] * std + mean) * 255)
        assert torch.equal(pixels.to(torch.uint8), torch.from_numpy(_pixels(i))), i
    raw = load_dataset({"name": "cifar10", "root": str(tmp_path / "cifar-10-batches-py"),
                        "normalize": False})
    torch.testing.assert_close(raw.x_test[2] * 255, torch.from_numpy(_pixels(17)).float())
    # seeded subsets, and the spec rebuilds them
    sub = load_dataset(f"cifar10:{tmp_path},n_train=5,n_test=2,seed=4")
    assert len(sub.x_train) == 5 and len(sub.y_test) == 2
    assert _same(sub, load_dataset(json.loads(json.dumps(sub.spec))))


def test_cifar10_missing_directory_names_layout(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset(f"cifar10:{tmp_path / 'nowhere'}")
    msg = str(err.value)
    assert "cifar-10-batches-py" in msg and "data_batch_1" in msg and "test_batch" in msg
    assert "Nothing is downloaded" in msg
    _write_cifar(tmp_path, skip=("data_batch_4",))
    with pytest.raises(FileNotFoundError, match="missing in .*: data_batch_4\\. "):
        load_dataset(f"cifar10:{tmp_path}")


def test_cifar10_hostile_pickle_is_not_executed(tmp_path):
    folder = _write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": _Hostile(str(marker)), b"labels": []}, protocol=2)
    (folder / "data_batch_3").write_bytes(payload)
    with pytest.raises(ValueError, match="refused to load global (posix|os|nt).system"):
        load_dataset(f"cifar10:{tmp_path}")
    assert not marker.exists()
    pickle.loads(payload)  # the payload is real: an unrestricted unpickler runs it
    assert marker.exists()


def test_cifar10_wrong_contents(tmp_path):
    folder = _write_cifar(tmp_path)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(ValueError, match=r"test_batch: not a CIFAR-10 python batch"):
        load_dataset(f"cifar10:{tmp_path}")
    (folder / "test_batch").write_bytes(b"\x80\x02}q\x00")  # truncated pickle
    with pytest.raises(ValueError, match="not a CIFAR-10 python batch"):
        load_dataset(f"cifar10:{tmp_path}")
