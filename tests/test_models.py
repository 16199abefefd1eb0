"""Tests for the model registry, the torchvision-compatible models, and weights loading.

The key lists below are a hand-written oracle of torchvision's ``vgg16()`` / ``resnet18()``
state_dict layout (order included), so torchvision checkpoints load into our models strictly.
"""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from cocoi_mpi.models import (
    MODELS,
    ModelInfo,
    UnknownModelError,
    WeightsError,
    build_model,
    input_shape,
    lenet5,
    load_weights,
    resnet18,
    vgg16,
)

# fmt: off
VGG16_KEYS = [
    "features.0.weight", "features.0.bias", "features.2.weight", "features.2.bias",
    "features.5.weight", "features.5.bias", "features.7.weight", "features.7.bias",
    "features.10.weight", "features.10.bias", "features.12.weight", "features.12.bias",
    "features.14.weight", "features.14.bias", "features.17.weight", "features.17.bias",
    "features.19.weight", "features.19.bias", "features.21.weight", "features.21.bias",
    "features.24.weight", "features.24.bias", "features.26.weight", "features.26.bias",
    "features.28.weight", "features.28.bias",
    "classifier.0.weight", "classifier.0.bias", "classifier.3.weight", "classifier.3.bias",
    "classifier.6.weight", "classifier.6.bias",
]

RESNET18_KEYS = [
    "conv1.weight",
    "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked",
    "layer1.0.conv1.weight",
    "layer1.0.bn1.weight", "layer1.0.bn1.bias", "layer1.0.bn1.running_mean",
    "layer1.0.bn1.running_var", "layer1.0.bn1.num_batches_tracked",
    "layer1.0.conv2.weight",
    "layer1.0.bn2.weight", "layer1.0.bn2.bias", "layer1.0.bn2.running_mean",
    "layer1.0.bn2.running_var", "layer1.0.bn2.num_batches_tracked",
    "layer1.1.conv1.weight",
    "layer1.1.bn1.weight", "layer1.1.bn1.bias", "layer1.1.bn1.running_mean",
    "layer1.1.bn1.running_var", "layer1.1.bn1.num_batches_tracked",
    "layer1.1.conv2.weight",
    "layer1.1.bn2.weight", "layer1.1.bn2.bias", "layer1.1.bn2.running_mean",
    "layer1.1.bn2.running_var", "layer1.1.bn2.num_batches_tracked",
    "layer2.0.conv1.weight",
    "layer2.0.bn1.weight", "layer2.0.bn1.bias", "layer2.0.bn1.running_mean",
    "layer2.0.bn1.running_var", "layer2.0.bn1.num_batches_tracked",
    "layer2.0.conv2.weight",
    "layer2.0.bn2.weight", "layer2.0.bn2.bias", "layer2.0.bn2.running_mean",
    "layer2.0.bn2.running_var", "layer2.0.bn2.num_batches_tracked",
    "layer2.0.downsample.0.weight",
    "layer2.0.downsample.1.weight", "layer2.0.downsample.1.bias",
    "layer2.0.downsample.1.running_mean", "layer2.0.downsample.1.running_var",
    "layer2.0.downsample.1.num_batches_tracked",
    "layer2.1.conv1.weight",
    "layer2.1.bn1.weight", "layer2.1.bn1.bias", "layer2.1.bn1.running_mean",
    "layer2.1.bn1.running_var", "layer2.1.bn1.num_batches_tracked",
    "layer2.1.conv2.weight",
    "layer2.1.bn2.weight", "layer2.1.bn2.bias", "layer2.1.bn2.running_mean",
    "layer2.1.bn2.running_var", "layer2.1.bn2.num_batches_tracked",
    "layer3.0.conv1.weight",
    "layer3.0.bn1.weight", "layer3.0.bn1.bias", "layer3.0.bn1.running_mean",
    "layer3.0.bn1.running_var", "layer3.0.bn1.num_batches_tracked",
    "layer3.0.conv2.weight",
    "layer3.0.bn2.weight", "layer3.0.bn2.bias", "layer3.0.bn2.running_mean",
    "layer3.0.bn2.running_var", "layer3.0.bn2.num_batches_tracked",
    "layer3.0.downsample.0.weight",
    "layer3.0.downsample.1.weight", "layer3.0.downsample.1.bias",
    "layer3.0.downsample.1.running_mean", "layer3.0.downsample.1.running_var",
    "layer3.0.downsample.1.num_batches_tracked",
    "layer3.1.conv1.weight",
    "layer3.1.bn1.weight", "layer3.1.bn1.bias", "layer3.1.bn1.running_mean",
    "layer3.1.bn1.running_var", "layer3.1.bn1.num_batches_tracked",
    "layer3.1.conv2.weight",
    "layer3.1.bn2.weight", "layer3.1.bn2.bias", "layer3.1.bn2.running_mean",
    "layer3.1.bn2.running_var", "layer3.1.bn2.num_batches_tracked",
    "layer4.0.conv1.weight",
    "layer4.0.bn1.weight", "layer4.0.bn1.bias", "layer4.0.bn1.running_mean",
    "layer4.0.bn1.running_var", "layer4.0.bn1.num_batches_tracked",
    "layer4.0.conv2.weight",
    "layer4.0.bn2.weight", "layer4.0.bn2.bias", "layer4.0.bn2.running_mean",
    "layer4.0.bn2.running_var", "layer4.0.bn2.num_batches_tracked",
    "layer4.0.downsample.0.weight",
    "layer4.0.downsample.1.weight", "layer4.0.downsample.1.bias",
    "layer4.0.downsample.1.running_mean", "layer4.0.downsample.1.running_var",
    "layer4.0.downsample.1.num_batches_tracked",
    "layer4.1.conv1.weight",
    "layer4.1.bn1.weight", "layer4.1.bn1.bias", "layer4.1.bn1.running_mean",
    "layer4.1.bn1.running_var", "layer4.1.bn1.num_batches_tracked",
    "layer4.1.conv2.weight",
    "layer4.1.bn2.weight", "layer4.1.bn2.bias", "layer4.1.bn2.running_mean",
    "layer4.1.bn2.running_var", "layer4.1.bn2.num_batches_tracked",
    "fc.weight", "fc.bias",
]

