"""Serving the requests: the loop over every cell (:class:`Serving`: coded forward,
the check against the local forward, one trace flush per request), the rows it writes,
the lines it prints, and the closing summary.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from ..experiment.config import RunConfig
from ..experiment.progress import echo_line, progress
from ..experiment.resume import resume_at
from ..experiment.summary import RunSummary
from ..experiment.sweep import Cell
from ..traces.writer import TraceWriter
from .master import Interrupted, MasterEngine
from .plans import configure_cell, run_cells
from .protocol import resident_mb
from .signals import SignalFlag

if TYPE_CHECKING:
    from .prepare import MasterJob


@dataclass
class Serving:
    """The request loop of one run, with what each of its steps uses: the options, the
    prepared job, the engine, the open trace, how to print, and whether a signal came."""

    cfg: RunConfig
    job: MasterJob
    engine: MasterEngine
    writer: TraceWriter
    echo: Callable
    signalled: SignalFlag

    def serve(self) -> RunSummary:
        """The request loop over every cell: coded forward, check, one flush per request.

        On a terminal one bar covers every request of every cell (postfix: the cell and
        the last latency); elsewhere one line per request (see
        cocoi_mpi.experiment.progress)."""
        cfg, job = self.cfg, self.job
        plan = run_cells(cfg)
        skip = resume_at(self.writer, self.engine, self.echo)  # cells a cut-off trace holds
        with (
            progress((len(plan) - skip) * job.requests, cfg.model, cfg.quiet, unit="req") as bar,
            job.gc.serving(),
        ):
            return self.serve_cells(plan, bar, skip)

    def serve_cells(self, plan: list[Cell], bar: tqdm, skip: int = 0) -> RunSummary:
        """serve's loop; the bar (live or disabled) advances once per request. The first
        ``skip`` cells are in the trace already: request ids go on after theirs."""
        summary, job = RunSummary(), self.job
        total = len(plan) * job.requests
        first = skip * job.requests
        # Sweeps repeat their inputs in every cell: keep each local forward. One cell
        # never repeats one: keep none (a long run's master stays flat).
        references: dict[int, torch.Tensor] | None = {} if len(plan) - skip > 1 else None
        for cell in plan[skip:]:
            configure_cell(self.cfg, job, self.engine, cell)
            for i in range(job.requests):
                if (signame := self.signalled.name()) is not None:
                    raise Interrupted(f"stopped by {signame}")
                row = self.serve_request(cell, i, first + summary.requests, references)
                summary.add(row)
                bar.set_postfix_str(cell_postfix(row), refresh=False)
                bar.update(1)
                if not self.cfg.quiet:
                    echo_line(bar, self.echo, progress_line(total, row))
        return summary

    def serve_request(
        self, cell: Cell, i: int, req: int, references: dict[int, torch.Tensor] | None
    ) -> dict:
        """Request ``req`` (input i of the cell): the coded forward, its rows into the
        trace, one flush; returns its row of the requests table."""
        job, engine, writer = self.job, self.engine, self.writer
        job.gc.begin()  # no automatic collection until the request is written
        x = job.input_for(i)
        ref = self.reference(i, references)
        engine.begin_request(req, fault_request=i)
        engine.poll_late()
        t0, cpu0 = engine.now(), time.process_time()
        with torch.no_grad():
            logits = job.model(x)
        t1, cpu = engine.now(), time.process_time() - cpu0
        rounds, subtasks = engine.take_rows()
        row = request_row(self.cfg, cell, req, t0, t1, logits, ref, rounds)
        if job.labels is not None:
            row["label"] = int(job.labels[i % len(job.labels)])
        row["master_rss_mb"] = resident_mb()
        row["master_cpu_s"] = cpu
        writer.append("rounds", rounds)
        writer.append("subtasks", subtasks)
        job.sends.write(writer, engine.take_sends())
        writer.append("requests", [row])
        writer.append_logits(logits[0].numpy())
        writer.flush()
        job.gc.end()  # the collection that is due runs here, between requests, timed
        return row

    def reference(self, i: int, cache: dict[int, torch.Tensor] | None) -> torch.Tensor | None:
        """The local forward of input i; kept in ``cache`` (if given) for the next cell."""
        if not self.cfg.check:
            return None
        job = self.job
        key = i % len(job.inputs)
        if cache is not None and key in cache:
            return cache[key]
        with torch.no_grad(), self.engine.local_only():
            ref = job.model(job.input_for(i))
        if cache is not None:
            cache[key] = ref
        return ref


def cell_postfix(row: dict) -> str:
    """The bar's postfix: which cell is being served and the last request's latency."""
    return (
        f"{row['scheme']}, scenario {row['scenario']}, level {row['level']:g}, "
        f"rep {row['repetition']}: {row['latency']:.3f} s"
    )


def request_row(
    cfg: RunConfig,
    cell: Cell,
    req: int,
    t0: float,
    t1: float,
    logits: torch.Tensor,
    ref: torch.Tensor | None,
    rounds: list[dict],
) -> dict:
    """One row of the requests table, with the check against the local forward."""
    row = dict(
        request=req,
        scheme=cell.name,
        scenario=cell.scenario.kind,
        level=cell.scenario.level,
        repetition=cell.repetition,
        k=cell_k if isinstance(cell_k := (cell.k if cell.k is not None else cfg.k), int) else -1,
        start=t0,
        end=t1,
        latency=t1 - t0,
        predicted=int(logits.argmax()),
        n_rounds=len(rounds),
        encode_s=sum(r["split_s"] + r["encode_s"] for r in rounds),
        decode_s=sum(r["decode_s"] + r["merge_s"] for r in rounds),
        distributed_s=sum(r["total_s"] for r in rounds),
    )
    if ref is not None:
        err = float((logits - ref).abs().max())
        row.update(
            reference_predicted=int(ref.argmax()),
            max_abs_err=err,
            rel_err=err / max(float(ref.abs().max()), 1e-30),
        )
    return row


def progress_line(total: int, row: dict) -> str:
    share = 100.0 * (row["encode_s"] + row["decode_s"]) / row["latency"]
    line = (
        f"request {row['request'] + 1}/{total} [{row['scheme']}, scenario {row['scenario']}"
        f", level {row['level']:g}, rep {row['repetition']}]: {row['latency']:.3f} s, "
        f"{row['n_rounds']} coded rounds, encode+decode {share:.1f}%, top-1 {row['predicted']}"
    )
    if "rel_err" in row:
        line += f", rel err {row['rel_err']:.1e}"
    return line


def echo_summary(cfg: RunConfig, job: MasterJob, summary: RunSummary, echo: Callable) -> int:
    """The closing lines; exit code 3 when an exact scheme's result does not match the
    local one (learned codes are approximate by design: their agreement is reported)."""
    coded = f", {len(job.specs)} type-1 convs" if job.specs else ""
    if job.blocks:
        coded += f", learned codes on {', '.join(cb.name for cb in job.blocks)}"
    echo(
        f"{cfg.model}: {summary.requests} requests on n={cfg.n} workers, k={cfg.k}, "
        f"code={cfg.code}{'-sys' if cfg.systematic else ''}{coded}"
    )
    echo(
        f"latency mean {summary.latency_mean:.3f} s (min {summary.latency_min:.3f}, max "
        f"{summary.latency_max:.3f}); encode+decode {summary.coding_share:.1f}% of it"
    )
    for line in summary.accuracy_lines():
        echo(line)
    code = 0
    learned, exact = summary.learned, summary.exact
    if cfg.check and learned.count:
        echo(
            f"learned codes (approximate): top-1 equal to the local forward "
            f"{learned.same_top1}/{learned.count}, max |err|/max|logit| = "
            f"{learned.worst_rel_err:.2e}"
        )
    if cfg.check and exact.count:
        ok = exact.worst_rel_err <= cfg.tolerance and exact.same_top1 == exact.count
        echo(
            f"check against local forward: max |err|/max|logit| = {exact.worst_rel_err:.2e} "
            f"(tolerance {cfg.tolerance:.0e}), top-1 identical {exact.same_top1}/"
            f"{exact.count}: {'OK' if ok else 'FAILED'}"
        )
        code = 0 if ok else 3
    echo(f"wrote {job.path}")
    return code
