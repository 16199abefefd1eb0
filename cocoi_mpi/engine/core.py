"""The master's per-layer logic, independent of how subtasks reach workers.

``Engine.run_conv`` plans a layer (k for this width), splits, encodes, hands the n
subtasks to ``_execute`` (MPI in runtime/master.py, in-process in ``LocalEngine``),
decodes and merges. Proxies installed into any nn.Module call it, so VGG16, ResNet18
and a user's own CNN all go through the same path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from ..codes import Scheme, SchemeInfo, scheme_info
from ..geometry.assembly import Assembly, conv_output_shape, merge
from ..geometry.blocks import BlockSpec, cut_block, probe_block, split_block
from ..geometry.conv import ConvSpec, NotSplittable, layer_k, master_conv
from ..geometry.rounds import ConvRound, Prepared, new_buffer
from ..geometry.units import compute, masks_for, rest_output
from .rows import FAILED_STATUSES, Execution, RoundShortfall, flop_counts, layer_id, no_arithmetic


class Engine:
    """Runs type-1 convs as coded rounds and keeps their trace rows."""

    def __init__(
        self,
        n: int,
        k: int,
        code: str = "stable",
        systematic: bool = False,
        clock: Callable[[], float] = time.perf_counter,
        scheme: str = "cocoi",
    ):
        self.n, self.k, self.code_name, self.systematic = n, k, code, systematic
        self.info: SchemeInfo = scheme_info(scheme)  # what the scheme in use is (registry)
        self.clock = clock
        self.t0 = clock()
        self.request = -1
        self.step = 0  # rounds so far in this request
        self.fault_request = 0
        self.round = 0
        self.bypass = False
        self.rounds: list[dict] = []
        self.subtasks: list[dict] = []
        self._codes: dict[tuple, Scheme] = {}
        self.planned: dict[str, int] = {}  # layer name -> k chosen by the latency model
        self.active: set[str] | None = None  # proxies that distribute now (None: all)
        self.codecs: dict[str, Scheme] = {}  # block name -> its learned scheme
        self._block_splits: dict[tuple, tuple] = {}
        self.on_shortfall = "local"  # a round that cannot decode: run it here, or raise

    def begin_request(self, request: int, fault_request: int | None = None) -> None:
        """Number the rounds of a request from 0: faults are keyed on (request, step)."""
        self.request = request
        self.step = 0
        self.fault_request = request if fault_request is None else fault_request

    @property
    def fault_key(self) -> int:
        return self.fault_request * 100_000 + self.step

    @property
    def scheme(self) -> str:
        return self.info.name

    def use(self, scheme: str, k: int) -> None:
        """Switch scheme and k between requests (sweeps interleave schemes)."""
        self.info, self.k = scheme_info(scheme), k

    def codes(self, unit: str) -> bool:
        """Does the scheme in use distribute this unit (CONV or BLOCK)? A proxy of the
        other unit runs its layers on the master, as a run of that scheme alone would."""
        return self.info.unit == unit

    def code_for(self, k: int) -> Scheme:
        key = (self.info.name, k)
        if key not in self._codes:
            self._codes[key] = self.info.make(self.n, k, self.code_name, self.systematic)
        return self._codes[key]

    @property
    def pieces_per_task(self) -> int:
        return self.code_for(1).pieces_per_task

    def layer_k(self, spec: ConvSpec, width: int) -> int:
        """k for this layer: the plan's or the scheme's k, capped so every piece has a column."""
        k = self.planned.get(spec.name, self.k) if self.info.plannable else self.k
        return layer_k(spec, width, self.info.source_k(self.n, k), self.pieces_per_task)

    def now(self) -> float:
        return self.clock() - self.t0

    @contextmanager
    def local_only(self) -> Iterator[None]:
        """Run proxies as plain convs (the reference forward pass)."""
        old, self.bypass = self.bypass, True
        try:
            yield
        finally:
            self.bypass = old

    def run_conv(self, spec: ConvSpec, x: torch.Tensor) -> torch.Tensor:
        """One coded round for a type-1 conv, or a local conv when it cannot be split.

        The bias is ``spec.bias`` (the module's own, shared): workers add it."""
        try:
            k = self.layer_k(spec, x.shape[3])
        except NotSplittable:
            return local_conv(spec, x)
        t_start = self.now()
        try:
            return self._coded_round(spec, x, self.code_for(k))
        except RoundShortfall as exc:
            return self.fall_back(spec, exc, t_start, lambda: local_conv(spec, x))

    def _coded_round(self, spec: ConvSpec, x: torch.Tensor, code: Scheme) -> torch.Tensor:
        t_start = self.now()
        prep = ConvRound(spec, x, code, alloc=self.alloc, clock=self.now)
        shape = conv_output_shape(spec, x, prep.split)
        assembly = Assembly(prep.split, shape, x.dtype, clock=self.now)
        counts = flop_counts(spec, x, code)
        return self._run_round(spec, prep, code, assembly, t_start, counts)

    def alloc(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A round's subtask-input buffer; the MPI master lends long-lived ones."""
        return new_buffer(shape, dtype)

    def run_block(self, spec: BlockSpec, x: torch.Tensor) -> torch.Tensor:
        """One round of a conv block under its learned code (section V)."""
        code = self.codecs[spec.name]
        t_start = self.now()
        split, reply, flops = self.block_split(spec, x, code.k)
        pieces = cut_block(split, x)[0].contiguous()
        t_split = self.now()
        prep = Prepared(split, x, code.encode(pieces).contiguous(), pieces, reply)
        prep.split_s, prep.encode_s = t_split - t_start, self.now() - t_split
        counts = dict(n_enc=0.0, n_cmp=float(flops), n_dec=0.0)
        try:
            return self._run_round(spec, prep, code, None, t_start, counts)
        except RoundShortfall as exc:
            return self.fall_back(spec, exc, t_start, lambda: spec.layers(x))

    def fall_back(
        self,
        spec: ConvSpec | BlockSpec,
        exc: RoundShortfall,
        t_start: float,
        run_here: Callable[[], torch.Tensor],
    ) -> torch.Tensor:
        """A round too few workers could answer: compute it on the master, flagged in the
        trace (``rounds.fallback``), or re-raise when ``on_shortfall`` is "error"."""
        self.subtasks.extend(exc.rows)
        if self.on_shortfall == "error":
            raise exc
        out = run_here()
        failed = sum(row.get("status") in FAILED_STATUSES for row in exc.rows)
        self.rounds.append(
            dict(
                request=self.request,
                round=self.round,
                layer=spec.name,
                layer_index=layer_id(spec),
                n=self.n,
                start=t_start,
                total_s=self.now() - t_start,
                n_failed=failed,
                fallback=True,
                **dict.fromkeys(("split_s", "encode_s", "decode_s", "merge_s"), 0.0),
            )
        )
        return out

    def block_split(self, spec: BlockSpec, x: torch.Tensor, k: int) -> tuple:
        """The split of a block for this input width, its reply shape and FLOPs (cached)."""
        key = (spec.name, tuple(x.shape[1:]), k)
        if key not in self._block_splits:
            split = split_block(spec, x.shape[3], k)
            reply, flops = probe_block(spec, (x.shape[1], x.shape[2], split.piece_in))
            self._block_splits[key] = (split, reply, flops)
        return self._block_splits[key]

    def _run_round(
        self,
        spec: ConvSpec | BlockSpec,
        prep: ConvRound | Prepared,
        code: Scheme,
        assembly: Assembly | None,
        t_start: float,
        counts: dict,
    ) -> torch.Tensor:
        """Send, collect k of n, decode, merge, and record the round's trace rows.

        A conv round (``assembly``) makes each subtask input as it sends it and puts
        arriving source pieces into the output while it waits; a block round was
        encoded before. send_s is the sending alone, wait_s the waiting alone."""
        split = prep.split
        made_before = prep.split_s + prep.encode_s
        self.round += 1
        self.step += 1
        prep.assembly = assembly
        ex = self._execute(spec, prep, code, self.round)
        made_during = prep.split_s + prep.encode_s - made_before
        t_dec0 = self.now()
        if assembly is not None:
            placed_waiting = assembly.place_s
            used, decode_s = assembly.finish(code, ex.outputs)
            out, merge_s = assembly.out, assembly.place_s
        else:
            placed_waiting = 0.0
            decoded, used = code.decode(ex.outputs)
            decode_s = self.now() - t_dec0
            t_merge = self.now()
            out = merge(decoded, ex.rest, None)
            merge_s = self.now() - t_merge
        if ex.release is not None:
            ex.release()
        t_end = self.now()
        self.rounds.append(
            dict(
                request=self.request,
                round=self.round,
                layer=spec.name,
                layer_index=layer_id(spec),
                k=code.k,
                n=code.n,
                r=code.n - code.k,
                pieces_per_worker=code.pieces_per_task,
                width_out=split.width_out,
                piece_width=split.piece_width,
                remainder_width=split.remainder_width,
                start=t_start,
                split_s=prep.split_s,
                encode_s=prep.encode_s,
                send_s=max(0.0, ex.send_s - made_during),
                wait_s=max(0.0, ex.wait_s - placed_waiting),
                decode_s=decode_s,
                merge_s=merge_s,
                remainder_s=ex.remainder_s,
                total_s=t_end - t_start,
                n_used=len(used),
                n_outstanding=ex.n_outstanding,
                n_failed=ex.n_failed,
                used_workers=",".join(
                    str(r) for r in dict.fromkeys(ex.ranks.get(i, i + 1) for i in used)
                ),
                used_rows=",".join(str(i) for i in used),
                **counts,
                fallback=False,
                systematic_shortcut=no_arithmetic(code, used),
            )
        )
        for row in ex.subtasks:
            if row.get("status", "replied") == "replied":
                row["status"] = "used" if row["code_row"] in used else "late"
        self.subtasks.extend(ex.subtasks)
        return out

    def _execute(self, spec: ConvSpec | BlockSpec, prep, code: Scheme, round_id: int) -> Execution:
        raise NotImplementedError

    def take_rows(self) -> tuple[list[dict], list[dict]]:
        """Round and subtask rows recorded since the last call (for the trace writer)."""
        rounds, subtasks = self.rounds, self.subtasks
        self.rounds, self.subtasks = [], []
        return rounds, subtasks


def local_conv(spec: ConvSpec, x: torch.Tensor) -> torch.Tensor:
    """The layer as the model would compute it, on the master (output width-major)."""
    return master_conv(spec, x)


class LocalEngine(Engine):
    """Workers simulated in-process: exact same maths, no MPI. For tests and checks.

    ``silent`` subtasks never reply; ``order`` (optional) sets the arrival order.
    """

    def __init__(self, n: int, k: int, silent: frozenset[int] = frozenset(), order=None, **kw):
        super().__init__(n, k, **kw)
        self.silent, self.order = frozenset(silent), order

    def _execute(self, spec, prep, code, round_id) -> Execution:
        order = list(self.order) if self.order is not None else list(range(code.n))
        order = [i for i in order if i < code.n]  # narrow layers may use fewer subtasks
        outputs = {
            i: self.subtask_output(spec, prep, code, i) for i in order if i not in self.silent
        }
        issued = code.n
        while not code.decodable(outputs):  # streaming schemes: more symbols until decodable
            j = code.next_subtask(issued)
            if j is None:
                raise RoundShortfall(
                    f"round {round_id}: {len(outputs)} of {code.n} subtasks replied; "
                    f"{code.describe()} cannot decode"
                )
            issued += 1
            outputs[j] = self.subtask_output(spec, prep, code, j)
        return Execution(
            outputs=outputs,
            rest=rest_output(spec, prep),
            n_failed=len(self.silent & set(range(code.n))),
            ranks={i: i + 1 for i in outputs},
        )

    @staticmethod
    def subtask_output(spec, prep, code: Scheme, index: int) -> torch.Tensor:
        """What the worker would reply for subtask ``index`` (the bias scaled as it is)."""
        scales = code.bias_scales(index) if isinstance(spec, ConvSpec) else ()
        return compute(spec, prep.subtask_input(index), masks_for(spec, prep, index), scales)
