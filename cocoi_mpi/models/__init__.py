"""Model registry: build seeded reference CNNs by name or import path, and load weights.

A model *spec* is either a registry name (see :data:`MODELS`) or an import path
``"package.module:factory"`` where ``factory`` is a callable with no required arguments
that returns an ``nn.Module``. Weights are seeded so every MPI rank can rebuild the
identical model without shipping parameters around.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from .inputs import read_error, torch_load
from .lenet5 import lenet5
from .resnet18 import resnet18
from .tensorfiles import is_safetensors, load_safetensors, safetensors_error
from .vgg16 import vgg16

__all__ = [
    "MODELS",
    "ModelInfo",
    "UnknownModelError",
    "WeightsError",
    "build_model",
    "init_weights",
    "input_shape",
    "lenet5",
    "load_weights",
    "resnet18",
    "vgg16",
]

IMPORT_PATH_HELP = (
    "or an import path 'package.module:factory' "
    "(a callable with no required arguments returning an nn.Module)"
)


class UnknownModelError(UserError, ValueError):
    """The model spec names no registry entry or cannot be resolved as an import path."""


class WeightsError(UserError, ValueError):
    """A weights file is missing, unreadable, or does not fit the model."""


@dataclass(frozen=True)
class ModelInfo:
    """Registry entry: how to build the model and what input it expects."""

    factory: Callable[[], nn.Module]
    input_shape: tuple[int, int, int]  # (C, H, W), no batch dimension
    num_classes: int


MODELS: dict[str, ModelInfo] = {
    "vgg16": ModelInfo(vgg16, (3, 224, 224), 1000),
    "resnet18": ModelInfo(resnet18, (3, 224, 224), 1000),
    "lenet5": ModelInfo(lenet5, (1, 32, 32), 10),
}


# --------------------------------------------------------------------------- spec resolution


def _unknown_name(spec: str) -> UnknownModelError:
    known = ", ".join(sorted(MODELS))
    return UnknownModelError(f"unknown model {spec!r}; known models: {known}; {IMPORT_PATH_HELP}")


def _import_factory(spec: str) -> Callable[..., object]:
    """Resolve ``package.module:attr[.attr...]`` to a callable, with one-line errors."""
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path:
        raise UnknownModelError(f"bad model import path {spec!r}; expected {IMPORT_PATH_HELP}")
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownModelError(
            f"model {spec!r}: cannot import module {module_name!r} ({exc}); "
            "is it on sys.path / PYTHONPATH?"
        ) from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise UnknownModelError(
                f"model {spec!r}: module {module_name!r} has no attribute {attr_path!r}"
            ) from exc
    if not callable(obj):
        raise UnknownModelError(f"model {spec!r}: {attr_path!r} is not callable")
    _check_no_required_args(spec, obj)
    return obj


def _check_no_required_args(spec: str, factory: Callable[..., object]) -> None:
    """Fail early, with a clear message, if the factory cannot be called as ``factory()``."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return  # builtins etc.: let the call itself decide
    required = [
        p.name
        for p in sig.parameters.values()
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if required:
        raise UnknownModelError(
            f"model {spec!r}: factory needs arguments {required}; it must be callable with none"
        )


def _factory_for(spec: str) -> Callable[..., object]:
    if spec in MODELS:
        return MODELS[spec].factory
    if ":" in spec:
        return _import_factory(spec)
    raise _unknown_name(spec)


# --------------------------------------------------------------------------- seeded building


_INITIALISED = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._NormBase)


def _init_covers(model: nn.Module) -> bool:
    """True if :func:`init_weights` overwrites every parameter and buffer of ``model``."""
    return all(isinstance(m, _INITIALISED) or not _owns_state(m) for m in model.modules())


def _owns_state(module: nn.Module) -> bool:
    params = next(module.parameters(recurse=False), None)
    buffers = next(module.buffers(recurse=False), None)
    return params is not None or buffers is not None


