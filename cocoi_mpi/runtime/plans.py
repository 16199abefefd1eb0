"""The run's plans and what each sweep cell sets on the engine.

Which cells a run serves (:func:`run_cells`); the k of every conv that the latency
model plans (``--k auto``/``star``, or a sweep's ``cocoi:auto``), per (method, m); the
proxies installed for every conv some cell distributes and for the learned scheme's
blocks; one cell's settings (``MasterEngine.configure``); and the rounds' deadlines
(``--round-timeout``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..codes import CONV, scheme_info
from ..codes.safety import check_code, largest_safe_k
from ..engine.proxies import install, install_blocks, type1_convs
from ..experiment.config import RunConfig, scenario_of
from ..experiment.sweep import Cell, cells, parse_sweep, select_part
from ..geometry.layout import install_layout
from ..learned.scheme import LearnedScheme
from .master import MasterEngine

if TYPE_CHECKING:
    from .prepare import MasterJob

AUTO_TIMEOUT_MIN_S = 60.0  # --round-timeout auto: never less than this
AUTO_TIMEOUT_FACTOR = 20.0  # ... and this many times the plan's predicted round time


def run_cells(cfg: RunConfig) -> list[Cell]:
    """The batches to serve: a sweep's interleaved cells, or the one the options name."""
    if cfg.sweep is None:
        return [Cell(cfg.scheme, scenario_of(cfg), 0, cfg.seed)]
    schemes, scenarios, reps = parse_sweep(dict(cfg.sweep), scenario_of(cfg))
    return select_part(cells(schemes, scenarios, reps, cfg.seed), cfg.part)


def base_k(cfg: RunConfig) -> int:
    """The k of layers without a plan (and of every layer when k is an integer)."""
    return cfg.k if isinstance(cfg.k, int) else max(1, cfg.n - 2)


def pieces_per_task(cfg: RunConfig, scheme: str) -> int:
    """m of a scheme: the --code generator's for MDS codes (2 for rotation), else 1."""
    return scheme_info(scheme).pieces_per_task(cfg.code)


def planned_methods(cfg: RunConfig) -> set[tuple[str, int]]:
    """(method, m) pairs some cell plans with: --k auto/star, or sweep entries cocoi:auto."""
    needed = set()
    for cell in run_cells(cfg):
        k = cell.k if cell.k is not None else cfg.k
        if isinstance(k, str):
            needed.add((k, pieces_per_task(cfg, cell.scheme)))
    return needed


def make_plans(cfg: RunConfig, model: torch.nn.Module, input_shape) -> dict[tuple, list]:
    """k per conv from the latency model, and which convs are type-1, per (method, m)."""
    needed = planned_methods(cfg)
    if not needed:
        return {}
    from ..latency.planning import plan_model
    from ..latency.profile import Profile, pi4_profile

    profile = Profile.load(cfg.profile) if cfg.profile else pi4_profile()
    failures = cfg.failures if cfg.scenario in (2, 3) else 0
    cap = largest_safe_k(cfg.code, cfg.n, cfg.systematic, cfg.tolerance)
    plans = {}
    for method, m in sorted(needed):
        entries = plan_model(
            model,
            input_shape,
            cfg.n,
            profile,
            method=method,
            m=m,
            seed=cfg.seed,
            failures=failures,
            k_cap=cap,
        )
        plans[(method, m)] = [plan for _, plan in entries]
    return plans


def check_decoding(cfg: RunConfig, plans: dict[tuple, list]) -> None:
    """Refuse, before any worker is involved, a run whose code cannot decode exactly at
    some k a layer may use: the cells' k (and below: narrow layers tighten it), or the
    largest k a plan picked (codes.safety)."""
    k_max = 0
    for cell in run_cells(cfg):
        info = scheme_info(cell.scheme)
        if not info.uses_code:
            continue
        k = cell.k if cell.k is not None else cfg.k
        if isinstance(k, str):
            planned = [
                p.k for (method, _), entries in plans.items() if method == k for p in entries
            ]
            k_max = max([k_max, *planned])
        else:
            k_max = max(k_max, info.source_k(cfg.n, k))
    if k_max:
        check_code(cfg.code, cfg.n, k_max, cfg.systematic, cfg.tolerance)


