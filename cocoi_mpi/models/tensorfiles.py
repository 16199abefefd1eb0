"""safetensors files: weights and codec checkpoints without pickle.

A safetensors file is an 8-byte little-endian header length, a JSON header (each
tensor's dtype, shape and byte range, and a ``__metadata__`` map of strings), then the
raw tensor bytes. What cocoi stores beside the tensors (a base model's log, a codec's
description) is one JSON document under the metadata key ``"cocoi"``; ``"format":
"pt"`` is there too, as other tools expect. Reading never runs code from the file.

A file is read as safetensors when its name ends in ``.safetensors`` or when its first
bytes are a safetensors header (so a safetensors file named ``.pt`` loads too); any
other file goes to ``torch.load``. :func:`safetensors_error` words what went wrong in
one line, as :func:`~cocoi_mpi.models.inputs.read_error` does for torch files.
"""

from __future__ import annotations

import json
import os
import struct
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

import torch

__all__ = [
    "SUFFIX",
    "atomic_write",
    "has_suffix",
    "is_safetensors",
    "load_safetensors",
    "safetensors_error",
    "save_safetensors",
]

SUFFIX = ".safetensors"
META_KEY = "cocoi"
MAX_HEADER = 100_000_000  # the safetensors package refuses larger headers
_ZIP = b"PK\x03\x04"  # how torch.save's files begin


def has_suffix(path: str | Path) -> bool:
    """Named as a safetensors file: the suffix chooses the format a file is written in."""
    return Path(path).suffix.lower() == SUFFIX


def is_safetensors(path: str | Path) -> bool:
    """Read as safetensors: named so, or beginning with a safetensors header."""
    if has_suffix(path):
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return 2 <= length <= MAX_HEADER and head[8:9] == b"{"


def load_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The file's tensors (on the CPU, in file order) and cocoi's metadata ({} if none)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as handle:
        meta = handle.metadata() or {}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    text = meta.get(META_KEY)
    if text is None:
        return tensors, {}
    try:
        extra = json.loads(text)
    except ValueError:
        raise ValueError(f"its {META_KEY!r} metadata is not valid JSON") from None
    if not isinstance(extra, dict):
        raise ValueError(f"its {META_KEY!r} metadata is not a JSON object")
    return tensors, extra


def save_safetensors(
    path: str | Path, tensors: Mapping[str, object], meta: Mapping | None = None
) -> None:
    """Write ``tensors`` (and ``meta`` as JSON) atomically: an interrupted save leaves
    the previous file, and no half file, at ``path``.

    Tensors are moved to the CPU and made contiguous. A safetensors file cannot hold
    two names for one storage (tied weights): such entries are written as copies and
    load back as equal tensors. Anything that is not a tensor is a ValueError.
    """
    from safetensors.torch import save

    plain = _plain_tensors(tensors)
    metadata = {"format": "pt"}
    if meta:
        metadata[META_KEY] = json.dumps(meta)
    # The file's bytes in memory (save_file would write the file its own way, past
    # atomic_write's fsync and permissions): VGG16's 528 MB twice over, for a moment.
    atomic_write(Path(path), lambda handle: handle.write(save(plain, metadata)))


def _plain_tensors(tensors: Mapping[str, object]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(
                f"{key} is {type(value).__name__}, not a tensor: a safetensors file holds "
                "tensors only"
            )
        tensor = value.detach().cpu().contiguous()
        if tensor.nbytes:
            storage = tensor.untyped_storage().data_ptr()
            if storage in seen:
                tensor = tensor.clone()  # shares memory with an earlier entry
            seen.add(storage)
        out[key] = tensor
    return out


def safetensors_error(path: str | Path, exc: BaseException) -> str:
    """One line on why a safetensors file did not read: the package's own text names a
    symptom ("invalid header length"); the file's size says which part is missing."""
    if type(exc).__name__ != "SafetensorError":
        from .inputs import read_error

        lines = str(exc).strip().splitlines()
        return lines[0] if isinstance(exc, ValueError) and lines else read_error(exc)
    try:
        return _diagnose(Path(path))
    except OSError as err:
        return f"{type(err).__name__}: {err}"


def _diagnose(path: Path) -> str:
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if size < 8:
            return "the file is empty or truncated" if size else "the file is empty"
        (length,) = struct.unpack("<Q", head)
        if head.startswith(_ZIP):
            return "not a safetensors file (it is a zip archive, as torch.save writes: a .pt)"
        start = handle.read(1)
        if length > MAX_HEADER or length < 2 or start not in (b"{", b""):
            return "not a safetensors file (no JSON header after its first 8 bytes)"
        if 8 + length > size:
            return (
                f"truncated safetensors file (it ends inside its header: {size:,} bytes, "
                f"the header alone needs {8 + length:,})"
            )
        handle.seek(8)
        raw = handle.read(length)
    try:
        header = json.loads(raw)
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (ValueError, TypeError, KeyError, IndexError):
        return "corrupt safetensors file (its header is not a valid safetensors header)"
    expected = 8 + length + max(ends, default=0)
    if size < expected:
        return (
            f"truncated safetensors file ({size:,} of {expected:,} bytes: its tensors are cut off)"
        )
    if size > expected:
        return f"corrupt safetensors file ({size - expected:,} bytes past its last tensor)"
    return "corrupt safetensors file (its header does not describe its tensors)"


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write`` on a temp file in the same folder, fsync, then os.replace it onto
    ``path``: an interrupted save never leaves half a file, nor a temp file.

    The temp file is opened normally (not with mkstemp) so the result gets the usual
    umask permissions rather than 0600.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with temp.open("xb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
