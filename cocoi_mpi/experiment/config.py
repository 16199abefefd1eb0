"""One RunConfig: defaults < TOML file < command line, validated before any MPI traffic.

Every rank parses and validates the same arguments, so a bad setting fails on all
ranks at once without a message exchanged (rank 0 alone prints it): no hang.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..codes import BLOCK, CODES, scheme_info, schemes_coding
from ..engine.rows import SHORTFALL_POLICIES
from ..errors import UserError
from .options import BY_NAME, SETTINGS, parse_ranks  # noqa: F401 (parse_ranks: re-exported)
from .scenarios import Scenario
from .sweep import cells, parse_entry, parse_sweep, select_part


class ConfigError(UserError, ValueError):
    """A setting is missing, unknown or out of range; the message names it."""


def _to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


# One field per setting of options.OPTIONS, in its order, with its default.
RunConfig = dataclasses.make_dataclass(
    "RunConfig",
    [(o.name, o.annotation, dataclasses.field(default=o.default)) for o in SETTINGS],
    frozen=True,
    namespace={
        "__module__": __name__,
        "__doc__": "Everything a run needs to know; recorded as JSON in the HDF5 file.",
        "to_dict": _to_dict,
    },
)

FIELDS = {o.name for o in SETTINGS}


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
    for option in SETTINGS:
        if option.parse is not None and option.name in values:
            try:
                values[option.name] = option.parse(values[option.name])
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
    check_types(values)
    try:
        cfg = RunConfig(**values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
    return resolve(cfg, world_size)


def check_types(values: dict[str, Any]) -> None:
    """A TOML 'k = "2"' is a clear error naming k, not a TypeError deep inside."""
    for key, value in values.items():
        option = BY_NAME.get(key)
        if option is None or not option.types or value is None:
            continue
        allowed = option.types
        wrong_bool = isinstance(value, bool) and bool not in allowed
        if wrong_bool or not isinstance(value, allowed):
            names = " or ".join(t.__name__ for t in allowed)
            raise ConfigError(f"{key} must be a {names}, got {value!r}")
        if option.finite and not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")


def check_finite(scenario: Scenario) -> None:
    """A [sweep] level of nan or inf would slip past Scenario's range checks (TOML and
    click accept nan and inf; range checks like `x < 0` let nan through)."""
    for option in SETTINGS:
        value = getattr(scenario, option.name, None) if option.finite else None
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{option.name} must be a finite number, got {value!r}")


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
    waits = cfg.detection.split("=")[0] in ("timeout", "never")
    if waits and timeout == "off":
        raise ConfigError(
            f"detection {cfg.detection} needs a round deadline: a failure it has not "
            "noticed is noticed at the deadline; give --round-timeout SECONDS or auto"
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
        jitter=cfg.jitter,
        detection=cfg.detection,
    )
