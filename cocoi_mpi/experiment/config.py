"""One RunConfig: defaults < TOML file < command line, validated before any MPI traffic.

Every rank parses and validates the same arguments, so a bad setting fails on all
ranks at once without a message exchanged (rank 0 alone prints it): no hang.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..codes import BLOCK, CODES, scheme_info, schemes_coding
from ..engine.core import SHORTFALL_POLICIES
from ..errors import UserError
from .scenarios import PAPER_STRAGGLER_FACTOR, Crash, Scenario, parse_crashes
from .sweep import cells, parse_entry, parse_sweep, select_part


class ConfigError(UserError, ValueError):
    """A setting is missing, unknown or out of range; the message names it."""


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs to know; recorded as JSON in the HDF5 file."""

    model: str = "vgg16"
    weights: str | None = None
    input: str | None = None
    requests: int | None = None  # default: 1, or the whole test split with --data
    n: int | None = None  # workers; default: world size - 1
    k: int | str | None = None  # per layer; "auto" (k°), "star" (k*); default max(1, n - 2)
    profile: str | None = None  # latency profile (cocoi fit) for --k auto/star; default Pi 4B
    scheme: str = "cocoi"  # one of codes.RUN_SCHEMES (the registry)
    code: str = "stable"
    systematic: bool = False
    scenario: int = 0  # 0 none, 1 straggling, 2 failures, 3 failures + one straggler
    lambda_tr: float = 0.0  # scenario 1: extra delay scale, in units of transmission time
    failures: int = 0  # scenarios 2, 3: workers failing in each round
    straggler_factor: float = PAPER_STRAGGLER_FACTOR  # scenario 3: compute slowdown
    straggler_prob: float = 0.8  # scenario 3: chance the straggler is slow in a round
    link_mbps: float = 0.0  # emulated link bandwidth per transfer; 0 = off
    seed: int = 0
    out: str | None = None
    name: str | None = None
    check: bool = True
    tolerance: float = 1e-4  # max |coded - local| / max |local logit| for the check
    threads: int = 0  # torch threads per rank; 0: cores / ranks on this node
    silent: tuple[int, ...] = field(default_factory=tuple)  # worker ranks that never reply
    quiet: bool = False
    sweep: dict | None = None  # a [sweep] table: schemes x scenarios x repetitions
    codec: tuple[str, ...] = field(default_factory=tuple)  # learned-code checkpoints, one per block
    hybrid: bool = False  # learned scheme: run the model's last conv block on the master
    data: str | None = None  # dataset whose test split is the input (digits, mnist:DIR, ...)
    round_timeout: float | str = "auto"  # seconds, "auto" (from the plan) or "off"
    on_shortfall: str = "local"  # a round too few live workers can answer: local or error
    crash: tuple = field(default_factory=tuple)  # fault drills, scenarios.Crash entries
    part: str | None = None  # "I/N": serve every N-th sweep cell from I (job arrays)
    cpu_share: float = 0.0  # testbed: cores each worker is confined to (cgroups); 0 = off
    master_cpu_share: float = 0.0  # testbed: cores the master is confined to; 0 = unconfined
    resume: bool = False  # go on with a cut-off trace at `out` (see cocoi_mpi/experiment/resume.py)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name for f in dataclasses.fields(RunConfig)}


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file; its keys are RunConfig fields (a [run] table also works)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:  # binary junk: TOML is UTF-8 text
        msg = f"config file {path} is not valid TOML: not UTF-8 text ({exc.reason})"
        raise ConfigError(msg) from None
    except OSError as exc:  # a folder, no permission, ...
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    if "run" in data:  # settings may sit in a [run] table beside [sweep]
        if not isinstance(data["run"], dict):
            raise ConfigError(f"config file {path}: 'run' must be a table ([run]), not a value")
        data = {**data.pop("run"), **data}
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        raise ConfigError(f"unknown setting(s) in {path}: {', '.join(unknown)}")
    return data


def build_config(file: str | None, overrides: dict[str, Any], world_size: int) -> RunConfig:
    """Merge file and CLI values (CLI wins; None means 'not given') and validate."""
    values = load_toml(file) if file else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    if "silent" in values:
        values["silent"] = parse_ranks(values["silent"])
    if "codec" in values:
        values["codec"] = parse_paths(values["codec"])
    if "crash" in values:
        values["crash"] = parse_crash_option(values["crash"])
    if isinstance(values.get("round_timeout"), str):
        values["round_timeout"] = parse_timeout(values["round_timeout"])
    check_types(values)
    try:
        cfg = RunConfig(**values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
    return resolve(cfg, world_size)


TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,),
    "weights": (str,),
    "input": (str,),
    "code": (str,),
    "out": (str,),
    "name": (str,),
    "requests": (int,),
    "n": (int,),
    "k": (int, str),
    "profile": (str,),
    "seed": (int,),
    "threads": (int,),
    "systematic": (bool,),
    "check": (bool,),
    "quiet": (bool,),
    "tolerance": (float, int),
    "scheme": (str,),
    "scenario": (int,),
    "lambda_tr": (float, int),
    "failures": (int,),
    "straggler_factor": (float, int),
    "straggler_prob": (float, int),
    "link_mbps": (float, int),
    "sweep": (dict,),
    "hybrid": (bool,),
    "data": (str,),
    "round_timeout": (float, int, str),
    "on_shortfall": (str,),
    "part": (str,),
    "cpu_share": (float, int),
    "master_cpu_share": (float, int),
    "resume": (bool,),
}


