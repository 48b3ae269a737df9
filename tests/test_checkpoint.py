"""Checkpoints: exact round trips in both formats, atomic writes, bare state dicts,
and a clear CheckpointError for every bad input -- hostile pickles and hostile
factories included, which must never run."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import stat
import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from curvature.checkpoint import (
    CheckpointError,
    CheckpointNotFoundError,
    LoadedCheckpoint,
    load_checkpoint,
    save_checkpoint,
)
from curvature.data import load_dataset
from curvature.models import build_model

SUFFIXES = [".pt", ".safetensors"]


def _trained_cnn():
    """A CNN with BatchNorm whose running statistics differ from their initial values."""
    torch.manual_seed(0)
    model = build_model("cnn", channels=[4, 4], batchnorm=True, dropout=0.2)
    model.train()
    with torch.no_grad():
        model(torch.randn(32, 1, 8, 8))
    return model, {"channels": [4, 4], "batchnorm": True, "dropout": 0.2}


def _assert_same_state(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_round_trip_is_exact(tmp_path, suffix):
    model, kwargs = _trained_cnn()
    ds = load_dataset("digits-image:n_train=64,n_test=32")
    meta = {
        "step": 120,
        "optimizer": "sam",
        "hyperparameters": {"lr": 0.05, "rho": 0.05, "betas": (0.9, 0.999)},
        "seed": 7,
        "metrics": {"train_loss": torch.tensor(0.25), "test_acc": np.float32(0.875),
                    "diverged_loss": float("nan")},
    }
    path = save_checkpoint(tmp_path / f"run{suffix}", model, factory="cnn",
                           factory_kwargs=kwargs, data_spec=ds, metadata=meta)
    assert path == tmp_path / f"run{suffix}"
    assert [p.name for p in tmp_path.iterdir()] == [f"run{suffix}"]  # no temp file left

    ckpt = load_checkpoint(path)
    assert isinstance(ckpt, LoadedCheckpoint)
    assert ckpt.format == suffix[1:] and not ckpt.bare
    assert ckpt.factory == "curvature.models:cnn"
    assert ckpt.factory_kwargs == kwargs
    assert ckpt.data_spec == ds.spec
    m = ckpt.metadata
    assert m["step"] == 120 and m["optimizer"] == "sam" and m["seed"] == 7
    assert m["hyperparameters"] == {"lr": 0.05, "rho": 0.05, "betas": [0.9, 0.999]}
    assert m["metrics"]["train_loss"] == 0.25 and m["metrics"]["test_acc"] == 0.875
    assert np.isnan(m["metrics"]["diverged_loss"])
    # identical tensors (parameters and BatchNorm buffers), identical outputs
    _assert_same_state(ckpt.state_dict, model.state_dict())
    _assert_same_state(ckpt.model.state_dict(), model.state_dict())
    assert not ckpt.model.training
    model.eval()
    assert torch.equal(ckpt.model(ds.x_test), model(ds.x_test))
    # the recorded dataset spec rebuilds the same data
    again = load_dataset(ckpt.data_spec)
    assert torch.equal(again.x_test, ds.x_test) and torch.equal(again.y_train, ds.y_train)


def test_pt_checkpoint_is_plain_weights_only_data(tmp_path):
    model, kwargs = _trained_cnn()
    path = save_checkpoint(tmp_path / "a.pt", model, factory="curvature.models:cnn",
                           factory_kwargs=kwargs, metadata={"step": 1})
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "curvature-checkpoint" and raw["format_version"] == 1
    assert raw["factory"] == "curvature.models:cnn" and raw["data_spec"] is None
    _assert_same_state(raw["state_dict"], model.state_dict())

    def plain(obj):
        if isinstance(obj, dict):
            return all(isinstance(k, str) and plain(v) for k, v in obj.items())
        if isinstance(obj, list):
            return all(plain(v) for v in obj)
        return obj is None or isinstance(obj, (str, int, float, bool, torch.Tensor))

    assert plain(raw)
    # the pickle inside references only torch's tensor-rebuild machinery
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    import pickletools

    globals_ = {arg for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}
    assert all(g.startswith(("torch", "collections OrderedDict")) for g in globals_), globals_


def test_safetensors_checkpoint_is_standard(tmp_path):
    model, kwargs = _trained_cnn()
    path = save_checkpoint(tmp_path / "a.safetensors", model, factory="cnn",
                           factory_kwargs=kwargs)
    _assert_same_state(dict(sorted(load_file(path).items())),
                       dict(sorted(model.state_dict().items())))
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        header = json.loads(f.metadata()["curvature"])
    assert header["factory"] == "curvature.models:cnn" and header["factory_kwargs"] == kwargs


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_tied_weights_and_transformer_round_trip(tmp_path, suffix):
    torch.manual_seed(0)
    model = build_model("vit", image_size=8, patch_size=4, in_channels=1, dim=8, heads=2)
    path = save_checkpoint(tmp_path / f"v{suffix}", model, factory="vit",
                           factory_kwargs={"image_size": 8, "patch_size": 4, "in_channels": 1,
                                           "dim": 8, "heads": 2})
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(load_checkpoint(path).model(x), model.eval()(x))
    # tied weights (shared storage, which safetensors refuses) are saved as copies
    kw = {"in_features": 3, "hidden": [3], "num_classes": 3}
    tied = build_model("mlp", **kw)
    tied[3].weight = tied[1].weight
    p2 = save_checkpoint(tmp_path / f"t{suffix}", tied, factory="mlp", factory_kwargs=kw)
    loaded = _load_state(p2)
    assert torch.equal(loaded["1.weight"], loaded["3.weight"])
    x = torch.randn(4, 3)
    assert torch.equal(load_checkpoint(p2).model(x), tied.eval()(x))


def _unchecked(path):
    """The raw dict of a .pt checkpoint without its checksum (optional), to craft
    edited files from it."""
    raw = torch.load(path, weights_only=True)
    assert len(raw.pop("sha256")) == 64
    return raw


def _load_state(path):
    if str(path).endswith(".safetensors"):
        return load_file(path)
    return torch.load(path, weights_only=True)["state_dict"]


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    model, kwargs = _trained_cnn()
    path = save_checkpoint(tmp_path / "a.pt", model, factory="cnn", factory_kwargs=kwargs,
                           metadata={"step": 1})
    os.chmod(path, 0o640)
    before = path.read_bytes()

    def boom(*args, **kw):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, factory="cnn", factory_kwargs=kwargs, metadata={"step": 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]
    monkeypatch.undo()
    save_checkpoint(path, model, factory="cnn", factory_kwargs=kwargs, metadata={"step": 2})
    assert load_checkpoint(path).metadata["step"] == 2
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # overwrite keeps permissions
    new = save_checkpoint(tmp_path / "sub" / "b.pt", model, factory="cnn", factory_kwargs=kwargs)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(new.stat().st_mode) == 0o666 & ~umask


def test_save_rejects_non_json_and_unknown_factory(tmp_path):
    model = build_model("mlp")
    with pytest.raises(CheckpointError, match=r"metadata\['opt'\]: a object is not JSON-able"):
        save_checkpoint(tmp_path / "a.pt", model, factory="mlp", metadata={"opt": object()})
    with pytest.raises(CheckpointError, match=r"metadata\['m'\]: key 3 is not a string"):
        save_checkpoint(tmp_path / "a.pt", model, factory="mlp", metadata={"m": {3: 1}})
    with pytest.raises(CheckpointError, match=r"factory_kwargs\['w'\]"):
        save_checkpoint(tmp_path / "a.pt", model, factory="mlp",
                        factory_kwargs={"w": torch.zeros(3)})
    with pytest.raises(CheckpointError, match="has no attribute 'mlq'"):
        save_checkpoint(tmp_path / "a.pt", model, factory="curvature.models:mlq")
    with pytest.raises(CheckpointError, match="must be an nn.Module"):
        save_checkpoint(tmp_path / "a.pt", {"w": torch.zeros(1)}, factory="mlp")
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------ bare state dicts


@pytest.mark.parametrize("layout", ["pt", "pt-nested", "safetensors"])
def test_bare_state_dict_needs_model_factory(tmp_path, layout):
    model, kwargs = _trained_cnn()
    if layout == "safetensors":
        path = tmp_path / "bare.safetensors"
        save_file(model.state_dict(), path)
    else:
        path = tmp_path / "bare.pt"
        sd = model.state_dict()
        torch.save({"state_dict": sd, "epoch": 3} if layout == "pt-nested" else sd, path)
    with pytest.raises(CheckpointError, match="--model package.module:function"):
        load_checkpoint(path)
    ckpt = load_checkpoint(path, model_factory="cnn", model_kwargs=kwargs)
    assert ckpt.bare and ckpt.factory == "curvature.models:cnn" and ckpt.data_spec is None
    assert ckpt.metadata == {} and ckpt.factory_kwargs == kwargs
    _assert_same_state(ckpt.model.state_dict(), model.state_dict())


def test_model_factory_override_uses_recorded_kwargs_for_the_same_factory(tmp_path):
    model, kwargs = _trained_cnn()
    path = save_checkpoint(tmp_path / "a.pt", model, factory="curvature.models:cnn",
                           factory_kwargs=kwargs)
    ckpt = load_checkpoint(path, model_factory="cnn")  # short name, same callable
    assert ckpt.factory_kwargs == kwargs
    ckpt = load_checkpoint(path, model_factory="cnn", model_kwargs={"activation": "tanh"})
    assert ckpt.factory_kwargs == {**kwargs, "activation": "tanh"}
    assert isinstance(ckpt.model[2], nn.Tanh)
    with pytest.raises(CheckpointError, match="missing keys: .*unexpected keys"):
        load_checkpoint(path, model_factory="mlp")  # another factory: recorded kwargs dropped


# ------------------------------------------------------------------------ bad inputs


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist") as err:
        load_checkpoint(tmp_path / "nope.pt")
    assert isinstance(err.value, FileNotFoundError)
    assert isinstance(err.value, CheckpointNotFoundError)
    with pytest.raises(CheckpointError, match="is not a file"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_truncated_and_corrupt_files(tmp_path, suffix):
    model, kwargs = _trained_cnn()
    good = save_checkpoint(tmp_path / f"good{suffix}", model, factory="cnn",
                           factory_kwargs=kwargs).read_bytes()
    cases = {
        "empty": (b"", "empty file"),
        "half": (good[: len(good) // 2], "corrupt or truncated|truncated safetensors"),
        "nearly": (good[:-7], "corrupt or truncated|truncated safetensors"),
        "garbage": (b"hello, I am not a checkpoint" * 10, "not a checkpoint|corrupt safetensors"),
    }
    for name, (blob, match) in cases.items():
        p = tmp_path / f"{name}{suffix}"
        p.write_bytes(blob)
        with pytest.raises(CheckpointError, match=match):
            load_checkpoint(p)
    if suffix == ".safetensors":
        # a valid length prefix followed by a broken JSON header
        header = b'{"a": [1, 2'
        p = tmp_path / f"badheader{suffix}"
        p.write_bytes(len(header).to_bytes(8, "little") + header)
        with pytest.raises(CheckpointError, match="corrupt or truncated safetensors"):
            load_checkpoint(p)
    else:
        # a flipped bit in the tensor data: the zip reader does not notice, the checksum does
        with zipfile.ZipFile(tmp_path / f"good{suffix}") as z:
            info = next(i for i in z.infolist() if i.filename.endswith("/data/0"))
        blob = bytearray(good)
        local = info.header_offset  # local file header: name and extra lengths at +26, +28
        offset = local + 30 + int.from_bytes(blob[local + 26:local + 28], "little") + \
            int.from_bytes(blob[local + 28:local + 30], "little")
        blob[offset + 3] ^= 0x01
        p = tmp_path / f"flipped{suffix}"
        p.write_bytes(bytes(blob))
        with pytest.raises(CheckpointError, match="do not match the SHA-256 checksum"):
            load_checkpoint(p)
    # same for safetensors: flip a bit in the last tensor byte
    blob = bytearray(good)
    if suffix == ".safetensors":
        blob[-1] ^= 0x01
        p = tmp_path / f"flipped{suffix}"
        p.write_bytes(bytes(blob))
        with pytest.raises(CheckpointError, match="do not match the SHA-256 checksum"):
            load_checkpoint(p)


def test_not_a_checkpoint_objects(tmp_path):
    p = tmp_path / "a.pt"
    torch.save([1, 2, 3], p)
    with pytest.raises(CheckpointError, match="holds a list"):
        load_checkpoint(p)
    torch.save({"epoch": 3, "lr": 0.1}, p)
    with pytest.raises(CheckpointError, match="a dict with keys 'epoch', 'lr'"):
        load_checkpoint(p)
    model, kwargs = _trained_cnn()
    save_checkpoint(p, model, factory="cnn", factory_kwargs=kwargs)
    raw = _unchecked(p)
    torch.save({**raw, "format_version": 99}, p)
    with pytest.raises(CheckpointError, match="format version 99 is not supported"):
        load_checkpoint(p)
    torch.save({**raw, "state_dict": [1]}, p)
    with pytest.raises(CheckpointError, match="'state_dict' is not name -> tensor"):
        load_checkpoint(p)
    # an edited header under the original checksum is detected; without one it loads
    full = torch.load(save_checkpoint(p, model, factory="cnn", factory_kwargs=kwargs,
                                      metadata={"step": 5}), weights_only=True)
    torch.save({**full, "metadata": {"step": 6}}, p)
    with pytest.raises(CheckpointError, match="do not match the SHA-256 checksum"):
        load_checkpoint(p)
    full.pop("sha256")
    torch.save({**full, "metadata": {"step": 6}}, p)
    assert load_checkpoint(p).metadata == {"step": 6}


class _Hostile:
    """Unpickling this object runs ``os.system("touch <marker>")``."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("container", ["torch-zip", "raw-pickle", "legacy-torch", "nested"])
