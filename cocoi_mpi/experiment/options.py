"""Every option of the MPI job (`python -m cocoi_mpi.run`), declared once.

OPTIONS is the one list. From it come the job's click options (cli/run.py applies
them), RunConfig's fields and defaults (experiment/config.py builds the dataclass) and
the checks a TOML file's values get (experiment/config.py: types, finiteness, parsing).
A new option is one entry here, and a row in README.md's option table
(tests/test_options.py checks both).

What stays elsewhere: checks that relate settings or the world (k <= n, silent ranks,
a [sweep] level's range) are config.resolve()'s, and a TOML value outside an option's
`choices` is refused there too, with the messages the registries give.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..codes import CODES, RUN_SCHEMES
from ..engine.rows import SHORTFALL_POLICIES
from .scenarios import PAPER_STRAGGLER_FACTOR, Crash, parse_crashes, parse_detection, parse_jitter


@dataclass(frozen=True)
class Option:
    """One run option: a RunConfig field and TOML key `name`, and the long option
    `--name-with-dashes` with `help` (the default shown after it in brackets)."""

    name: str
    default: Any
    help: str
    # Value types a setting may have, in the order a type error names them; a TOML
    # value of another type is refused, naming the option. Empty: `parse` checks alone.
    types: tuple[type, ...] = (str,)
    # Turns a given value (the CLI's text, or TOML's) into the field's value; raises
    # ValueError naming the option. Runs before the type check.
    parse: Callable[[Any], Any] | None = None
    finite: bool = False  # a number: nan and inf are refused
    choices: tuple[str, ...] = ()  # the CLI refuses other values (resolve() a file's)
    bounds: tuple[int, int] | None = None  # an integer range the CLI enforces
    path: bool = False  # a file: the CLI refuses a folder
    multiple: bool = False  # the CLI option repeats, one value each
    # What the help shows in brackets: True the default (when it is a string or a
    # number), a text of its own (a default resolved later, or written otherwise), or
    # False nothing.
    show_default: bool | str = True
    cli: bool = True  # a command-line option
    setting: bool = True  # a RunConfig field, and a key config files may set

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def switch(self) -> bool:
        """An on/off option: --name/--no-name on the command line."""
        return self.types == (bool,)

    @property
    def cli_type(self) -> type:
        """The type the command line converts to; text where a word is allowed."""
        return str if not self.types or str in self.types else self.types[0]

    @property
    def help_text(self) -> str:
        """The help, with what `show_default` says in brackets after it."""
        shown = shown_value(self.default) if self.show_default is True else self.show_default
        return f"{self.help} [{shown}]" if shown else self.help

    @property
    def annotation(self) -> Any:
        """RunConfig's annotation of the field (documentation only)."""
        kinds = self.types or (tuple,)
        if self.default is None:
            kinds = (*kinds, type(None))
        union = kinds[0]
        for kind in kinds[1:]:
            union = union | kind
        return union


def shown_value(value: Any) -> str:
    """A default as the help shows it (0.0 as 0); None, a switch's or a tuple: nothing."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


def parse_ranks(value: Any) -> tuple[int, ...]:
    """'1,3', 2 or [1, 3] -> a tuple of ranks."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    if isinstance(value, list | tuple) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return tuple(value)
    if not isinstance(value, str):
        raise ValueError(f"silent must be a list of worker ranks, got {value!r}")
    parts = [p for p in value.replace(" ", "").split(",") if p]
    try:
        return tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"silent must be a comma-separated list of ranks, got {value!r}") from None