def check_types(values: dict[str, Any]) -> None:
    """A TOML 'k = "2"' is a clear error naming k, not a TypeError deep inside."""
    for key, value in values.items():
        allowed = TYPES.get(key)
        if allowed is None or value is None:
            continue
        wrong_bool = isinstance(value, bool) and bool not in allowed
        if wrong_bool or not isinstance(value, allowed):
            names = " or ".join(t.__name__ for t in allowed)
            raise ConfigError(f"{key} must be a {names}, got {value!r}")
        if key in FINITE and not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")


# TOML and click accept nan and inf; range checks like `x < 0` let nan through.
SCENARIO_FLOATS = ("lambda_tr", "straggler_factor", "straggler_prob", "link_mbps")
FINITE = (*SCENARIO_FLOATS, "tolerance")


def check_finite(scenario: Scenario) -> None:
    """A [sweep] level of nan or inf would slip past Scenario's range checks."""
    for name in SCENARIO_FLOATS:
        value = getattr(scenario, name)
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")


def parse_ranks(value: Any) -> tuple[int, ...]:
    """'1,3', 2 or [1, 3] -> a tuple of ranks."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    if isinstance(value, list | tuple) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return tuple(value)
    if not isinstance(value, str):
        raise ConfigError(f"silent must be a list of worker ranks, got {value!r}")
    parts = [p for p in value.replace(" ", "").split(",") if p]
    try:
        return tuple(int(p) for p in parts)
    except ValueError:
        raise ConfigError(
            f"silent must be a comma-separated list of ranks, got {value!r}"
        ) from None


def parse_paths(value: Any) -> tuple[str, ...]:
    """A path, a list of paths, or (from the CLI) a tuple of them."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"codec must be a checkpoint path or a list of them, got {value!r}")


def parse_crash_option(value: Any) -> tuple[Crash, ...]:
    """--crash '2@3,4@5:exit' or a TOML list of such entries."""
    if not isinstance(value, str | list | tuple):
        raise ConfigError(f"crash must be a string like '2@3' or a list of them, got {value!r}")
    try:
        return parse_crashes(value)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def parse_timeout(text: str) -> float | str:
    """'--round-timeout 2.5' arrives as text: seconds, or the words auto / off."""
    try:
        return float(text)
    except ValueError:
        return text


def check_reliability(cfg: RunConfig, n: int) -> None:
    """Deadline, shortfall policy and fault drills name real values and worker ranks."""
    timeout = cfg.round_timeout
    if isinstance(timeout, str) and timeout not in ("auto", "off"):
        raise ConfigError(f"round_timeout must be seconds, auto or off, got {timeout!r}")
    if not isinstance(timeout, str) and not (timeout > 0 and math.isfinite(timeout)):
        raise ConfigError(f"round_timeout must be > 0 seconds, got {timeout!r}")
    if cfg.on_shortfall not in SHORTFALL_POLICIES:
        raise ConfigError(
            f"on_shortfall must be one of {', '.join(SHORTFALL_POLICIES)}, got {cfg.on_shortfall!r}"
        )
    bad = [c.rank for c in cfg.crash if not 1 <= c.rank <= n]
    if bad:
        raise ConfigError(f"crash ranks {bad} are not worker ranks 1..{n}")


PLANNED = ("auto", "star")


def parse_k(value: int | str) -> int | str:
    """An int k, "auto" (k° of the latency model) or "star" (k*, by Monte Carlo)."""
    if isinstance(value, int):
        return value
    if value in PLANNED:
        return value
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"k must be an integer, auto or star, got {value!r}") from None


def check_launch(world_size: int, environ: Mapping[str, str]) -> None:
    """Catch `srun python -m cocoi_mpi.run`: N independent singletons, each of size 1."""
    tasks = environ.get("SLURM_NTASKS", "")
    if world_size == 1 and tasks.isdigit() and int(tasks) > 1:
        raise ConfigError(
            f"world size is 1 but SLURM_NTASKS={tasks}: srun started {tasks} singleton "
            "processes that cannot talk to each other; inside the allocation launch with "
            "mpirun (see jobs/slurm/cocoi.sbatch), or with srun --mpi=pmix if your Slurm "
            "has PMIx"
        )


