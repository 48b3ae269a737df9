"""Model zoo: shapes, parameter counts against closed forms, attention against
torch's reference implementation, Hessian-vector products through every
architecture, and the factory resolution used by checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import curvature as cv
from curvature import models
from curvature.models import (
    MODELS,
    ModelFactoryError,
    build_model,
    count_parameters,
    default_kwargs,
    is_model_factory,
    resolve_factory,
)

# (short name, kwargs, input shape of one example) -- small but real configurations
ZOO = [
    ("mlp", {}, (64,)),
    ("mlp", {"hidden": [16, 8], "activation": "gelu", "batchnorm": True, "dropout": 0.1}, (64,)),
    ("cnn", {}, (1, 8, 8)),
    ("cnn", {"in_channels": 3, "input_size": 32, "batchnorm": True, "dropout": 0.2,
             "hidden": [16]}, (3, 32, 32)),
    ("resnet20", {"width": 4}, (3, 32, 32)),
    ("resnet20", {"width": 2, "shortcut": "B", "in_channels": 1}, (1, 8, 8)),
    ("resnet", {"depth": 8, "width": 4, "batchnorm": False}, (3, 16, 16)),
    ("vgg", {}, (3, 32, 32)),
    ("vgg", {"cfg": [8, "M", 8, "M"], "in_channels": 1, "input_size": 8, "hidden": [],
             "batchnorm": False, "dropout": 0.5}, (1, 8, 8)),
    ("vit", {"dim": 16, "heads": 2, "depth": 1}, (3, 32, 32)),
    ("vit", {"image_size": 8, "patch_size": 2, "in_channels": 1, "pool": "mean", "dim": 8,
             "heads": 2}, (1, 8, 8)),
    ("cnn1d", {}, (40,)),
    ("cnn1d", {"in_channels": 2, "input_length": 17, "channels": [4, 6], "kernel_size": 3,
               "hidden": [8], "dropout": 0.1, "activation": "tanh"}, (2, 17)),
    ("transformer", {}, (8, 8)),
    ("transformer", {"pool": "cls", "depth": 2}, (1, 8, 8)),
]


@pytest.mark.parametrize("name, kwargs, shape", ZOO, ids=[f"{z[0]}-{i}" for i, z in enumerate(ZOO)])
def test_zoo_forward_shapes_and_seeding(name, kwargs, shape):
    torch.manual_seed(0)
    model = build_model(name, **kwargs)
    x = torch.randn(5, *shape)
    model.eval()
    out = model(x)
    num_classes = kwargs.get("num_classes", 10)
    assert out.shape == (5, num_classes)
    assert torch.isfinite(out).all()
    # kwargs survive a JSON round trip (tuples become lists) and seeding reproduces weights
    torch.manual_seed(0)
    again = build_model(MODELS[name], **json.loads(json.dumps(kwargs))).eval()
    assert again.state_dict().keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    torch.manual_seed(1)
    other = build_model(name, **kwargs)
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), other.parameters()))


def test_default_kwargs_fit_every_model_to_digits_and_cifar_shapes():
    for name in MODELS:
        shapes = {"mlp": [(64,), (3, 32, 32)], "cnn1d": [(40,), (3, 40)]}
        for shape in shapes.get(name, [(1, 8, 8), (3, 32, 32)]):
            if name == "transformer" and shape == (3, 32, 32):
                continue  # read as one token of 3072 features: valid but pointless here
            kw = default_kwargs(name, shape, 7)
            if name in ("vgg", "resnet"):
                kw["width" if name == "resnet" else "cfg"] = 2 if name == "resnet" else [4, "M"]
            model = build_model(name, **kw).eval()
            assert model(torch.randn(2, *shape)).shape == (2, 7), (name, shape)
    with pytest.raises(ValueError, match="square images"):
        default_kwargs("cnn", (64,), 10)
    with pytest.raises(ValueError, match="signals"):
        default_kwargs("cnn1d", (1, 8, 8), 10)


def _resnet_param_count(depth: int, width: int, in_channels: int, num_classes: int) -> int:
    """Closed form for the option-A CIFAR ResNet with BatchNorm (2 params per channel)."""
    n = (depth - 2) // 6
    total = in_channels * width * 9 + 2 * width  # stem conv (no bias) + BN
    c = width
    for c_out in (width, 2 * width, 4 * width):
        for _ in range(n):
            total += c * c_out * 9 + 2 * c_out + c_out * c_out * 9 + 2 * c_out
            c = c_out
    return total + c * num_classes + num_classes


def test_parameter_counts_match_closed_forms():
    assert count_parameters(models.mlp()) == 64 * 32 + 32 + 32 * 10 + 10
    assert count_parameters(models.mlp(hidden=[])) == 64 * 10 + 10
    # ResNet-20 of He et al. is "0.27M" parameters
    n20 = count_parameters(models.resnet20())
    assert n20 == _resnet_param_count(20, 16, 3, 10)
    assert 0.265e6 < n20 < 0.275e6
    assert count_parameters(models.resnet(depth=32, width=4)) == _resnet_param_count(32, 4, 3, 10)
    # cnn1d defaults: three conv1d (kernel 5, stride 2) 40 -> 20 -> 10 -> 5, linear(32*5 -> 10)
    assert count_parameters(models.cnn1d()) == (
        (5 * 32 + 32) + 2 * (32 * 5 * 32 + 32) + (32 * 5 * 10 + 10)
    )
    # cnn defaults: conv(1->16) + conv(16->32) + linear(32*2*2 -> 10)
    assert count_parameters(models.cnn()) == (9 * 16 + 16) + (16 * 9 * 32 + 32) + (128 * 10 + 10)


def test_count_parameters_trainable_and_shared():
    lin = nn.Linear(4, 3)
    shared = nn.Sequential(lin, nn.Tanh(), nn.Linear(3, 4), lin)  # lin appears twice
    assert count_parameters(shared) == (4 * 3 + 3) + (3 * 4 + 4)
    lin.bias.requires_grad_(False)
    assert count_parameters(shared) == 4 * 3 + (3 * 4 + 4)
    assert count_parameters(shared, trainable_only=False) == (4 * 3 + 3) + (3 * 4 + 4)


def test_attention_matches_torch_multihead_attention():
    torch.manual_seed(0)
    dim, heads = 12, 3
    ours = models.MultiHeadSelfAttention(dim, heads).double()
    ref = nn.MultiheadAttention(dim, heads, batch_first=True).double()
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.qkv.weight)
        ref.in_proj_bias.copy_(ours.qkv.bias)
        ref.out_proj.weight.copy_(ours.proj.weight)
        ref.out_proj.bias.copy_(ours.proj.bias)
    x = torch.randn(4, 7, dim, dtype=torch.float64)
    expected, _ = ref(x, x, x, need_weights=False)
    torch.testing.assert_close(ours(x), expected, rtol=1e-12, atol=1e-12)


def test_vit_mean_pooling_is_permutation_invariant_without_positions():
    # with position embeddings zeroed, mean pooling makes the ViT invariant to the order
    # of patches -- a structural check of patching + attention + pooling
    torch.manual_seed(0)
    model = models.vit(image_size=8, patch_size=4, in_channels=1, dim=8, heads=2,
                       pool="mean").double().eval()
    with torch.no_grad():
        model.pos_embedding.zero_()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    swapped = x.clone()  # swap the top-left and bottom-right 4x4 patches
    swapped[..., :4, :4], swapped[..., 4:, 4:] = x[..., 4:, 4:], x[..., :4, :4]
    torch.testing.assert_close(model(swapped), model(x), rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        model.pos_embedding.normal_()
    assert not torch.allclose(model(swapped), model(x))


TINY = [
    ("mlp", {"in_features": 6, "hidden": [5], "num_classes": 3, "batchnorm": True}, (6,)),
    ("cnn", {"channels": [2, 3], "batchnorm": True, "dropout": 0.3, "num_classes": 3},
     (1, 8, 8)),
    ("resnet", {"depth": 8, "width": 2, "in_channels": 1, "num_classes": 3}, (1, 6, 6)),
    ("vgg", {"cfg": [2, "M", 3], "in_channels": 1, "input_size": 4, "hidden": [4],
             "num_classes": 3}, (1, 4, 4)),
    ("vit", {"image_size": 4, "patch_size": 2, "in_channels": 1, "dim": 4, "heads": 2,
             "num_classes": 3}, (1, 4, 4)),
    ("transformer", {"in_features": 3, "seq_len": 4, "dim": 4, "heads": 2, "num_classes": 3},
     (4, 3)),
    ("cnn1d", {"channels": [2, 3], "input_length": 9, "hidden": [4], "num_classes": 3}, (9,)),
]


@pytest.mark.parametrize("name, kwargs, shape", TINY, ids=[t[0] for t in TINY])
def test_every_architecture_supports_exact_hvp(name, kwargs, shape):
    """The engine's forward-over-reverse HVP equals reverse-over-reverse autograd
    (independent double backward) in eval mode, so BatchNorm, dropout, attention and
    LayerNorm all support the curvature products."""
    torch.manual_seed(0)
    model = build_model(name, **kwargs).double()
    model.train()
    model(torch.randn(8, *shape, dtype=torch.float64))  # move BN running statistics
    model.eval()
    x = torch.randn(6, *shape, dtype=torch.float64)
    y = torch.randint(0, 3, (6,))
    loss_fn = nn.CrossEntropyLoss()
    params = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    v = torch.randn(n, dtype=torch.float64)

    g = torch.autograd.grad(loss_fn(model(x), y), params, create_graph=True)
    gv = torch.cat([a.reshape(-1) for a in g]) @ v
    expected = torch.cat([h.reshape(-1) for h in torch.autograd.grad(gv, params)])

    op = cv.HessianOperator(model, loss_fn, (x, y))
    torch.testing.assert_close(op @ v, expected, rtol=1e-9, atol=1e-11)
    assert not model.training


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: models.mlp(activation="swish"), "unknown activation 'swish'"),
        (lambda: models.mlp(hidden=[8, 0]), r"hidden\[1\] must be a positive integer"),
        (lambda: models.mlp(dropout=1.0), "dropout must be a number in"),
        (lambda: models.cnn(kernel_size=4), "kernel_size must be odd"),
        (lambda: models.cnn1d(kernel_size=4), "kernel_size must be odd"),
        (lambda: models.cnn1d(channels=[4, 0]), r"channels\[1\] must be a positive integer"),
        (lambda: models.cnn1d()(torch.zeros(2, 1, 4, 10)), r"inputs \[N, L\] or \[N, C, L\]"),
        (lambda: models.cnn(channels=[4, 4, 4, 4], input_size=8), "too small"),
        (lambda: models.resnet(depth=21), "6n \\+ 2"),
        (lambda: models.resnet20(shortcut="C"), "shortcut must be 'A' or 'B'"),
        (lambda: models.vgg(cfg=[4, "X"]), r"cfg\[1\]"),
        (lambda: models.vgg(cfg=["M", "M"], input_size=2), "cannot max-pool"),
        (lambda: models.vit(dim=10, heads=4), "divisible by heads"),
        (lambda: models.vit(image_size=10, patch_size=4), "divisible by patch_size"),
        (lambda: models.vit(pool="max"), "pool must be 'cls' or 'mean'"),
        (lambda: models.transformer(depth=-1), "depth must be a non-negative"),
    ],
)
def test_bad_model_arguments_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_build_model_resolves_short_and_long_names():
    assert resolve_factory("mlp") is models.mlp
    assert resolve_factory("curvature.models:mlp") is models.mlp
    assert resolve_factory("curvature.models:ViT.forward") is models.ViT.forward
    lin = build_model("torch.nn:Linear", in_features=3, out_features=2)
    assert isinstance(lin, nn.Linear) and lin.weight.shape == (2, 3)


@pytest.mark.parametrize(
    "factory, kwargs, match",
    [
        ("no_such_package.models:net", {}, "cannot import module 'no_such_package.models'"),
        ("curvature.models:no_such_net", {}, "has no attribute 'no_such_net'"),
        ("curvature.models:MODELS", {}, "not callable"),
        ("mlpp", {}, "neither a known model"),
        ("a:b:c", {}, "neither a known model"),
        ("curvature.models:", {}, "package.module:function"),
        ("curvature.models:1net", {}, "package.module:function"),
        ("", {}, "non-empty string"),
        ("mlp", {"width": 3}, "'mlp' does not accept the arguments"),
        ("collections:OrderedDict", {}, "returned a OrderedDict, not an nn.Module"),
    ],
)
def test_build_model_errors_name_the_factory(factory, kwargs, match):
    with pytest.raises(ModelFactoryError, match=match):
        build_model(factory, **kwargs)


def test_is_model_factory_accepts_zoo_and_modules_only():
    for name in MODELS:
        assert is_model_factory(resolve_factory(name)), name
    assert is_model_factory(nn.Linear)
    assert not is_model_factory(resolve_factory("subprocess:run"))
    assert not is_model_factory(resolve_factory("os:system"))
    assert not is_model_factory(resolve_factory("builtins:eval"))
    assert not is_model_factory(dict)
