"""Codec checkpoints: what one carries, writing it atomically, and reading it back
only for the model, block, block structure and input size it was trained for.

Two forms, chosen by the file name on writing and by the content on reading:

- ``.pt`` (torch.save, read with ``weights_only=True``): everything, the optimizer's
  state included, so ``cocoi train --resume`` continues exactly where it stopped.
- ``.safetensors``: the codec's state_dict as the tensors and the rest (codec
  description, model, block, data, shapes, signature, epoch, history) as JSON under
  the metadata key ``"cocoi"``. It has no optimizer state: it is for running (``--codec``,
  ``cocoi accuracy``), and ``cocoi train --resume`` refuses it (train to a ``.pt``, then
  ``cocoi convert`` it). Both forms are checked alike and load to identical codecs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from ..geometry.blocks import block_modules, block_spec, split_block
from ..models.inputs import read_error, torch_load
from ..models.tensorfiles import (
    has_suffix,
    is_safetensors,
    load_safetensors,
    safetensors_error,
    save_safetensors,
)
from ..models.training import atomic_torch_save
from .coded_block import CodecError, CodedBlock, block_input_shape, locate_block
from .scheme import Codec

CHECKPOINT_KIND = "cocoi-codec"
CHECKPOINT_VERSION = 1
# What load_codec reads besides kind, version, state_dict and optimizer.
FIELDS = ("codec", "model", "block", "data", "input_shape", "block_input_shape", "signature")


@dataclass
class CodecState:
    """What a checkpoint carries besides the weights: enough to resume and to refuse."""

    model: str
    block: str
    data: str
    input_shape: tuple
    block_input_shape: tuple
    signature: list
    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    optimizer: dict | None = None


def save_codec(path: str | Path, cb: CodedBlock, state: CodecState) -> None:
    """Write a checkpoint atomically: an interrupted save never leaves half a file.

    A ``path`` ending in ``.safetensors`` gets the safetensors form (no optimizer state)."""
    payload = checkpoint_payload(cb, state)
    if has_suffix(path):
        write_safetensors_codec(path, payload)
    else:
        atomic_torch_save(payload, Path(path))


def checkpoint_payload(cb: CodedBlock, state: CodecState) -> dict:
    """The dict a .pt checkpoint holds."""
    return dict(
        kind=CHECKPOINT_KIND,
        version=CHECKPOINT_VERSION,
        codec=cb.codec.meta(),
        state_dict=cb.codec.state_dict(),
        model=state.model,
        block=state.block,
        data=state.data,
        input_shape=list(state.input_shape),
        block_input_shape=list(state.block_input_shape),
        signature=state.signature,
        epoch=state.epoch,
        history=state.history,
        optimizer=state.optimizer,
    )


def write_safetensors_codec(path: str | Path, payload: dict) -> None:
    """The safetensors form of a checkpoint dict: its state_dict as the tensors, the
    rest but the optimizer state as metadata."""
    meta = {k: v for k, v in payload.items() if k not in ("state_dict", "optimizer")}
    save_safetensors(path, payload["state_dict"], meta)


def read_codec(path: str | Path) -> dict:
    """The raw checkpoint dict, with clear errors for missing or foreign files.

    A safetensors checkpoint reads as the same dict with ``optimizer`` None."""
    path = Path(path)
    if not path.is_file():
        raise CodecError(f"codec checkpoint not found: {path}")
    if is_safetensors(path):
        try:
            tensors, meta = load_safetensors(path)
        except Exception as exc:
            reason = safetensors_error(path, exc)
            raise CodecError(f"cannot read codec checkpoint {path}: {reason}") from None
        payload = {**meta, "state_dict": tensors, "optimizer": None}
    else:
        try:
            payload = torch_load(path)
        except Exception as exc:
            raise CodecError(f"cannot read codec checkpoint {path}: {read_error(exc)}") from None
    if not isinstance(payload, dict) or payload.get("kind") != CHECKPOINT_KIND:
        raise CodecError(f"{path} is not a cocoi codec checkpoint (made by cocoi train)")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CodecError(f"{path}: checkpoint version {payload.get('version')} is not supported")
    missing = [key for key in FIELDS if key not in payload]
    if missing:
        raise CodecError(f"{path}: the codec checkpoint lacks {', '.join(missing)}")
    return payload


def load_codec(
    path: str | Path, model: nn.Module, model_spec: str, input_shape: Sequence[int]
) -> tuple[CodedBlock, CodecState]:
    """Rebuild a checkpoint's codec for ``model``; refuse one made for another model,
    block, block structure or input size."""
    payload = read_codec(path)
    if payload["model"] != model_spec:
        raise CodecError(f"{path} was trained for model {payload['model']!r}, not {model_spec!r}")
    loc = locate_block(model, payload["block"])
    spec = block_spec(0, loc.name, block_modules(model, loc))
    if spec.signature() != payload["signature"]:
        raise CodecError(
            f"{path}: block {loc.name} of this model has another structure than the codec's"
        )
    shape = block_input_shape(model, loc, input_shape)
    if list(shape) != list(payload["block_input_shape"]):
        raise CodecError(
            f"{path}: block {loc.name} receives {tuple(shape)} here, the codec was trained for "
            f"{tuple(payload['block_input_shape'])} (input {tuple(payload['input_shape'])})"
        )
    try:
        codec = Codec.from_meta(payload["codec"])
        codec.load_state_dict(payload["state_dict"])
    except Exception as exc:  # load_state_dict's text spans lines: keep one
        reason = " ".join(str(exc).split())
        raise CodecError(f"{path}: codec weights do not load: {reason}") from None
    codec.eval()
    split = split_block(spec, shape[2], codec.k)
    state = CodecState(
        model=payload["model"],
        block=payload["block"],
        data=payload["data"],
        input_shape=tuple(payload["input_shape"]),
        block_input_shape=tuple(shape),
        signature=payload["signature"],
        epoch=payload.get("epoch", 0),
        history=list(payload.get("history", [])),
        optimizer=payload.get("optimizer"),
    )
    return CodedBlock(loc, spec, split, codec), state


def new_state(
    model_spec: str, data: str, input_shape, cb: CodedBlock, model: nn.Module
) -> CodecState:
    return CodecState(
        model=model_spec,
        block=cb.name,
        data=data,
        input_shape=tuple(input_shape),
        block_input_shape=block_input_shape(model, cb.loc, input_shape),
        signature=cb.spec.signature(),
    )
