"""Block inputs and outputs captured once, so codecs for a big model train without
re-running its prefix (``cocoi train --cache DIR``).

A VGG16 forward pass at 224x224 costs about 31 GFLOP. Training a codec for its fifth
block the plain way re-runs the first four blocks for every batch of every epoch,
and the block itself on the k source pieces, whose outputs are only the target.
One forward pass over the data instead stores, for every conv block, its input and
its output (float16 ``.npy`` files, read back as memory maps), the input of the
model's last Linear layer (the features a head-only base model trains on) and the
labels. Training then runs only what carries a gradient: the encoder, the block on
the r parity pieces, and the decoder.

A cache belongs to one model, one set of weights ahead of the head, one dataset and
one count (:class:`CacheKey`, in ``meta.json``); opening it for anything else is
refused with the difference named. It is written to a temporary folder renamed into
place at the end, so an interrupted capture leaves nothing that looks complete.
float16 keeps a VGG16 cache of 512 images at about 8 GB; its rounding (~5e-4
relative) is far below what a learned code reconstructs to.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..geometry.blocks import BlockLoc, block_modules, find_blocks
from ..models.data import Dataset, batches

CACHE_KIND = "cocoi-block-cache"
CACHE_VERSION = 1
STORE_DTYPE = np.float16


class CacheError(UserError, ValueError):
    """A block cache is missing, partial, or was captured for something else."""


@dataclass(frozen=True)
class CacheKey:
    """What a cache was captured for; two keys must be equal to reuse one."""

    model: str
    digest: str  # of every weight ahead of the head (trunk_digest)
    data: str  # the dataset's name: split, subset and resizing included
    count: int
    input_shape: tuple

    def differences(self, other: CacheKey) -> list[str]:
        return [
            f"{name} {getattr(other, name)!r} (wanted {getattr(self, name)!r})"
            for name in ("model", "digest", "data", "count", "input_shape")
            if getattr(self, name) != getattr(other, name)
        ]


def head_layer(model: nn.Module) -> tuple[str, nn.Linear] | None:
    """The model's last Linear layer (its classifier head), if it has one."""
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            found = (name, module)
    return found


def trunk_digest(model: nn.Module) -> str:
    """SHA-256 over every parameter and buffer except the head's: training only the
    head (``cocoi train --base --head-only``) keeps a cache valid."""
    head = head_layer(model)
    skip = f"{head[0]}." if head else None
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if skip and name.startswith(skip):
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def cache_key(model: nn.Module, model_spec: str, data: Dataset) -> CacheKey:
    return CacheKey(
        model=model_spec,
        digest=trunk_digest(model),
        data=data.name,
        count=len(data),
        input_shape=tuple(int(d) for d in data.images.shape[1:]),
    )


# --------------------------------------------------------------------------- capture


def capture(
    model: nn.Module,
    key: CacheKey,
    data: Dataset,
    directory: str | Path,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
) -> BlockCache:
    """Run ``model`` once over ``data`` and store every block's input and output, the
    head's input and the labels under ``directory`` (written aside, renamed at the end)."""
    directory = Path(directory)
    if directory.exists():
        raise CacheError(f"{directory} exists already; remove it to capture again")
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        _capture_into(model, data, partial, batch_size, progress)
        _write_meta(partial, key, [loc.name for loc in find_blocks(model)])
        partial.rename(directory)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return open_cache(directory, key)


def _capture_into(model, data: Dataset, folder: Path, batch_size: int, progress) -> None:
    locs = find_blocks(model)
    if not locs:
        raise CacheError("this model has no conv block to capture")
    head = head_layer(model)
    arrays: dict[str, np.ndarray] = {}
    cursor = {"start": 0}

    def store(name: str, value: torch.Tensor) -> None:
        value = value.detach()
        if name not in arrays:
            shape = (len(data), *value.shape[1:])
            arrays[name] = np.lib.format.open_memmap(
                folder / f"{name}.npy", mode="w+", dtype=STORE_DTYPE, shape=shape
            )
        start = cursor["start"]
        arrays[name][start : start + value.shape[0]] = value.numpy().astype(STORE_DTYPE)

    handles = _capture_hooks(model, locs, head, store)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for images, _labels in batches(data, batch_size, shuffle=False):
                model(images)
                cursor["start"] += len(images)
                if progress is not None:
                    progress(len(images))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    for array in arrays.values():
        array.flush()
    np.save(folder / "labels.npy", data.labels.numpy())