def plan_lines(cfg: RunConfig, key: tuple, plans: list) -> list[str]:
    chosen = [p for p in plans if p.distribute]
    head = (
        f"plan (k={key[0]}, m={key[1]}, profile {cfg.profile or 'built-in Pi 4B + WiFi'}): "
        f"{len(chosen)} of {len(plans)} convs distributed"
    )
    body = [
        f"  {p.name}: k={p.k} (k°={p.k_circ}, k*={p.k_star}), predicted "
        f"{p.predicted_s:.3g} s vs local {p.local_s:.3g} s"
        for p in chosen
    ]
    return [head, *body]


def install_for(job: MasterJob, engine: MasterEngine, cfg: RunConfig) -> list:
    """Proxies for every conv some cell distributes, and for the learned scheme's blocks
    (whose codecs the engine was given: :func:`learned_codecs`); then max pools and batch
    norms that keep the coded convs' width-major outputs width-major
    (``layout.install_layout``)."""
    locs = [cb.loc for cb in job.blocks]
    specs = install_convs(job, engine, cfg) if codes_convs(cfg) else []
    job.block_specs = install_blocks(job.model, engine, locs)
    install_layout(job.model)
    return specs


def learned_codecs(blocks: list) -> dict[str, LearnedScheme]:
    """Block name -> the learned scheme of its codec, for the engine."""
    return {cb.name: LearnedScheme(cb.codec) for cb in blocks}


def codes_convs(cfg: RunConfig) -> bool:
    """Does some cell serve a scheme that distributes single convs (not conv blocks)?"""
    return any(scheme_info(cell.scheme).unit == CONV for cell in run_cells(cfg))


def install_convs(job: MasterJob, engine: MasterEngine, cfg: RunConfig) -> list:
    """Proxies for every conv some cell distributes; without plans, all convs but the first."""
    if not job.plans:
        return install(job.model, engine)
    only = {p.name for plans in job.plans.values() for p in plans if p.distribute}
    if any(not isinstance(c.k if c.k is not None else cfg.k, str) for c in run_cells(cfg)):
        job.default_layers = {name for name, _ in type1_convs(job.model, skip_first=True)}
        only |= job.default_layers
    return install(job.model, engine, only=only)


def configure_cell(cfg: RunConfig, job: MasterJob, engine: MasterEngine, cell: Cell) -> None:
    """Scheme, k (or the plan's per-layer k) and faults of one sweep cell."""
    k = cell.k if cell.k is not None else cfg.k
    if isinstance(k, str):
        plans = job.plans[(k, pieces_per_task(cfg, cell.scheme))]
        planned = {p.name: p.k for p in plans if p.distribute}
        active = set(planned)
    else:
        planned, active = {}, job.default_layers if job.plans else None
    scheme_k = k if isinstance(k, int) else base_k(cfg)
    engine.configure(cell.scheme, scheme_k, cell.scenario, cell.fault_seed, planned, active)
    engine.codecs = cell_codecs(job, cell.hybrid)


def cell_codecs(job: MasterJob, hybrid: bool) -> dict[str, LearnedScheme]:
    """The codecs a cell codes with: all of them, or for ``learned:hybrid`` all but the
    model's last conv block's, which then runs on the master (Non-linear*)."""
    codecs = learned_codecs(job.blocks)
    if hybrid:
        codecs.pop(job.last_block, None)
    return codecs


def base_timeout(cfg: RunConfig) -> float | None:
    """A round's deadline in seconds (None: wait as long as it takes)."""
    if cfg.round_timeout == "off":
        return None
    return AUTO_TIMEOUT_MIN_S if cfg.round_timeout == "auto" else float(cfg.round_timeout)


def layer_timeouts(cfg: RunConfig, job: MasterJob) -> dict[str, float]:
    """--round-timeout auto: 20x the plan's predicted latency of each layer, >= 60 s."""
    if cfg.round_timeout != "auto":
        return {}
    return {
        p.name: max(AUTO_TIMEOUT_MIN_S, AUTO_TIMEOUT_FACTOR * p.predicted_s)
        for plans in job.plans.values()
        for p in plans
    }
