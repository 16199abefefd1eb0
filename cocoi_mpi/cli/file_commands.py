"""``cocoi convert``: weights and codec checkpoints from .pt to .safetensors, and weights
back (cocoi_mpi.models.tensorfiles has the safetensors form)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UserError
from .common import reported_as

TORCH_SUFFIXES = (".pt", ".pth")


@click.command()
@click.argument("src", metavar="IN", type=click.Path(dir_okay=False))
@click.argument("dst", metavar="OUT", type=click.Path(dir_okay=False))
def convert(src: str, dst: str) -> None:
    """Weights or a codec checkpoint as .safetensors, or weights back to .pt.

    OUT's suffix names the format: .safetensors, or .pt/.pth (torch.save); IN is read
    whatever its name. IN is weights (a state_dict, bare or under "state_dict", or a
    base model from cocoi train) or a codec checkpoint from cocoi train. A base model
    keeps its model, data and log; a codec keeps all but its optimizer state, so a
    .safetensors codec runs (--codec, cocoi accuracy) but does not --resume, and codecs
    convert to .safetensors only."""
    with reported_as(UserError, ValueError):  # e.g. an entry that is not a tensor
        click.echo(convert_file(Path(src), Path(dst)))


def convert_file(src: Path, dst: Path) -> str:
    """Convert ``src`` to ``dst``; the line to print."""
    from ..learned.checkpoint import CHECKPOINT_KIND as CODEC_KIND
    from ..learned.checkpoint import read_codec, write_safetensors_codec
    from ..models.tensorfiles import has_suffix, save_safetensors
    from ..models.training import atomic_torch_save

    if not src.is_file():
        raise UserError(f"file not found: {src}")
    to_safetensors = has_suffix(dst)
    if not to_safetensors and dst.suffix.lower() not in TORCH_SUFFIXES:
        raise UserError(f"{dst}: name it .safetensors or .pt, the suffix chooses the format")
    if dst.exists() and dst.resolve() == src.resolve():
        raise UserError(f"{dst} is the input file; write to another name")
    tensors, meta = _read_tensors(src)
    size = sum(getattr(t, "nbytes", 0) for t in tensors.values())
    done = f"wrote {dst}: {len(tensors)} tensors, {size / 1e6:.1f} MB"
    if meta.get("kind") == CODEC_KIND:
        if not to_safetensors:
            raise UserError(
                f"{src} is a codec: codecs convert to .safetensors only (keep the .pt that "
                "cocoi train wrote for --resume)"
            )
        write_safetensors_codec(dst, read_codec(src))
        return f"{done}, codec for {meta.get('block')} (optimizer state left out: no --resume)"
    if to_safetensors:
        save_safetensors(dst, tensors, meta or None)
    else:
        atomic_torch_save({**meta, "state_dict": tensors} if meta else dict(tensors), dst)
    return done


def _read_tensors(path: Path) -> tuple[dict, dict]:
    """A file's tensors and what cocoi keeps beside them (a base model's or a codec's
    description; {} for a plain state_dict, whose other entries are not carried over)."""
    from ..learned.checkpoint import CHECKPOINT_KIND as CODEC_KIND
    from ..models.inputs import read_error, torch_load
    from ..models.tensorfiles import is_safetensors, load_safetensors, safetensors_error
    from ..models.training import CHECKPOINT_KIND as BASE_KIND

    try:
        if is_safetensors(path):
            return load_safetensors(path)
        obj = torch_load(path)
    except Exception as exc:
        reason = safetensors_error(path, exc) if is_safetensors(path) else read_error(exc)
        raise UserError(f"cannot read {path}: {reason}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        rest = {k: v for k, v in obj.items() if k not in ("state_dict", "optimizer")}
        ours = rest.get("kind") in (BASE_KIND, CODEC_KIND)
        return obj["state_dict"], rest if ours else {}
    if not isinstance(obj, dict):
        raise UserError(f"{path} holds {type(obj).__name__}, not a state_dict or checkpoint")
    return obj, {}