def init_weights(model: nn.Module) -> None:
    """Re-initialise ``model`` from the current global RNG so activations stay O(1).

    Conv: Kaiming-normal (fan_in, ReLU) keeps the signal scale through deep stacks.
    Linear: N(0, 0.01). Biases are small but non-zero so bias handling is exercised.
    BatchNorm: random affine and running stats, so BN is not an identity in tests; the scale
    is drawn below 1 so residual adds do not double the variance block after block.
    Other modules keep their (already seeded) default initialisation.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            _init_bias(module.bias, 0.05)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
            _init_bias(module.bias, 0.05)
        elif isinstance(module, nn.modules.batchnorm._NormBase):
            _init_norm(module)


def _init_bias(bias: torch.Tensor | None, bound: float) -> None:
    if bias is not None:
        nn.init.uniform_(bias, -bound, bound)


def _init_norm(module: nn.modules.batchnorm._NormBase) -> None:
    with torch.no_grad():
        if module.weight is not None:
            nn.init.uniform_(module.weight, 0.4, 0.8)
        if module.bias is not None:
            nn.init.normal_(module.bias, 0.0, 0.1)
        if module.running_mean is not None:
            module.running_mean.normal_(0.0, 0.1)
        if module.running_var is not None:
            module.running_var.uniform_(0.5, 1.5)
        if module.num_batches_tracked is not None:
            module.num_batches_tracked.zero_()


def build_model(spec: str, seed: int = 0) -> nn.Module:
    """Build the model named by ``spec`` with weights drawn from ``seed``, in eval mode.

    The global torch RNG is forked, so callers' random state is left untouched and the same
    seed always yields bitwise-identical weights (every rank can rebuild the same model).
    """
    factory = _factory_for(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _construct(spec, factory, on_meta=spec in MODELS)
        init_weights(model)
    return model.eval()


def _construct(spec: str, factory: Callable[..., object], on_meta: bool) -> nn.Module:
    """Call the factory; registry models skip PyTorch's default init (~3 s for VGG16).

    Registry models only hold conv/linear/BN state, all of which :func:`init_weights`
    overwrites, so they are built on the meta device and materialised uninitialised.
    Import-path models may hold other state, so they keep their (seeded) default init.
    """
    if on_meta:
        with torch.device("meta"):
            model = factory()
        if isinstance(model, nn.Module) and _init_covers(model):
            return model.to_empty(device="cpu")
    model = factory()
    if not isinstance(model, nn.Module):
        raise UnknownModelError(
            f"model {spec!r}: factory returned {type(model).__name__}, not an nn.Module"
        )
    return model


def input_shape(spec: str, model: nn.Module | None = None) -> tuple[int, ...]:
    """Input shape (C, H, W) without batch dimension for ``spec``.

    Registry models have a fixed shape; import-path models may declare an ``input_shape``
    attribute on the model or the factory.
    """
    if spec in MODELS:
        return MODELS[spec].input_shape
    factory = _factory_for(spec)
    for owner in (model, factory):
        shape = getattr(owner, "input_shape", None) if owner is not None else None
        if shape is not None:
            return _validate_shape(spec, shape)
    raise ValueError(
        f"model {spec!r} does not declare an input_shape; pass the input shape with --input"
    )


def _validate_shape(spec: str, shape: object) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in shape)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        dims = ()
    if not dims or any(d <= 0 for d in dims):
        raise ValueError(f"model {spec!r}: input_shape {shape!r} is not a tuple of positive ints")
    return dims


# --------------------------------------------------------------------------- weights loading


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Strictly load a state_dict file (bare, or under key ``"state_dict"``) into ``model``.

    A torch file (``torch.save``, read with ``weights_only=True``) or a safetensors file
    (named ``.safetensors``, or recognised by its header; its tensors are the state_dict).
    Every mismatch is reported as a one-line :class:`WeightsError` before touching the model.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    state = _read_state_dict(path)
    _check_keys(path, model.state_dict(), state)
    _check_shapes(path, model.state_dict(), state)
    model.load_state_dict(state, strict=True)
    return model


def _read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    if is_safetensors(path):
        try:
            return load_safetensors(path)[0]
        except Exception as exc:  # SafetensorError, or torch refusing a dtype
            reason = safetensors_error(path, exc)
            raise WeightsError(f"cannot read weights file {path}: {reason}") from None
    try:
        obj = torch_load(path)
    except Exception as exc:  # torch raises many different types for bad files
        raise WeightsError(f"cannot read weights file {path}: {read_error(exc)}") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise WeightsError(f"weights file {path} holds {type(obj).__name__}, not a state_dict")
    return obj


def _first(names: list[str], n: int = 3) -> str:
    more = ", ..." if len(names) > n else ""
    return ", ".join(names[:n]) + more


def _check_keys(
    path: Path, expected: Mapping[str, torch.Tensor], got: Mapping[str, object]
) -> None:
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    if not missing and not unexpected:
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys ({_first(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({_first(unexpected)})")
    if len(missing) == len(expected):  # not one name in common: the usual cause
        parts.append("no parameter name in common: are these weights for another model?")
    raise WeightsError(f"weights file {path} does not match the model: " + "; ".join(parts))


def _check_shapes(
    path: Path, expected: Mapping[str, torch.Tensor], got: Mapping[str, object]
) -> None:
    for key, ref in expected.items():
        value = got[key]
        if not isinstance(value, torch.Tensor):
            kind = type(value).__name__
            raise WeightsError(f"weights file {path}: {key} is {kind}, not a tensor")
        if value.shape != ref.shape:
            raise WeightsError(
                f"weights file {path}: shape mismatch for {key}: file has "
                f"{tuple(value.shape)}, model expects {tuple(ref.shape)}"
            )
