"""What the master prepares before any worker is involved: the model and its weights,
the inputs (and their labels), the plans, the learned codecs and the trace's path.
Every user error surfaces here, before a worker is handed a layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch

from ..experiment.config import RunConfig
from ..models import MODELS, build_model, input_shape, load_weights
from ..models.data import fit_to_input, load_dataset
from ..models.inputs import check_shape, load_input, seeded_inputs
from .idle import GcWatch, Usage
from .plans import check_decoding, make_plans
from .trace_meta import SendTimes


@dataclass
class MasterJob:
    """What the master prepares before any worker is involved."""

    model: torch.nn.Module
    inputs: torch.Tensor  # (N, C, H, W); request i uses inputs[i % N]
    num_classes: int
    specs: list = field(default_factory=list)
    plans: dict = field(default_factory=dict)  # (method, m) -> [LayerPlan]
    default_layers: set | None = None  # convs distributed by cells with an integer k
    path: Path = Path()
    labels: torch.Tensor | None = None  # true classes when the inputs are a dataset
    requests: int = 1
    blocks: list = field(default_factory=list)  # learning.CodedBlock per codec in use
    last_block: str | None = None  # the model's last conv block: on the master if hybrid
    block_specs: list = field(default_factory=list)
    sends: SendTimes = field(default_factory=lambda: SendTimes())  # shipped, not yet written
    usage: Usage = field(default_factory=Usage)  # the master's CPU and wall s, from set-up's end
    gc: GcWatch = field(default_factory=GcWatch)  # no collection inside a request

    def input_for(self, request: int) -> torch.Tensor:
        return self.inputs[request % len(self.inputs)].unsqueeze(0)


def prepare(cfg: RunConfig) -> MasterJob:
    """Model, weights, inputs and output path; every user error surfaces here."""
    model = build_model(cfg.model, seed=cfg.seed)
    if cfg.weights:
        load_weights(model, cfg.weights)
    model.eval()
    expected = MODELS[cfg.model].input_shape if cfg.model in MODELS else None
    labels = None
    if cfg.input:
        inputs = load_input(cfg.input)
        check_shape(inputs, expected, cfg.model)
    elif cfg.data:
        dataset = load_dataset(cfg.data, "test")
        if expected is not None:  # e.g. the 32x32 digits for VGG16's 3x224x224
            dataset = fit_to_input(dataset, expected)
        inputs, labels = dataset.images, dataset.labels
        check_shape(inputs, expected, cfg.model)
    else:
        inputs = seeded_inputs(input_shape(cfg.model, model), cfg.seed, cfg.requests or 1)
    try:
        with torch.no_grad():
            logits = model(inputs[:1])  # a model that rejects this input fails here
    except Exception as exc:
        shape = tuple(inputs.shape[1:])
        raise ValueError(f"model {cfg.model} fails on input of shape {shape}: {exc}") from None
    if logits.dim() != 2 or logits.shape[0] != 1:
        raise ValueError(f"{cfg.model} returned shape {tuple(logits.shape)}; expected (1, classes)")
    plans = make_plans(cfg, model, tuple(inputs.shape[1:]))
    check_decoding(cfg, plans)
    blocks = load_codecs(cfg, model, tuple(inputs.shape[1:]))
    return MasterJob(
        model,
        inputs,
        int(logits.shape[1]),
        plans=plans,
        path=output_path(cfg),
        labels=labels,
        requests=cfg.requests if cfg.requests is not None else len(inputs),
        blocks=blocks,
        last_block=last_block_name(model),
    )


def last_block_name(model: torch.nn.Module) -> str | None:
    """The model's last conv block (Non-linear* keeps it on the master)."""
    from ..geometry.blocks import find_blocks

    locs = find_blocks(model)
    return locs[-1].name if locs else None


def load_codecs(cfg: RunConfig, model: torch.nn.Module, shape: tuple) -> list:
    """The learned codecs, checked against this model, its blocks and the input size.

    With --hybrid the model's last conv block stays on the master (Non-linear*)."""
    from ..learned.checkpoint import load_codec
    from ..learned.coded_block import CodecError

    blocks = [load_codec(path, model, cfg.model, shape)[0] for path in cfg.codec]
    names = [cb.name for cb in blocks]
    if len(set(names)) != len(names):
        raise CodecError(f"two codecs for the same block: {', '.join(names)}")
    if cfg.hybrid:
        blocks = [cb for cb in blocks if cb.name != last_block_name(model)]
    if cfg.codec and not blocks:
        raise CodecError("--hybrid leaves no block to code: give a codec for another block")
    return blocks


def output_path(cfg: RunConfig) -> Path:
    if cfg.out:
        path = Path(cfg.out)
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        name = cfg.name or f"{safe(cfg.model)}_{cfg.code}_n{cfg.n}_k{cfg.k}_{stamp}"
        path = Path("results") / f"{name}.h5"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text)