def resolve(cfg: RunConfig, world_size: int) -> RunConfig:
    """Fill n and k from the world and check every range."""
    if world_size < 2:
        raise ConfigError(
            "world size is 1: cocoi needs a master and at least one worker "
            "(start it with mpirun -np N, N >= 2)"
        )
    n = cfg.n if cfg.n is not None else world_size - 1
    if not 1 <= n <= world_size - 1:
        raise ConfigError(f"n={n} workers need a world of n+1 ranks; this world has {world_size}")
    k = parse_k(cfg.k if cfg.k is not None else max(1, n - 2))
    if isinstance(k, int) and not 1 <= k <= n:
        raise ConfigError(f"k must satisfy 1 <= k <= n={n}, got k={k}")
    try:
        scheme_info(cfg.scheme)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    try:
        scenario_of(cfg).check_workers(n)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if cfg.sweep is not None:
        try:
            for scenario in parse_sweep(dict(cfg.sweep), scenario_of(cfg))[1]:
                check_finite(scenario)
                scenario.check_workers(n)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"[sweep]: {exc}") from None
    check_part(cfg)
    check_shares(cfg)
    check_resume_path(cfg)
    check_codecs(cfg)
    if cfg.data and cfg.input:
        raise ConfigError("give --input or --data, not both")
    if cfg.code not in CODES:
        raise ConfigError(f"unknown code {cfg.code!r}; choose one of: {', '.join(CODES)}")
    if cfg.requests is not None and cfg.requests < 1:
        raise ConfigError(f"requests must be >= 1, got {cfg.requests}")
    if cfg.threads < 0:
        raise ConfigError(f"threads must be >= 0, got {cfg.threads}")
    bad = [r for r in cfg.silent if not 1 <= r <= n]
    if bad:
        raise ConfigError(f"silent ranks {bad} are not worker ranks 1..{n}")
    tolerated = n - (k if isinstance(k, int) else 1)
    if len(set(cfg.silent)) > tolerated:
        raise ConfigError(
            f"{len(set(cfg.silent))} silent workers exceed what n={n}, k={k} "
            f"tolerates ({tolerated})"
        )
    check_reliability(cfg, n)
    requests = cfg.requests if cfg.requests is not None or cfg.data else 1
    silent = tuple(sorted(set(cfg.silent)))
    return dataclasses.replace(cfg, n=n, k=k, silent=silent, requests=requests)


def named_schemes(cfg: RunConfig) -> list[str]:
    """Every scheme the config names: --scheme and the sweep's entries (validated)."""
    entries = cfg.sweep.get("schemes", ()) if cfg.sweep is not None else ()
    return [cfg.scheme, *(parse_entry(entry)[0] for entry in entries)]


def check_codecs(cfg: RunConfig) -> None:
    """Schemes that code conv blocks need trained codecs (--codec), and only they use
    them (and --hybrid); which schemes those are, the registry says."""
    coded = [name for name in named_schemes(cfg) if scheme_info(name).needs_codec]
    block = " or ".join(schemes_coding(BLOCK))
    if coded and not cfg.codec:
        raise ConfigError(
            f"scheme {coded[0]} needs --codec CHECKPOINT (one per coded block; cocoi train)"
        )
    if cfg.codec and not coded:
        raise ConfigError(f"--codec is used only by --scheme {block}, not {cfg.scheme}")
    if cfg.hybrid and not coded:
        raise ConfigError(f"--hybrid applies to --scheme {block}")


def check_shares(cfg: RunConfig) -> None:
    """Shares are cores per rank: finite and >= 0 (0: that rank is not confined)."""
    for key in ("cpu_share", "master_cpu_share"):
        value = getattr(cfg, key)
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{key} must be a number of cores >= 0, got {value}")


def check_resume_path(cfg: RunConfig) -> None:
    """--resume looks for the trace where this run would write it: the default name
    carries the start time, so only --out (or --name) finds the cut-off run again."""
    if cfg.resume and not (cfg.out or cfg.name):
        raise ConfigError(
            "--resume needs --out FILE.h5 (or --name): the default file name carries the "
            "start time, so a new run would never find the old trace"
        )


def check_part(cfg: RunConfig) -> None:
    """--part slices a sweep; without one there is nothing to slice."""
    if cfg.part is None:
        return
    if cfg.sweep is None:
        raise ConfigError("--part slices a sweep: give a config with a [sweep] table")
    schemes, scenarios, reps = parse_sweep(dict(cfg.sweep), scenario_of(cfg))
    try:
        select_part(cells(schemes, scenarios, reps, cfg.seed), cfg.part)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def scenario_of(cfg: RunConfig) -> Scenario:
    """The injected behaviour a config asks for (raises ValueError when out of range)."""
    return Scenario(
        kind=cfg.scenario,
        lambda_tr=float(cfg.lambda_tr),
        failures=cfg.failures,
        straggler_factor=float(cfg.straggler_factor),
        straggler_prob=float(cfg.straggler_prob),
        link_mbps=float(cfg.link_mbps),
    )