def test_hostile_pickle_is_never_executed(tmp_path, container):
    marker = tmp_path / "pwned"
    evil = _Hostile(marker)
    p = tmp_path / "evil.pt"
    if container == "torch-zip":
        torch.save(evil, p)
    elif container == "raw-pickle":
        p.write_bytes(pickle.dumps(evil, protocol=2))
    elif container == "legacy-torch":
        buf = io.BytesIO()
        torch.save(evil, buf, _use_new_zipfile_serialization=False)
        p.write_bytes(buf.getvalue())
    else:  # a real-looking checkpoint with the payload hidden in the metadata
        torch.save({"format": "curvature-checkpoint", "format_version": 1,
                    "factory": "curvature.models:mlp", "factory_kwargs": {},
                    "metadata": {"note": evil}, "state_dict": build_model("mlp").state_dict()},
                   p)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(p)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(p, model_factory="mlp")
    assert not marker.exists()
    # the file really is hostile: an unrestricted load runs the payload
    with contextlib.suppress(RuntimeError):  # raw pickle: "Invalid magic number" after it ran
        torch.load(p, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_hostile_factory_is_not_called(tmp_path, suffix):
    marker = tmp_path / "pwned"
    model = build_model("mlp")
    for factory, kwargs in [
        ("subprocess:run", {"args": ["touch", str(marker)]}),
        ("os:system", {"command": f"touch {marker}"}),
        # a trampoline inside the zoo module: build_model would call subprocess.run
        ("curvature.models:build_model", {"factory": "subprocess:run",
                                          "args": ["touch", str(marker)]}),
        ("curvature.models:resolve_factory", {"factory": "os:system"}),
    ]:
        p = save_checkpoint(tmp_path / f"evil{suffix}", model, factory=factory,
                            factory_kwargs=kwargs)
        with pytest.raises(CheckpointError, match=f"names the model factory '{factory}', "
                                                  "which is neither a zoo model"):
            load_checkpoint(p)
    assert not marker.exists()
    # naming a real model factory explicitly is the way to load such a file
    ckpt = load_checkpoint(p, model_factory="mlp")
    _assert_same_state(ckpt.model.state_dict(), model.state_dict())


USER_MODULE = """
import pathlib
from torch import nn
from curvature.models import build_model  # imported, not defined here: never trusted

pathlib.Path({marker!r}).write_text("imported")


def net(width: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Linear(2, width), nn.Tanh(), nn.Linear(width, 1))


def helper(width=3):  # no annotation: not a declared model factory
    return net(width)
"""


def test_trusted_modules_for_user_factories(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "user_nets_ckpt.py").write_text(USER_MODULE.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "user_nets_ckpt", raising=False)
    model = nn.Sequential(nn.Linear(2, 5), nn.Tanh(), nn.Linear(5, 1))
    p = save_checkpoint(tmp_path / "u.pt", model, factory="user_nets_ckpt:net",
                        factory_kwargs={"width": 5})
    marker.unlink()  # save_checkpoint resolved (imported) it; now start clean
    monkeypatch.delitem(__import__("sys").modules, "user_nets_ckpt")
    with pytest.raises(CheckpointError, match=r"trusted_modules=\['user_nets_ckpt'\]"):
        load_checkpoint(p)
    assert not marker.exists()  # an untrusted module is not even imported
    ckpt = load_checkpoint(p, trusted_modules=["user_nets_ckpt"])
    assert marker.exists() and ckpt.factory_kwargs == {"width": 5}
    x = torch.randn(4, 2)
    assert torch.equal(ckpt.model(x), model(x))
    # explicit model_factory: the recorded kwargs are used with it
    assert load_checkpoint(p, model_factory="user_nets_ckpt:net").factory_kwargs == {"width": 5}
    raw = _unchecked(p)
    for factory in ("user_nets_ckpt:helper", "user_nets_ckpt:build_model"):
        torch.save({**raw, "factory": factory}, p)
        with pytest.raises(CheckpointError, match="not a model factory defined in its module"):
            load_checkpoint(p, trusted_modules=["user_nets_ckpt"])


def test_unknown_recorded_factory(tmp_path):
    model = build_model("mlp")
    p = save_checkpoint(tmp_path / "a.pt", model, factory="mlp")
    raw = _unchecked(p)
    torch.save({**raw, "factory": "no_such_pkg.nets:mlp"}, p)
    with pytest.raises(CheckpointError, match=r"unknown model factory \(recorded in .*"
                                              r"cannot import module 'no_such_pkg.nets'"):
        load_checkpoint(p, trusted_modules=["no_such_pkg.nets"])
    torch.save({**raw, "factory": "curvature.models:mlq"}, p)
    with pytest.raises(CheckpointError, match="'curvature.models:mlq', which is neither a zoo"):
        load_checkpoint(p)
    with pytest.raises(CheckpointError, match=r"unknown model factory \(given\).*has no "
                                              r"attribute 'mlq'"):
        load_checkpoint(p, model_factory="curvature.models:mlq")
    with pytest.raises(CheckpointError, match=r"unknown model factory \(given\)"):
        load_checkpoint(p, model_factory="nonexistent")
    torch.save({**raw, "factory": "mlp"}, p)  # a short name is read as the zoo factory
    assert load_checkpoint(p).factory == "curvature.models:mlp"
    torch.save({**raw, "factory_kwargs": {"hidden": [32], "widht": 3}}, p)
    with pytest.raises(CheckpointError, match="cannot rebuild the model .* 'widht'"):
        load_checkpoint(p)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_state_dict_mismatch_lists_names(tmp_path, suffix):
    torch.manual_seed(0)
    model = build_model("mlp", hidden=[32])
    sd = model.state_dict()
    sd["extra.weight"] = torch.zeros(2)
    del sd["3.bias"]
    sd["1.weight"] = torch.zeros(16, 64)
    path = tmp_path / f"bad{suffix}"
    if suffix == ".pt":
        torch.save(sd, path)
    else:
        save_file(sd, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, model_factory="mlp")
    msg = str(err.value)
    assert "does not match the model" in msg
    assert "missing keys: 3.bias" in msg
    assert "unexpected keys: extra.weight" in msg
    assert "shape mismatches: 1.weight (checkpoint [16, 64], model [32, 64])" in msg


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_damaged_files_fail_cleanly_or_load_exactly(tmp_path, suffix):
    """Fuzz: truncations and single bit flips anywhere in the file either raise
    CheckpointError or (flips in bytes that carry nothing) load the exact content."""
    import random

    model, kwargs = _trained_cnn()
    meta = {"a": [1, 2, 3], "lr": 0.1}
    good = save_checkpoint(tmp_path / f"g{suffix}", model, factory="cnn",
                           factory_kwargs=kwargs, metadata=meta).read_bytes()
    rng = random.Random(0)
    blobs = [good[:k] for k in rng.sample(range(1, len(good)), 40)]
    for _ in range(80):
        b = bytearray(good)
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        blobs.append(bytes(b))
    p = tmp_path / f"c{suffix}"
    errors = 0
    for blob in blobs:
        p.write_bytes(blob)
        try:
            ckpt = load_checkpoint(p)
        except CheckpointError:
            errors += 1
            continue
        _assert_same_state(ckpt.model.state_dict(), model.state_dict())
        assert ckpt.metadata == meta and ckpt.factory_kwargs == kwargs
    assert errors >= 40  # every truncation at least


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("suffix", SUFFIXES)
def test_map_location_cuda(tmp_path, suffix):
    model, kwargs = _trained_cnn()
    path = save_checkpoint(tmp_path / f"a{suffix}", model, factory="cnn", factory_kwargs=kwargs)
    ckpt = load_checkpoint(path, map_location="cuda")
    assert all(t.is_cuda for t in ckpt.state_dict.values())
    assert all(t.is_cuda for t in ckpt.model.state_dict().values())
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(ckpt.model(x.cuda()).cpu(), model.eval()(x))
