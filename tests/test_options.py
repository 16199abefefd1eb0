"""Each run option is declared once (experiment/options.py, OPTIONS): the command line,
RunConfig and the config files' checks all come from that table, and README.md's option
table lists every option."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from cocoi_mpi.cli import run as run_module
from cocoi_mpi.experiment.config import ConfigError, RunConfig, build_config, load_toml
from cocoi_mpi.experiment.options import OPTIONS, SETTINGS, Option

ROOT = Path(__file__).resolve().parent.parent
CLI = [o for o in OPTIONS if o.cli]


def test_names_are_unique_and_every_option_is_somewhere():
    names = [o.name for o in OPTIONS]
    assert len(names) == len(set(names))
    assert all(o.cli or o.setting for o in OPTIONS)


def test_the_command_line_options_are_the_table():
    """A click option added by hand in cli/run.py, beside the table, fails here."""
    params = run_module.main.params
    assert [p.name for p in params] == [o.name for o in CLI]
    for param, option in zip(params, CLI, strict=True):
        assert param.opts == [option.flag]
        assert param.help == option.help_text
        assert param.multiple == option.multiple
    source = (ROOT / "cocoi_mpi" / "cli" / "run.py").read_text(encoding="utf-8")
    assert "@click.option" not in source and "@click.argument" not in source


def test_run_config_is_the_table():
    """RunConfig's fields, in order, with their defaults: the settings of OPTIONS."""
    fields = dataclasses.fields(RunConfig)
    assert [f.name for f in fields] == [o.name for o in SETTINGS]
    assert {f.name: f.default for f in fields} == {o.name: o.default for o in SETTINGS}
    assert RunConfig.__module__ == "cocoi_mpi.experiment.config"


def test_config_files_take_exactly_the_settings(tmp_path):
    path = tmp_path / "all.toml"
    path.write_text("".join(f"{o.name} = 0\n" for o in SETTINGS))
    assert set(load_toml(path)) == {o.name for o in SETTINGS}
    for option in OPTIONS:
        if not option.setting:
            path.write_text(f"{option.name} = 0\n")
            with pytest.raises(ConfigError, match=f"unknown setting\\(s\\) in .*: {option.name}$"):
                load_toml(path)


@pytest.mark.parametrize("option", SETTINGS, ids=lambda o: o.name)
def test_every_setting_refuses_a_value_of_the_wrong_kind(option: Option):
    """Each setting is checked, by its types or its parser, naming it: none is let
    through to fail deep inside the run."""
    wrong = [1] if dict in option.types else {"a": 1}
    with pytest.raises(ConfigError, match=f"^{option.name} must be"):
        build_config(None, {option.name: wrong}, 3)


@pytest.mark.parametrize(
    "option", [o for o in OPTIONS if isinstance(o.show_default, str)], ids=lambda o: o.name
)
def test_a_default_written_out_in_the_help_is_the_default(option: Option):
    """`show_default` text stands in for a default resolved later (None) or written
    otherwise (1e-4, 85.2/50.8); the latter must still be the default."""
    if option.default is None:
        return
    numerator, _, denominator = option.show_default.partition("/")
    value = float(numerator) / float(denominator or 1)
    assert value == pytest.approx(option.default, rel=1e-15)


def readme_option_rows() -> list[str]:
    """The first cells of README.md's table of `python -m cocoi_mpi.run` options."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### Options of `python -m cocoi_mpi.run`", 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `--")]
    assert rows, "README.md's option table is missing"
    return [row.split(" | ", 1)[0] for row in rows]


def test_the_readme_table_lists_every_option_and_no_other():
    flags = {flag for cell in readme_option_rows() for flag in re.findall(r"--[a-z-]+", cell)}
    wanted = {o.flag for o in CLI}
    switches = {f"--no-{o.flag[2:]}" for o in CLI if o.switch}
    assert wanted - flags == set(), "README.md's option table lacks these options"
    assert flags - wanted - switches == set(), "README.md's option table names no such options"