LENET5_KEYS = [
    "features.0.weight", "features.0.bias", "features.3.weight", "features.3.bias",
    "classifier.0.weight", "classifier.0.bias", "classifier.2.weight", "classifier.2.bias",
    "classifier.4.weight", "classifier.4.bias",
]
# fmt: on

VGG16_SHAPES = {
    "features.0.weight": (64, 3, 3, 3),
    "features.2.weight": (64, 64, 3, 3),
    "features.5.weight": (128, 64, 3, 3),
    "features.10.bias": (256,),
    "features.28.weight": (512, 512, 3, 3),
    "classifier.0.weight": (4096, 25088),
    "classifier.3.weight": (4096, 4096),
    "classifier.6.weight": (1000, 4096),
    "classifier.6.bias": (1000,),
}

RESNET18_SHAPES = {
    "conv1.weight": (64, 3, 7, 7),
    "bn1.running_var": (64,),
    "bn1.num_batches_tracked": (),
    "layer1.0.conv1.weight": (64, 64, 3, 3),
    "layer2.0.conv1.weight": (128, 64, 3, 3),
    "layer2.0.downsample.0.weight": (128, 64, 1, 1),
    "layer3.0.downsample.1.running_mean": (256,),
    "layer4.1.conv2.weight": (512, 512, 3, 3),
    "fc.weight": (1000, 512),
    "fc.bias": (1000,),
}


