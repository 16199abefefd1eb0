"""Cost of learned codecs (SparseMLP, Conv, MLP) on VGG16-size conv blocks.

    python benchmarks/bench_codecs.py                    # block 4, k=4, r=2
    python benchmarks/bench_codecs.py --block all --repeats 10 --json codecs.json

For each architecture, encoder and decoder: parameters, FLOPs (2 * MACs of the conv
and linear layers), and the time of one batch-1 forward on one thread; next to the
FLOPs of the block itself on one piece, the work the code adds overhead to.
Networks above MAX_PARAMS are not built: their sizes are known in closed form.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass

import torch

from cocoi_mpi.learned.scheme import (
    ARCHS,
    count_flops,
    count_params,
    decoder_mlp_widths,
    default_hidden,
    encoder_mlp_widths,
    make_decoder,
    make_encoder,
    mlp_flops,
    mlp_params,
)

MAX_PARAMS = 2e8
BYTES_PER_PARAM = 4  # float32
BENCH_ARCHS = ("sparsemlp", "conv", "mlp")
assert set(BENCH_ARCHS) == set(ARCHS)


@dataclass(frozen=True)
class Block:
    """Three 3x3 pad-1 convs of VGG16 on a (c_in, size, size) input."""

    name: str
    c_in: int
    c_out: int
    size: int
    convs: int = 3

    def piece_shapes(self, k: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """Input piece (halo of one column per side per conv) and output piece."""
        w_out = self.size // k
        return (self.c_in, self.size, w_out + 2 * self.convs), (self.c_out, self.size, w_out)

    def piece_flops(self, k: int) -> int:
        """2 * MACs of the block on one piece: no width padding inside it, height kept."""
        (_, height, width), _ = self.piece_shapes(k)
        flops, c_in = 0, self.c_in
        for _ in range(self.convs):
            width -= 2
            flops += 2 * self.c_out * height * width * c_in * 9
            c_in = self.c_out
        return flops


BLOCKS = {
    "4": Block("vgg16 conv4_1..3", 256, 512, 28),
    "5": Block("vgg16 conv5_1..3", 512, 512, 14),
}


def time_forward(module: torch.nn.Module, shape: tuple, repeats: int) -> tuple[float, float]:
    """(mean, min) seconds of one forward after a warm-up call."""
    x = torch.randn(shape)
    times = []
    with torch.no_grad():
        module(x)
        for _ in range(repeats):
            t0 = time.perf_counter()
            module(x)
            times.append(time.perf_counter() - t0)
    return sum(times) / len(times), min(times)


def mlp_size(part: str, k: int, r: int, shape) -> tuple[int, int]:
    """(params, FLOPs at batch 1) of an MLP encoder or decoder, without building it."""
    widths = (encoder_mlp_widths if part == "encoder" else decoder_mlp_widths)(k, r, shape)
    return mlp_params(widths), mlp_flops(widths, channels=shape[0])


def measure(arch: str, part: str, k: int, r: int, shape, repeats: int) -> dict:
    """One row: the network's size, FLOPs and timing (or why it was not timed)."""
    pieces_in = k if part == "encoder" else k + r
    input_shape = (1, pieces_in, *shape)
    row = {"arch": arch, "part": part, "input": list(input_shape)}
    if arch == "mlp":
        params, flops = mlp_size(part, k, r, shape)
        if params > MAX_PARAMS:
            gb = params * BYTES_PER_PARAM / 1e9
            return {**row, "params": params, "flops": flops, "too_large_gb": gb}
    build = make_encoder if part == "encoder" else make_decoder
    torch.manual_seed(0)
    module = build(arch, k, r, shape, default_hidden(arch, k, r))
    mean_s, min_s = time_forward(module, input_shape, repeats)
    params, flops = count_params(module), count_flops(module, input_shape)
    return {**row, "params": params, "flops": flops, "mean_s": mean_s, "min_s": min_s}


def bench_block(block: Block, k: int, r: int, repeats: int) -> dict:
    in_shape, out_shape = block.piece_shapes(k)
    rows = [
        measure(arch, part, k, r, shape, repeats)
        for arch in BENCH_ARCHS
        for part, shape in (("encoder", in_shape), ("decoder", out_shape))
    ]
    return {
        "block": block.name,
        "k": k,
        "r": r,
        "in_shape": list(in_shape),
        "out_shape": list(out_shape),
        "block_piece_flops": block.piece_flops(k),
        "rows": rows,
    }


def timing_cells(row: dict) -> str:
    if "too_large_gb" in row:
        cell = f"n/a (too large: {row['too_large_gb']:.1f} GB)"
        return f"{cell} | {cell}"
    return f"{1e3 * row['mean_s']:.2f} | {1e3 * row['min_s']:.2f}"


def format_block(result: dict) -> str:
    block_flops = result["block_piece_flops"]
    lines = [
        f"### {result['block']}, k={result['k']}, r={result['r']}: input piece "
        f"{tuple(result['in_shape'])}, output piece {tuple(result['out_shape'])}",
        f"block on one piece: {block_flops / 1e6:,.1f} MFLOPs\n",
        "| arch | part | params | MFLOPs | FLOPs / block piece | mean ms | min ms |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['arch']} | {row['part']} | {row['params']:,} | {row['flops'] / 1e6:,.1f} | "
            f"{100 * row['flops'] / block_flops:.1f}% | {timing_cells(row)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block", choices=[*BLOCKS, "all"], default="4")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--r", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", metavar="PATH", help="also write the numbers here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = list(BLOCKS) if args.block == "all" else [args.block]
    results = []
    for name in names:
        results.append(bench_block(BLOCKS[name], args.k, args.r, args.repeats))
        print(format_block(results[-1]) + "\n", flush=True)
    print(f"batch 1, 1 thread, {args.repeats} timed runs after one warm-up")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"threads": 1, "repeats": args.repeats, "blocks": results}, fh, indent=1)


if __name__ == "__main__":
    main()
