"""The master's per-round coding work, per distributed conv, beside its memory floor.

    python benchmarks/bench_master.py --model all --markdown
    python benchmarks/bench_master.py --model vgg16 --k 8 --missing 1 --reps 9

For each distributed conv of VGG16 and ResNet18 (224x224, one image) at n = 10 and
the given k (capped per layer by ``layer_k``), the master's four phases of one round
are timed on the conv's real input (captured with forward hooks), stored width-major
as the runtime keeps it (geometry/layout.py):

- split:  ``ConvRound.subtask_input(i)`` for the k systematic subtasks;
- encode: ``subtask_input(k)``, which makes the n-k parity inputs in one product;
- decode: ``LinearCode.decode_missing`` with e source outputs missing;
- merge:  ``Assembly.finish`` with the k systematic outputs: every piece copied into
          the layer output (what the master does when nothing is missing and no reply
          was received in place, its few microseconds of decode bookkeeping included;
          the workers add the bias).

Each phase is the median of ``--reps`` runs after one warm-up, on one torch thread,
in the thread's CPU time (``--clock wall`` for wall time: on a shared machine that
also counts the time other processes ran instead). Its floor is the bytes it must
read and write over this machine's copy bandwidth, measured (same clock) with
``dst.copy_(src)`` on 64 MiB (read + write). The whole layer's conv on one thread is
printed for scale. See docs/master.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from cocoi_mpi.codes.linear import LinearCode
from cocoi_mpi.engine.proxies import type1_convs
from cocoi_mpi.geometry.assembly import Assembly, conv_output_shape
from cocoi_mpi.geometry.conv import ConvSpec, conv_spec, layer_k, worker_conv
from cocoi_mpi.geometry.layout import width_major
from cocoi_mpi.geometry.rounds import ConvRound
from cocoi_mpi.models import build_model, input_shape

N = 10
MODELS = ("vgg16", "resnet18")
# What a phase's time is: the master thread's CPU time (default: on a shared machine,
# time spent preempted by other processes is not the master's work) or wall time.
CLOCKS = {"cpu": time.thread_time, "wall": time.perf_counter}
clock = CLOCKS["cpu"]
COPY_BYTES = 64 * 2**20
FLOAT_BYTES = 4


@dataclass(frozen=True)
class Layer:
    """One distributed conv and the input it saw in a real forward pass."""

    name: str
    conv: nn.Conv2d
    spec: ConvSpec
    x: torch.Tensor


@dataclass
class Row:
    """Seconds and floor seconds per phase for one layer at one k."""

    name: str
    shape: str
    k: int
    time: dict[str, float] = field(default_factory=dict)
    floor: dict[str, float] = field(default_factory=dict)
    conv: float = 0.0


def median_seconds(
    run: Callable[[object], object], reps: int, prepare: Callable[[], object] = lambda: None
) -> float:
    """Median wall time of ``run(prepare())`` over ``reps`` runs after one warm-up.

    ``prepare`` is not timed: it builds the state one round starts from (a fresh
    ConvRound or Assembly), so each repetition does the phase's work once, not a
    cached no-op."""
    times = []
    for rep in range(reps + 1):
        state = prepare()
        t0 = clock()
        run(state)
        if rep:  # the first run is the warm-up (code caches, first touch of buffers)
            times.append(clock() - t0)
    return statistics.median(times)


def copy_bandwidth(reps: int) -> float:
    """Bytes per second of a large contiguous float32 copy, counting read + write.

    64 MB is far beyond the caches, so this is what a streaming pass can reach."""
    src = torch.rand(COPY_BYTES // FLOAT_BYTES)
    dst = torch.empty_like(src)
    seconds = median_seconds(lambda _: dst.copy_(src), reps)
    return 2 * COPY_BYTES / seconds


def capture_inputs(model_name: str) -> list[Layer]:
    """Every distributed conv with its input from one forward pass on a seeded image."""
    model = build_model(model_name)
    seen: dict[str, torch.Tensor] = {}

    def record(name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            seen.setdefault(name, inputs[0])  # returning a value would replace the output

        return hook

    hooks = [conv.register_forward_hook(record(name)) for name, conv in type1_convs(model)]
    gen = torch.Generator().manual_seed(0)
    model(torch.randn((1, *input_shape(model_name)), generator=gen))
    for hook in hooks:
        hook.remove()
    return [
        Layer(name, conv, conv_spec(i, name, conv), width_major(seen[name].detach()))
        for i, (name, conv) in enumerate(type1_convs(model))
    ]


def lent_buffer() -> Callable[[tuple[int, ...], torch.dtype], torch.Tensor]:
    """An ``alloc`` that returns the same buffer each round, as the MPI master's pool
    does: the split then pays for its copy, not for first-touch page faults."""
    pool: dict[tuple, torch.Tensor] = {}

    def alloc(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return pool.setdefault((shape, dtype), torch.empty(shape, dtype=dtype))

    return alloc


def make_sources(round_: ConvRound, k: int) -> ConvRound:
    for i in range(k):
        round_.subtask_input(i)
    return round_


def worker_outputs(layer: Layer, round_: ConvRound, n: int) -> dict[int, torch.Tensor]:
    """What the n workers would return: each subtask input convolved once (untimed)."""
    code = round_.code
    return {
        i: worker_conv(layer.spec, round_.subtask_input(i), code.bias_scales(i)) for i in range(n)
    }


def arrived(outputs: dict[int, torch.Tensor], k: int, e: int) -> tuple[dict, list[int]]:
    """The k outputs a round decodes from when the first e sources are missing:
    the other k-e sources and the first e parities, in that order."""
    missing = list(range(e))
    used = [i for i in range(k) if i not in missing] + list(range(k, k + e))
    return {i: outputs[i] for i in used}, missing


def decode_seconds(code: LinearCode, outputs: dict[int, torch.Tensor], e: int, reps: int) -> float:
    got, lost = arrived(outputs, code.k, e)
    return median_seconds(lambda _: code.decode_missing(got, lost), reps)


def merge_all(assembly: Assembly, code: LinearCode, outputs: dict[int, torch.Tensor]) -> None:
    """The whole merge of a round with nothing missing: place the k source outputs
    through the same ``finish`` the master calls."""
    assembly.finish(code, {i: outputs[i] for i in range(code.k)})


def conv_seconds(layer: Layer, reps: int) -> float:
    """The whole layer as one F.conv2d on the master's thread: the scale to judge by."""
    conv, x = layer.conv, layer.x.contiguous()
    args = (conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    return median_seconds(lambda _: F.conv2d(x, *args), reps)


def time_layer(
    layer: Layer, k_max: int, n: int, missing: list[int], reps: int, bandwidth: float
) -> Row:
    """Time the four phases of one round of ``layer`` and compute their floors."""
    x, spec = layer.x, layer.spec
    k = layer_k(spec, x.shape[3], k_max, 1)
    code = LinearCode(n, k)
    alloc = lent_buffer()

    def new_round() -> ConvRound:
        return ConvRound(spec, x, code, alloc=alloc)

    row = Row(layer.name, "x".join(str(d) for d in x.shape[1:]), k)
    row.time["split"] = median_seconds(lambda r: make_sources(r, k), reps, new_round)
    row.time["encode"] = median_seconds(
        lambda r: r.subtask_input(k), reps, lambda: make_sources(new_round(), k)
    )
    round_ = new_round()
    outputs = worker_outputs(layer, round_, n)
    for e in missing:
        row.time[f"decode e={e}"] = decode_seconds(code, outputs, e, reps)
    out_shape = conv_output_shape(spec, x, round_.split)
    row.time["merge"] = median_seconds(
        lambda a: merge_all(a, code, outputs),
        reps,
        lambda: Assembly(round_.split, out_shape, x.dtype),
    )
    piece_in = round_.buffer[0].numel() * FLOAT_BYTES
    piece_out = outputs[0].numel() * FLOAT_BYTES
    row.floor = floors(k, n, missing, piece_in, piece_out, out_shape, bandwidth)
    return row


def floors(
    k: int,
    n: int,
    missing: list[int],
    piece_in: int,
    piece_out: int,
    out_shape: tuple[int, ...],
    bandwidth: float,
) -> dict[str, float]:
    """Seconds each phase needs at copy bandwidth for the bytes it cannot avoid.

    split reads and writes k input pieces; encode reads the k sources once and writes
    n-k parities; decode reads the k outputs it uses and writes e pieces; merge reads
    and writes the layer output."""
    out_bytes = FLOAT_BYTES * torch.Size(out_shape).numel()
    bytes_ = {"split": 2 * k * piece_in, "encode": n * piece_in, "merge": 2 * out_bytes}
    for e in missing:
        bytes_[f"decode e={e}"] = (k + e) * piece_out if e else 0
    return {phase: b / bandwidth for phase, b in bytes_.items()}


def phases(missing: list[int]) -> list[str]:
    return ["split", "encode", *(f"decode e={e}" for e in missing), "merge"]


def coding_total(row: Row, missing: list[int]) -> float:
    """split + encode + merge + the decode of the most missing pieces asked for."""
    worst = f"decode e={max(missing)}" if missing else None
    return sum(row.time[p] for p in ("split", "encode", "merge", worst) if p)


def total_row(rows: list[Row], missing: list[int]) -> Row:
    total = Row("total", "", 0)
    for phase in phases(missing):
        total.time[phase] = sum(r.time[phase] for r in rows)
        total.floor[phase] = sum(r.floor[phase] for r in rows)
    total.conv = sum(r.conv for r in rows)
    return total


def cell(seconds: float, floor: float) -> str:
    """'time / floor (ratio)' in microseconds."""
    ratio = f"{seconds / floor:.1f}x" if floor > 0 else "-"
    return f"{us(seconds)} / {us(floor)} ({ratio})"


def us(seconds: float) -> str:
    micro = seconds * 1e6
    return f"{micro:.1f}" if micro < 10 else f"{micro:.0f}"


def table(rows: list[Row], missing: list[int], markdown: bool) -> str:
    """One line per layer plus the total, markdown or aligned plain text."""
    head = ["layer", "C_in x H x W", "k", *phases(missing), "conv 1 thr", "coding % conv"]
    lines = [head]
    for row in [*rows, total_row(rows, missing)]:
        cells = [cell(row.time[p], row.floor[p]) for p in phases(missing)]
        share = 100 * coding_total(row, missing) / row.conv
        k = str(row.k) if row.k else ""
        lines.append([row.name, row.shape, k, *cells, us(row.conv), f"{share:.1f}"])
    if markdown:
        rule = ["---"] * len(head)
        return "\n".join("| " + " | ".join(line) + " |" for line in [head, rule, *lines[1:]])
    widths = [max(len(line[c]) for line in lines) for c in range(len(head))]
    return "\n".join(
        "  ".join(s.ljust(w) for s, w in zip(line, widths, strict=True)) for line in lines
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=(*MODELS, "all"), default="all")
    parser.add_argument("--k", type=int, action="append", help="source pieces (default 8, 7)")
    parser.add_argument("--n", type=int, default=N, help="subtasks per round")
    parser.add_argument("--missing", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--reps", type=int, default=15, help="timed runs per phase (median)")
    parser.add_argument(
        "--clock", choices=tuple(CLOCKS), default="cpu", help="thread CPU time or wall time"
    )
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    args.k = args.k or [8, 7]
    if any(not 0 <= e <= args.n - k for e in args.missing for k in args.k):
        parser.error("--missing must be between 0 and n - k")
    return args


def main(argv: list[str] | None = None) -> None:
    global clock
    args = parse_args(argv)
    clock = CLOCKS[args.clock]
    torch.set_num_threads(1)
    started = time.perf_counter()
    bw = copy_bandwidth(max(args.reps, 15))
    print(f"copy bandwidth (read + write, {COPY_BYTES >> 20} MiB): {bw / 1e9:.2f} GB/s")
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{args.clock} times in us, median of {args.reps}; cells are time / floor (ratio)")
    print(f"coding % = (split + encode + decode e={max(args.missing)} + merge) / conv\n")
    models = MODELS if args.model == "all" else (args.model,)
    with torch.no_grad():
        for model in models:
            layers = capture_inputs(model)
            conv_s = [conv_seconds(layer, args.reps) for layer in layers]
            for k in args.k:
                rows = [time_layer(lay, k, args.n, args.missing, args.reps, bw) for lay in layers]
                for row, seconds in zip(rows, conv_s, strict=True):
                    row.conv = seconds
                print(f"### {model}, n = {args.n}, k = {k}\n")
                print(table(rows, args.missing, args.markdown) + "\n")
    print(
        f"load average at end: {os.getloadavg()[0]:.1f}; ran {time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