def meta_model(factory) -> nn.Module:
    """Build without allocating or initialising weights: structure-only checks stay fast."""
    with torch.device("meta"):
        return factory()


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def logits_ok(model: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    """Forward a seeded N(0,1) batch and check the logits are finite and informative."""
    x = torch.randn((1, *shape), generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        y = model(x)
    assert torch.isfinite(y).all()
    assert y.std().item() > 1e-3
    assert y.abs().max().item() < 1e3
    return y


def same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def built_vgg16() -> nn.Module:
    return build_model("vgg16", seed=0)


@pytest.fixture(scope="module")
def built_resnet18() -> nn.Module:
    return build_model("resnet18", seed=0)


# --------------------------------------------------------------------------- structure


def test_vgg16_keys_match_torchvision() -> None:
    assert list(meta_model(vgg16).state_dict()) == VGG16_KEYS


def test_resnet18_keys_match_torchvision() -> None:
    assert len(RESNET18_KEYS) == 122
    assert list(meta_model(resnet18).state_dict()) == RESNET18_KEYS


def test_lenet5_keys() -> None:
    assert list(meta_model(lenet5).state_dict()) == LENET5_KEYS


@pytest.mark.parametrize(
    ("factory", "shapes"), [(vgg16, VGG16_SHAPES), (resnet18, RESNET18_SHAPES)]
)
def test_sample_shapes(factory, shapes: dict[str, tuple[int, ...]]) -> None:
    state = meta_model(factory).state_dict()
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key


@pytest.mark.parametrize(
    ("factory", "count"), [(vgg16, 138_357_544), (resnet18, 11_689_512), (lenet5, 61_706)]
)
def test_parameter_counts(factory, count: int) -> None:
    assert n_params(meta_model(factory)) == count


def test_vgg16_layout() -> None:
    model = meta_model(vgg16)
    assert len(model.features) == 31
    pools = [i for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)]
    assert pools == [4, 9, 16, 23, 30]
    assert isinstance(model.avgpool, nn.AdaptiveAvgPool2d)
    assert model.avgpool.output_size == (7, 7)
    kinds = [type(m).__name__ for m in model.classifier]
    assert kinds == "Linear ReLU Dropout Linear ReLU Dropout Linear".split()


@pytest.mark.parametrize("factory", [vgg16, resnet18, lenet5])
def test_no_inplace_relu(factory) -> None:
    relus = [m for m in meta_model(factory).modules() if isinstance(m, nn.ReLU)]
    assert relus and not any(m.inplace for m in relus)


@pytest.mark.parametrize(("factory", "classes"), [(vgg16, 10), (resnet18, 7), (lenet5, 3)])
def test_num_classes(factory, classes: int) -> None:
    model = meta_model(lambda: factory(num_classes=classes))
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears[-1].out_features == classes


def test_registry() -> None:
    assert set(MODELS) == {"vgg16", "resnet18", "lenet5"}
    assert all(isinstance(info, ModelInfo) for info in MODELS.values())
    assert MODELS["vgg16"].input_shape == (3, 224, 224)
    assert MODELS["resnet18"].input_shape == (3, 224, 224)
    assert MODELS["lenet5"].input_shape == (1, 32, 32)
    assert MODELS["lenet5"].num_classes == 10
    assert MODELS["vgg16"].num_classes == MODELS["resnet18"].num_classes == 1000
    for name, info in MODELS.items():
        assert input_shape(name) == info.input_shape


# --------------------------------------------------------------------------- forward


def test_vgg16_forward(built_vgg16: nn.Module) -> None:
    assert not built_vgg16.training
    assert logits_ok(built_vgg16, (3, 224, 224)).shape == (1, 1000)


def test_resnet18_forward(built_resnet18: nn.Module) -> None:
    assert not built_resnet18.training
    assert logits_ok(built_resnet18, (3, 224, 224)).shape == (1, 1000)


def test_lenet5_forward() -> None:
    model = build_model("lenet5")
    assert logits_ok(model, (1, 32, 32)).shape == (1, 10)
    assert lenet5(in_channels=3)(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


# --------------------------------------------------------------------------- seeding


def test_same_seed_is_bitwise_identical(built_resnet18: nn.Module) -> None:
    assert same_state(build_model("resnet18", seed=0), built_resnet18)
    assert same_state(build_model("lenet5", seed=5), build_model("lenet5", seed=5))


def test_different_seeds_differ() -> None:
    a, b = build_model("lenet5", seed=0), build_model("lenet5", seed=1)
    assert not any(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in LENET5_KEYS)


def test_global_rng_untouched() -> None:
    before = torch.get_rng_state()
    build_model("lenet5", seed=3)
    assert torch.equal(torch.get_rng_state(), before)


def test_batchnorm_is_not_identity(built_resnet18: nn.Module) -> None:
    state = built_resnet18.state_dict()
    assert not torch.allclose(state["bn1.running_mean"], torch.zeros(64))
    assert not torch.allclose(state["bn1.running_var"], torch.ones(64))
    assert not torch.allclose(state["layer1.0.bn2.weight"], torch.ones(64))
    assert not torch.allclose(state["layer1.0.bn2.bias"], torch.zeros(64))
    assert (state["layer2.0.downsample.1.running_var"] > 0).all()
    assert int(state["bn1.num_batches_tracked"]) == 0


def test_biases_are_seeded_not_zero() -> None:
    state = build_model("lenet5").state_dict()
    assert state["features.0.bias"].abs().sum() > 0
    assert state["classifier.4.bias"].abs().sum() > 0


# --------------------------------------------------------------------------- load_weights


def test_load_weights_round_trip(tmp_path: Path, built_resnet18: nn.Module) -> None:
    path = tmp_path / "resnet18.pt"
    torch.save(build_model("resnet18", seed=7).state_dict(), path)
    target = build_model("resnet18", seed=0)
    assert load_weights(target, path) is target
    assert same_state(target, build_model("resnet18", seed=7))
    assert not same_state(target, built_resnet18)


def test_load_weights_wrapped_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": build_model("lenet5", seed=2).state_dict(), "epoch": 3}, path)
    model = load_weights(build_model("lenet5", seed=0), str(path))
    assert same_state(model, build_model("lenet5", seed=2))


def test_load_weights_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(WeightsError, match="weights file not found: .*nope.pt"):
        load_weights(build_model("lenet5"), path)


def test_load_weights_other_model(tmp_path: Path) -> None:
    path = tmp_path / "lenet.pt"
    torch.save(build_model("lenet5").state_dict(), path)
    model = build_model("resnet18")
    with pytest.raises(WeightsError) as info:
        load_weights(model, path)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(path) in msg
    assert "122 missing keys (conv1.weight, bn1.weight, bn1.bias, ...)" in msg
    assert "10 unexpected keys (features.0.weight" in msg
    assert isinstance(info.value, ValueError)


def test_load_weights_shape_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "lenet5_5classes.pt"
    torch.save(lenet5(num_classes=5).state_dict(), path)
    model = build_model("lenet5")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsError, match=r"shape mismatch for classifier\.4\.weight") as info:
        load_weights(model, path)
    assert "(5, 84)" in str(info.value) and "(10, 84)" in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_load_weights_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="cannot read weights file"):
        load_weights(build_model("lenet5"), path)