def parse_paths(value: Any) -> tuple[str, ...]:
    """A path, a list of paths, or (from the CLI) a tuple of them."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(f"codec must be a checkpoint path or a list of them, got {value!r}")


def checked(name: str, value: Any, parse: Callable[[str], Any]) -> str:
    """A text option kept as written, once ``parse`` accepts it (raises ValueError
    naming the option)."""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be text, got {value!r}")
    parse(value)
    return value.strip()


def parse_crash_option(value: Any) -> tuple[Crash, ...]:
    """--crash '2@3,4@5:exit' or a TOML list of such entries."""
    if not isinstance(value, str | list | tuple):
        raise ValueError(f"crash must be a string like '2@3' or a list of them, got {value!r}")
    return parse_crashes(value)


def parse_timeout(value: Any) -> Any:
    """'--round-timeout 2.5' arrives as text: seconds, or the words auto / off."""
    if not isinstance(value, str):
        return value
    try:
        return float(value)
    except ValueError:
        return value


NUMBER = (float, int)

OPTIONS: tuple[Option, ...] = (  # in the order --help lists them
    Option(
        "config",
        None,
        "TOML file of settings (keys as the long options, e.g. k = 4); CLI wins.",
        path=True,
        setting=False,
    ),
    Option("model", "vgg16", "vgg16, resnet18, lenet5, or package.module:factory."),
    Option("weights", None, "state_dict file (.pt) to load into the model."),
    Option("input", None, ".npy/.pt tensor C×H×W or N×C×H×W; default: seeded."),
    # None: 1, or the whole test split with --data
    Option("requests", None, "Inference requests to serve.", types=(int,), show_default="1"),
    Option("n", None, "Workers to use.", types=(int,), show_default="world size - 1"),
    Option(
        "k",
        None,
        "Source pieces per layer (any k of n decode): an integer, 'auto' (k° of the "
        "latency model per layer) or 'star' (k* by Monte Carlo). With auto/star a layer is "
        "distributed only if predicted faster than on the master.",
        types=(int, str),
        show_default="n - 2",  # max(1, n - 2)
    ),
    Option(
        "profile",
        None,
        "Latency profile JSON (cocoi fit) for --k auto/star.",
        path=True,
        show_default="built-in Pi 4B + WiFi",
    ),
    Option(
        "scheme",
        "cocoi",
        "cocoi (MDS-coded), uncoded (n pieces, failed ones re-sent), replication "
        "(n/2 pieces x 2 copies), lt-kl/lt-ks (LT codes) or learned (conv blocks with "
        "trained codecs, --codec).",
        choices=RUN_SCHEMES,
    ),
    Option(
        "scenario",
        0,
        "0 none, 1 straggling, 2 failures, 3 failures + one slow worker (paper VI).",
        types=(int,),
        bounds=(0, 3),
    ),
    Option(
        "lambda_tr",
        0.0,
        "Scenario 1: extra delay ~ Exp(lambda_tr x transmission time).",
        types=NUMBER,
        finite=True,
    ),
    Option("failures", 0, "Scenarios 2-3: workers failing per round.", types=(int,)),
    Option(
        "straggler_factor",
        PAPER_STRAGGLER_FACTOR,
        "Scenario 3: compute slowdown of the straggler.",
        types=NUMBER,
        finite=True,
        show_default="85.2/50.8",
    ),
    Option(
        "straggler_prob",
        0.8,
        "Scenario 3: chance the straggler is slow in a round.",
        types=NUMBER,
        finite=True,
    ),
    Option(
        "link_mbps",
        0.0,
        "Emulate a link of this bandwidth on every transfer; 0 = off.",
        types=NUMBER,
        finite=True,
    ),
    Option(
        "jitter",
        "none",
        "Device jitter on every subtask (eq. 7's excess, seeded): none, builtin, fig14b, "
        "paper, or ratios CMP/TR of mean excess to minimum (docs/testbed.md).",
        parse=lambda v: checked("jitter", v, parse_jitter),
    ),
    Option(
        "detection",
        "immediate",
        "Scenarios 2-3: when the master notices a failed worker: immediate, after=SECONDS, "
        "timeout=FACTOR (x the round's first reply) or never (the round's deadline).",
        parse=lambda v: checked("detection", v, parse_detection),
    ),
    Option(
        "preset",
        "",
        "What the emulated testbed stands for and how it was derived, recorded in the "
        "trace (jobs/testbed.sh PRESET=pi|today sets it).",
        show_default=False,
    ),
    Option(
        "code",
        "stable",
        "Generator: stable (systematic, searched for conditioning; one piece per "
        "subtask), rotation (complex roots of unity as 2x2 rotations, two half pieces) or "
        "vandermonde (the paper's eq. 3).",
        choices=CODES,
    ),
    Option(
        "systematic",
        False,
        "Systematic generator: skip decoding when the first k arrive first.",
        types=(bool,),
    ),
    Option("seed", 0, "Seed of the random weights and inputs.", types=(int,)),
    Option(
        "out",
        None,
        "HDF5 file to write (overwritten).",
        show_default="results/<name>.h5",
    ),
    Option("name", None, "Run name for the default output path."),
    Option(
        "check",
        True,
        "Compare with a local forward pass on the master (exit 3 if it differs).",
        types=(bool,),
    ),
    Option(
        "tolerance",
        1e-4,
        "Max |coded - local| / max|logit|.",
        types=NUMBER,
        finite=True,
        show_default="1e-4",
    ),
    Option(
        "threads",
        0,
        "Torch threads per rank; 0 = cores / local ranks.",
        types=(int,),
        show_default=False,
    ),
    Option(
        "silent",
        (),
        "Worker ranks that never reply, e.g. 2,5 (testing k-of-n).",
        types=(),
        parse=parse_ranks,
    ),
    Option(
        "codec",
        (),
        "Learned-code checkpoint (cocoi train) for --scheme learned; repeat, one per block.",
        types=(),
        parse=parse_paths,
        path=True,
        multiple=True,
    ),
    Option(
        "hybrid",
        False,
        "Learned scheme: run the model's last conv block on the master (Non-linear*).",
        types=(bool,),
    ),
    Option(
        "data",
        None,
        "Serve a dataset's test split (digits, mnist:DIR, cifar10:DIR) and report accuracy.",
    ),
    Option(
        "round_timeout",
        "auto",
        "Seconds a round waits before its missing workers count as failed; 'auto' "
        "(max(60 s, 20x the plan's prediction)) or 'off'.",
        types=(float, int, str),
        parse=parse_timeout,
    ),
    Option(
        "on_shortfall",
        "local",
        "When too few live workers can answer a round: compute it on the master "
        "(flagged in the trace) or stop with an error.",
        choices=SHORTFALL_POLICIES,
    ),
    Option(
        "crash",
        (),
        "Fault drill: RANK@REQUEST[:kill|exit|raise|hang=S], comma-separated; the "
        "worker really dies (SIGKILL / exit), raises, or hangs S seconds. Survive deaths "
        "with mpirun --with-ft ulfm.",
        types=(),
        parse=parse_crash_option,
    ),
    Option(
        "sweep",
        None,
        "A [sweep] table: schemes x scenario levels x repetitions (experiment/sweep.py).",
        types=(dict,),
        cli=False,
    ),
    Option(
        "part",
        None,
        "I/N: serve only every N-th cell of the sweep, from cell I (0-based); one "
        "Slurm array task each, then cocoi merge. See jobs/slurm/sweep_array.sbatch.",
    ),
    Option(
        "cpu_share",
        0.0,
        "Emulated testbed: confine each worker to this many cores (cgroups, e.g. 0.15), "
        "so its speed does not depend on the others. 0: off.",
        types=NUMBER,
    ),
    Option(
        "master_cpu_share",
        0.0,
        "Emulated testbed: confine the master too (cores). 0: unconfined.",
        types=NUMBER,
    ),
    Option(
        "resume",
        False,
        "Go on with the trace at --out that a cut-off run of the same config left: its "
        "complete cells are kept, the rest served (nothing to do if it is complete).",
        types=(bool,),
    ),
    Option("quiet", False, "Only the summary lines.", types=(bool,)),
)

BY_NAME = {option.name: option for option in OPTIONS}
SETTINGS = tuple(option for option in OPTIONS if option.setting)  # RunConfig's fields
