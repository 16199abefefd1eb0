"""Sweeps: schemes x scenario levels x repetitions in one MPI job, one HDF5 file.

A config file's ``[sweep]`` table lists them:

    [sweep]
    schemes = ["cocoi:auto", "cocoi:star", "uncoded", "replication", "lt-kl", "lt-ks"]
    repetitions = 5
    scenarios = [{scenario = 2, failures = 0}, {scenario = 2, failures = 1},
                 {scenario = 3, failures = 2}]

A scheme entry may name its k: ``cocoi:auto`` (k° per layer), ``cocoi:star``
(k*), ``cocoi:6``; a bare name uses the run's k. ``learned:hybrid`` is the learned
scheme with the model's last conv block on the master (Non-linear*, as ``--hybrid``
does for a whole run), so both variants can be interleaved in one sweep.

Cells are interleaved: every repetition runs every level, each level runs every
scheme in a seeded shuffled order, so drift of a shared machine hits all schemes
alike. Each (repetition, level) has one fault seed shared by all schemes: they meet
the same failed workers and the same delays (common random numbers). The order and
every cell's faults follow from the seed alone, whichever cells ran before: that is
what lets ``--resume`` serve the rest of a cut-off sweep (cocoi_mpi/experiment/resume.py). Pure.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..codes import RUN_SCHEMES
from ..codes.registry import scheme_info
from .scenarios import Scenario

SWEEP_KEYS = {"schemes", "repetitions", "scenarios"}
SCENARIO_KEYS = {
    "scenario",
    "lambda_tr",
    "failures",
    "straggler_factor",
    "straggler_prob",
    "link_mbps",
}


@dataclass(frozen=True)
class Cell:
    """One request batch of a sweep: which scheme, under what, which repetition.

    ``k`` overrides the run's k for this scheme: an int, "auto" (k°) or "star" (k*);
    None keeps the run's. ``label`` is how the scheme entry was written (cocoi:auto).
    """

    scheme: str
    scenario: Scenario
    repetition: int
    fault_seed: int
    k: int | str | None = None
    label: str = ""
    hybrid: bool = False  # learned:hybrid: the last conv block runs on the master

    @property
    def name(self) -> str:
        return self.label or self.scheme


HYBRID = "hybrid"


def parse_entry(entry: str) -> tuple[str, int | str | None]:
    """'cocoi', 'cocoi:auto', 'cocoi:star', 'lt-ks:6' or 'learned:hybrid' -> (scheme, k);
    k is None for a bare name and for ``:hybrid`` (see :func:`is_hybrid`)."""
    scheme, _, k = str(entry).partition(":")
    if scheme not in RUN_SCHEMES:
        raise ValueError(
            f"sweep scheme {entry!r}: {scheme!r} is not among {', '.join(RUN_SCHEMES)}"
        )
    if k == HYBRID:
        if not scheme_info(scheme).needs_codec:
            raise ValueError(
                f"sweep scheme {entry!r}: only schemes that code conv blocks have a hybrid form"
            )
        return scheme, None
    if not k:
        return scheme, None
    if k in ("auto", "star"):
        return scheme, k
    try:
        return scheme, int(k)
    except ValueError:
        raise ValueError(f"sweep scheme {entry!r}: k must be an integer, auto or star") from None


def is_hybrid(entry: str) -> bool:
    """Does a sweep entry ask for the hybrid (Non-linear*) form?"""
    return str(entry).partition(":")[2] == HYBRID


def parse_sweep(table: dict[str, Any], base: Scenario) -> tuple[list[str], list[Scenario], int]:
    """Validate a [sweep] table; scenario entries override the run's own settings."""
    if "resume" in table:
        raise ValueError("resume is a run setting: put resume = true above [sweep] or in [run]")
    unknown = sorted(set(table) - SWEEP_KEYS)
    if unknown:
        raise ValueError(f"unknown sweep setting(s): {', '.join(unknown)}")
    schemes = [str(s) for s in table.get("schemes", ["cocoi"])]
    if not schemes:
        raise ValueError("sweep schemes is empty")
    for entry in schemes:
        parse_entry(entry)
    reps = table.get("repetitions", 1)
    if not isinstance(reps, int) or isinstance(reps, bool) or reps < 1:
        raise ValueError(f"sweep repetitions must be an integer >= 1, got {reps!r}")
    scenarios = [scenario_entry(entry, base) for entry in table.get("scenarios", [{}])]
    return schemes, scenarios, reps


def scenario_entry(entry: Any, base: Scenario) -> Scenario:
    if not isinstance(entry, dict):
        raise ValueError(f"each sweep scenario must be a table, got {entry!r}")
    unknown = sorted(set(entry) - SCENARIO_KEYS)
    if unknown:
        raise ValueError(f"unknown sweep scenario setting(s): {', '.join(unknown)}")
    fields = {("kind" if key == "scenario" else key): value for key, value in entry.items()}
    return dataclasses.replace(base, **fields)


def parse_part(text: str) -> tuple[int, int]:
    """'3/8' -> (3, 8): the 4th of 8 slices of a sweep (a Slurm array task's share)."""
    index, sep, count = str(text).partition("/")
    if not sep or not index.strip().isdigit() or not count.strip().isdigit():
        raise ValueError(f"part must look like I/N (e.g. 0/8), got {text!r}")
    index, count = int(index), int(count)
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"part {text!r}: need 0 <= I < N")
    return index, count


def select_part(order: list[Cell], part: str | None) -> list[Cell]:
    """Every N-th cell from I: parts stay interleaved, so each sees every scheme alike."""
    if part is None:
        return order
    index, count = parse_part(part)
    if count > len(order):
        raise ValueError(f"part {part}: the sweep has only {len(order)} cells for {count} parts")
    return order[index::count]


def cells(schemes: list[str], scenarios: list[Scenario], reps: int, seed: int) -> list[Cell]:
    """The interleaved order of the sweep (reproducible for a seed)."""
    rng = np.random.default_rng([seed, 3])
    order = []
    for rep in range(reps):
        for level, scenario in enumerate(scenarios):
            fault_seed = int(np.random.default_rng([seed, 4, rep, level]).integers(2**31))
            for i in rng.permutation(len(schemes)):
                scheme, k = parse_entry(schemes[i])
                hybrid = is_hybrid(schemes[i])
                order.append(Cell(scheme, scenario, rep, fault_seed, k, schemes[i], hybrid))
    return order
