"""RunConfig: defaults < TOML file < command line, and every bad setting named in a ConfigError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cocoi_mpi.experiment.config import (
    ConfigError,
    RunConfig,
    build_config,
    check_launch,
    load_toml,
    parse_ranks,
)
from cocoi_mpi.experiment.scenarios import Crash


def write(tmp_path: Path, text: str, name: str = "run.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# --------------------------------------------------------------------------- defaults


@pytest.mark.parametrize("world,n,k", [(2, 1, 1), (3, 2, 1), (4, 3, 1), (5, 4, 2), (11, 10, 8)])
def test_defaults_resolve_n_and_k_from_the_world_size(world, n, k):
    cfg = build_config(None, {}, world)
    assert (cfg.n, cfg.k) == (n, k)


def test_default_values():
    cfg = build_config(None, {}, 4)
    assert cfg.model == "vgg16" and cfg.code == "stable" and cfg.requests == 1
    assert cfg.systematic is False and cfg.silent == () and cfg.check is True


def test_k_default_follows_an_explicit_n():
    assert build_config(None, {"n": 5}, 11).k == 3


def test_none_overrides_mean_not_given():
    cfg = build_config(None, {"n": None, "k": None, "model": None}, 5)
    assert (cfg.model, cfg.n, cfg.k) == ("vgg16", 4, 2)


# --------------------------------------------------------------------------- TOML


def test_file_values_are_used(tmp_path):
    path = write(
        tmp_path,
        'model = "lenet5"\nn = 4\nk = 3\ncode = "vandermonde"\nsystematic = true\n'
        "requests = 5\nseed = 9\nsilent = [2]\ntolerance = 1e-3\n",
    )
    cfg = build_config(path, {}, 8)
    assert (cfg.model, cfg.n, cfg.k, cfg.code) == ("lenet5", 4, 3, "vandermonde")
    assert (cfg.systematic, cfg.requests, cfg.seed, cfg.silent) == (True, 5, 9, (2,))
    assert cfg.tolerance == 1e-3


def test_cli_overrides_beat_the_file(tmp_path):
    path = write(tmp_path, 'model = "lenet5"\nn = 4\nk = 3\nrequests = 5\n')
    cfg = build_config(path, {"k": 2, "requests": 7, "model": None}, 8)
    assert (cfg.model, cfg.n, cfg.k, cfg.requests) == ("lenet5", 4, 2, 7)


def test_run_table_is_accepted(tmp_path):
    path = write(tmp_path, '[run]\nmodel = "resnet18"\nk = 2\n')
    assert load_toml(path) == {"model": "resnet18", "k": 2}
    cfg = build_config(path, {}, 5)
    assert (cfg.model, cfg.n, cfg.k) == ("resnet18", 4, 2)


def test_unknown_keys_in_the_file_are_named(tmp_path):
    path = write(tmp_path, 'model = "lenet5"\nworkers = 3\nkk = 2\n')
    with pytest.raises(ConfigError, match="kk, workers"):
        build_config(path, {}, 4)


def test_unknown_keys_in_the_run_table_are_named(tmp_path):
    path = write(tmp_path, "[run]\nbogus = 1\n")
    with pytest.raises(ConfigError, match="bogus"):
        load_toml(path)


def test_unknown_override_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match="frobnicate"):
        build_config(None, {"frobnicate": 3}, 4)


@pytest.mark.parametrize(
    "text", ["model = \n", "k = [1,", "= 3\n", "[run\nk=2\n", "k = 1\nk = 2\n"]
)
def test_malformed_toml_is_a_config_error(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match="not valid TOML"):
        build_config(path, {}, 4)


def test_missing_file_is_a_config_error(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="not found") as info:
        build_config(str(missing), {}, 4)
    assert "nope.toml" in str(info.value)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "overrides,world,match",
    [
        ({"k": 4, "n": 3}, 5, "k must satisfy"),
        ({"k": 5}, 5, "k must satisfy"),  # default n = 4
        ({"k": 0}, 5, "k must satisfy"),
        ({"k": -1}, 5, "k must satisfy"),
        ({"n": 5}, 5, "n=5"),
        ({"n": 0}, 5, "n=0"),
        ({"code": "reed-solomon"}, 5, "unknown code 'reed-solomon'"),
        ({"requests": 0}, 5, "requests must be >= 1"),
        ({"requests": -3}, 5, "requests must be >= 1"),
        ({"threads": -1}, 5, "threads must be >= 0"),
        ({"silent": "0"}, 5, "silent ranks \\[0\\]"),
        ({"silent": "5"}, 5, "silent ranks \\[5\\]"),
        ({"silent": [1, 9], "n": 3, "k": 1}, 11, "silent ranks \\[9\\] .* 1..3"),
        ({"silent": "1,2,3", "k": 2}, 5, "3 silent workers exceed"),
        ({"silent": "a,b"}, 5, "silent must be a comma-separated list"),
        ({"jitter": "loud"}, 5, "jitter must be one of none, builtin"),
        ({"detection": "soon"}, 5, "detection must be immediate"),
        ({"detection": "never", "round_timeout": "off"}, 5, "detection never needs a round"),
        ({"detection": "timeout=2", "round_timeout": "off"}, 5, "needs a round deadline"),
    ],
)
def test_bad_settings_are_named(overrides, world, match):
    with pytest.raises(ConfigError, match=match):
        build_config(None, overrides, world)


def test_jitter_and_detection_reach_the_scenario(tmp_path):
    from cocoi_mpi.experiment.config import scenario_of

    path = tmp_path / "c.toml"
    path.write_text('jitter = "paper"\ndetection = "after=0.5"\nscenario = 2\nfailures = 1\n')
    cfg = build_config(str(path), {}, 5)
    sc = scenario_of(cfg)
    assert (sc.jitter, sc.detection) == ("paper", "after=0.5")
    assert sc.failure_detection.value == 0.5 and sc.device_jitter.cmp == 0.25


@pytest.mark.parametrize("world", [1, 0])
def test_world_size_one_is_rejected(world):
    with pytest.raises(ConfigError, match="world size"):
        build_config(None, {}, world)


def test_bad_values_in_the_file_are_rejected_too(tmp_path):
    path = write(tmp_path, "k = 7\n")
    with pytest.raises(ConfigError, match="k=7"):
        build_config(path, {}, 5)


def test_as_many_silent_workers_as_n_minus_k_is_fine():
    cfg = build_config(None, {"k": 2, "silent": "1,4"}, 5)
    assert cfg.silent == (1, 4)


def test_duplicate_silent_ranks_count_once():
    cfg = build_config(None, {"k": 3, "silent": "2,2"}, 5)
    assert cfg.silent == (2,)


# --------------------------------------------------------------------------- silent parsing


@pytest.mark.parametrize(
    "value,expected",
    [
        ("1,3", (1, 3)),
        ("1, 3", (1, 3)),
        ("3,1,", (3, 1)),
        ("", ()),
        ([1, 3], (1, 3)),
        ((2,), (2,)),
        ([], ()),
    ],
)
def test_parse_ranks(value, expected):
    assert parse_ranks(value) == expected


def test_silent_from_string_and_list_resolve_sorted():
    assert build_config(None, {"silent": "3,1", "k": 1}, 5).silent == (1, 3)
    assert build_config(None, {"silent": [3, 1], "k": 1}, 5).silent == (1, 3)


# --------------------------------------------------------------------------- serialisation


def test_to_dict_is_json_serialisable(tmp_path):
    cfg = build_config(None, {"silent": "1", "out": str(tmp_path / "x.h5"), "k": 2}, 5)
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["n"] == 4 and data["k"] == 2 and data["silent"] == [1]
    assert set(data) == {f for f in RunConfig.__dataclass_fields__}
    tuples = {
        "silent": tuple(data["silent"]),
        "codec": tuple(data["codec"]),
        "crash": tuple(Crash(**c) for c in data["crash"]),
    }
    assert RunConfig(**{**data, **tuples}) == cfg


def test_run_config_is_frozen():
    cfg = RunConfig()
    with pytest.raises(AttributeError):
        cfg.k = 3  # type: ignore[misc]


# --------------------------------------------------------------------------- wrong types


@pytest.mark.parametrize("text", ['k = "two"\n', 'requests = "many"\n', 'n = "3"\n'])
def test_wrongly_typed_file_values_are_config_errors(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=text.split(" ")[0]):
        build_config(path, {}, 5)


def test_silent_as_a_bare_integer_is_a_config_error_or_accepted(tmp_path):
    path = write(tmp_path, "k = 1\nsilent = 2\n")
    try:
        cfg = build_config(path, {}, 5)
    except ConfigError as exc:
        assert "silent" in str(exc)
    else:
        assert cfg.silent == (2,)


@pytest.mark.parametrize(
    ("size", "env", "refused"),
    [
        (1, {"SLURM_NTASKS": "11"}, True),
        (1, {"SLURM_NTASKS": "1"}, False),  # a one-task allocation: resolve() explains
        (1, {}, False),
        (11, {"SLURM_NTASKS": "11"}, False),  # mpirun inside the allocation
        (1, {"SLURM_NTASKS": "2(x3)"}, False),  # not a count: leave it to resolve()
    ],
)
def test_check_launch_names_srun_singletons(size, env, refused):
    if refused:
        with pytest.raises(ConfigError, match="srun started 11 singleton"):
            check_launch(size, env)
    else:
        check_launch(size, env)