def test_load_weights_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(WeightsError, match="not a state_dict"):
        load_weights(build_model("lenet5"), path)


# --------------------------------------------------------------------------- import paths

USER_MODULE = """
import torch
from torch import nn


def tiny():
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 8 * 8, 3),
    )


tiny.input_shape = (2, 8, 8)


class Shaped(nn.Module):
    input_shape = (1, 4, 4)

    def __init__(self, width: int = 2):
        super().__init__()
        self.fc = nn.Linear(16, width)


def no_shape():
    return nn.Linear(4, 2)


def needs_args(width):
    return nn.Linear(4, width)


def not_a_module():
    return 42


NOT_CALLABLE = 3
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Write a uniquely named model module to tmp_path and put it on sys.path."""
    name = f"user_models_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_import_path_builds_seeded_model(user_module: str) -> None:
    spec = f"{user_module}:tiny"
    model = build_model(spec, seed=4)
    assert isinstance(model, nn.Sequential) and not model.training
    assert same_state(model, build_model(spec, seed=4))
    assert not same_state(model, build_model(spec, seed=5))
    assert not torch.allclose(model.state_dict()["1.running_var"], torch.ones(4))
    assert model(torch.randn(1, 2, 8, 8)).shape == (1, 3)


def test_import_path_input_shape(user_module: str) -> None:
    assert input_shape(f"{user_module}:tiny") == (2, 8, 8)
    shaped = f"{user_module}:Shaped"
    assert input_shape(shaped, build_model(shaped)) == (1, 4, 4)
    with pytest.raises(ValueError, match="--input"):
        input_shape(f"{user_module}:no_shape", build_model(f"{user_module}:no_shape"))


@pytest.mark.parametrize(
    ("attr", "pattern"),
    [
        ("missing", "has no attribute 'missing'"),
        ("NOT_CALLABLE", "not callable"),
        ("needs_args", r"needs arguments \['width'\]"),
        ("not_a_module", "returned int, not an nn.Module"),
    ],
)
def test_import_path_errors(user_module: str, attr: str, pattern: str) -> None:
    with pytest.raises(UnknownModelError, match=pattern):
        build_model(f"{user_module}:{attr}")


def test_import_path_module_not_found() -> None:
    with pytest.raises(UnknownModelError, match="cannot import module 'no_such_pkg.models'"):
        build_model("no_such_pkg.models:net")


@pytest.mark.parametrize("spec", [":net", "pkg.mod:", ":"])
def test_import_path_malformed(spec: str) -> None:
    with pytest.raises(UnknownModelError, match="package.module:factory"):
        build_model(spec)


@pytest.mark.parametrize("spec", ["vgg19", "ResNet18", ""])
def test_unknown_name(spec: str) -> None:
    with pytest.raises(UnknownModelError) as info:
        build_model(spec)
    msg = str(info.value)
    assert "lenet5, resnet18, vgg16" in msg and "package.module:factory" in msg
    with pytest.raises(UnknownModelError):
        input_shape(spec)
    assert isinstance(info.value, ValueError)