def _capture_hooks(model, locs: list[BlockLoc], head, store) -> list:
    handles = []
    for loc in locs:
        modules = block_modules(model, loc)
        handles.append(
            modules[0].register_forward_pre_hook(
                lambda m, args, name=loc.name: store(f"{name}.in", args[0])
            )
        )
        handles.append(
            modules[-1].register_forward_hook(
                lambda m, args, out, name=loc.name: store(f"{name}.out", out)
            )
        )
    if head is not None:
        handles.append(head[1].register_forward_pre_hook(lambda m, args: store("head.in", args[0])))
    return handles


def _write_meta(folder: Path, key: CacheKey, blocks: list[str]) -> None:
    meta = dict(kind=CACHE_KIND, version=CACHE_VERSION, key=asdict(key), blocks=blocks)
    (folder / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


# --------------------------------------------------------------------------- reading


@dataclass
class BlockCache:
    """An opened cache: memory-mapped float16 arrays, read per batch as float32."""

    directory: Path
    key: CacheKey
    blocks: list[str]

    def _array(self, name: str) -> np.ndarray:
        path = self.directory / f"{name}.npy"
        if not path.is_file():
            raise CacheError(f"{self.directory} has no {name}.npy (captured blocks: {self.blocks})")
        return np.load(path, mmap_mode="r")

    def inputs(self, block: str) -> np.ndarray:
        return self._array(f"{block}.in")

    def outputs(self, block: str) -> np.ndarray:
        return self._array(f"{block}.out")

    def head_inputs(self) -> np.ndarray:
        return self._array("head.in")

    def labels(self) -> torch.Tensor:
        return torch.from_numpy(np.load(self.directory / "labels.npy"))

    def block_batches(
        self, block: str, batch_size: int, shuffle: bool, seed: int = 0, limit: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(input, output) float32 batches of one block, in a seeded order; ``limit``:
        only the first that many images of the order (a seeded subset per epoch)."""
        ins, outs = self.inputs(block), self.outputs(block)
        order = np.arange(len(ins))
        if shuffle:
            order = torch.randperm(len(ins), generator=torch.Generator().manual_seed(seed)).numpy()
        if limit is not None:
            order = order[:limit]
        for start in range(0, len(order), batch_size):
            index = np.sort(order[start : start + batch_size])
            yield as_float(ins[index]), as_float(outs[index])


def as_float(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(array, dtype=np.float32))


def open_cache(directory: str | Path, key: CacheKey | None = None) -> BlockCache:
    """A captured cache; with ``key``, refused unless captured for exactly that."""
    directory = Path(directory)
    meta_path = directory / "meta.json"
    if not meta_path.is_file():
        raise CacheError(f"{directory} is not a block cache (no meta.json)")
    try:
        meta = json.loads(meta_path.read_text())
        found = CacheKey(**{**meta["key"], "input_shape": tuple(meta["key"]["input_shape"])})
    except (ValueError, KeyError, TypeError) as exc:
        raise CacheError(f"{meta_path} does not read: {exc}") from None
    if meta.get("kind") != CACHE_KIND or meta.get("version") != CACHE_VERSION:
        raise CacheError(f"{directory} is not a version-{CACHE_VERSION} cocoi block cache")
    if key is not None and found != key:
        raise CacheError(
            f"block cache {directory} was captured for another run: "
            + "; ".join(key.differences(found))
            + ". Use another --cache folder, or remove this one to capture again"
        )
    return BlockCache(directory, found, list(meta["blocks"]))


def open_or_capture(
    model: nn.Module,
    model_spec: str,
    data: Dataset,
    directory: str | Path,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
) -> BlockCache:
    """The cache of ``data`` under ``directory``: reused when it fits, captured when
    absent, refused when it was captured for another model, weights or data."""
    key = cache_key(model, model_spec, data)
    if (Path(directory) / "meta.json").is_file():
        return open_cache(directory, key)
    return capture(model, key, data, directory, batch_size, progress)
