"""Bad input, each with a test (issue 6, part 5).

Every bad input ends with one ``cocoi: error:`` line naming what is wrong, a non-zero
exit, no Python traceback, and no .h5 from the run that refused it. Where each case
is tested (here unless a module is named; the other modules' tests are not repeated):

 1. malformed TOML config: test_malformed_toml_exits_2_without_output (subprocess),
    test_unreadable_toml_is_a_config_error; test_config::test_malformed_toml_is_a_config_error
 2. unknown config keys: test_unknown_toml_keys_exit_2_naming_them (subprocess);
    test_config::test_unknown_keys_in_the_file_are_named, ..._in_the_run_table_are_named
 3. k > n: test_range_errors_on_the_command_line, test_range_errors_in_the_toml_file;
    test_config::test_bad_settings_are_named, test_e2e::test_bad_input_fails_cleanly (mpirun)
 4. negative (or NaN/Inf) lambda: test_range_errors_on_the_command_line,
    test_range_errors_in_the_toml_file, test_non_finite_sweep_level_is_refused
 5. n_f > n (--scenario 2 --failures 99): test_range_errors_on_the_command_line,
    test_range_errors_in_the_toml_file
 6. hostfile with fewer slots than ranks: test_hostfile_with_too_few_slots (mpirun)
 7. weights for another model: test_weights_for_another_model_say_so,
    test_unreadable_weights_are_one_line; test_e2e::test_mismatched_weights_fail_cleanly;
    .safetensors weights and codecs (truncated, foreign, mismatched): test_safetensors
 8. input of wrong shape / dtype: test_input_of_wrong_shape_is_refused,
    test_integer_bool_and_complex_inputs_are_refused, test_float_inputs_are_cast_to_float32;
    test_e2e::test_wrong_input_shape_fails_cleanly (mpirun)
 9. NaN or Inf in the input: test_non_finite_input_is_counted,
    test_nan_input_through_mpirun (mpirun)
10. truncated / random / foreign .h5 to `cocoi report`: test_report_refuses_bad_traces,
    test_report_subprocess_prints_one_line; test_traces::test_truncated_file_is_trace_error
11. codec for another block, and files that are no checkpoint:
    test_codec_for_another_block_is_refused, test_files_that_are_no_checkpoint;
    test_learning::test_load_codec_refuses_files_that_are_not_checkpoints,
    test_e2e::test_codec_for_another_model_is_refused (mpirun)

Input dtypes: any floating dtype (float16, bfloat16, float64) is cast to float32;
integer, bool and complex inputs are refused (their scale is a guess); float64 values
beyond float32's range become Inf and are refused as non-finite.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_e2e import MPIRUN, error_lines, mpirun

from cocoi_mpi.cli import run as run_module
from cocoi_mpi.cli.commands import main as cocoi_main
from cocoi_mpi.experiment.config import ConfigError, build_config
from cocoi_mpi.learned.checkpoint import load_codec, new_state, save_codec
from cocoi_mpi.learned.coded_block import CodecError, make_coded_block
from cocoi_mpi.models import WeightsError, build_model, load_weights
from cocoi_mpi.models.inputs import InputError, check_shape, load_input
from cocoi_mpi.traces.writer import TraceWriter

needs_mpirun = pytest.mark.skipif(MPIRUN is None, reason="mpirun not found next to python")
SHAPE = (1, 32, 32)


def env() -> dict[str, str]:
    """What test_e2e's mpirun() sets: Open MPI as root, no libfabric."""
    out = dict(os.environ)
    out.setdefault("OMPI_MCA_btl", "^ofi")
    if os.geteuid() == 0:
        out.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return out


def serial_run(*args: str) -> subprocess.CompletedProcess:
    """`python -m cocoi_mpi.run ARGS` without mpirun: config errors come before the world
    size is checked, so one process exercises the same path as mpirun -np N."""
    cmd = [sys.executable, "-m", "cocoi_mpi.run", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env())


def assert_one_clean_line(stderr: str, *expect: str) -> str:
    """One error line holding every expected piece, and no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("cocoi: error:")]
    assert len(lines) == 1, stderr
    for piece in expect:
        assert piece in lines[0], lines[0]
    return lines[0]


# --------------------------------------------------------------------------- 1, 2: TOML


def test_malformed_toml_exits_2_without_output(tmp_path):
    bad, out = tmp_path / "bad.toml", tmp_path / "bad.h5"
    bad.write_text('model = "lenet5\nk = \n')
    proc = serial_run("--config", str(bad), "--out", str(out))
    assert proc.returncode == 2
    assert_one_clean_line(proc.stderr, str(bad), "not valid TOML", "line 1")
    assert not out.exists()


def test_unknown_toml_keys_exit_2_naming_them(tmp_path):
    cfg, out = tmp_path / "typo.toml", tmp_path / "typo.h5"
    cfg.write_text('model = "lenet5"\nkay = 2\n[run]\nlamda_tr = 0.5\n')
    proc = serial_run("--config", str(cfg), "--out", str(out))
    assert proc.returncode == 2
    assert_one_clean_line(proc.stderr, "unknown setting(s)", "kay", "lamda_tr", str(cfg))
    assert not out.exists()


@pytest.mark.parametrize(
    "content, expect",
    [
        (b"\xff\xfe\x00binary\x80junk", "not UTF-8"),
        (b"run = 3\n", "'run' must be a table"),
        (b"[run]\n[run]\n", "not valid TOML"),
    ],
)
def test_unreadable_toml_is_a_config_error(tmp_path, content, expect):
    path = tmp_path / "odd.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=expect) as info:
        build_config(str(path), {}, 3)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_config_folder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        build_config(str(tmp_path), {}, 3)


# --------------------------------------------------------------------------- 3-5: ranges


def invoke_run(monkeypatch, world: int, *args: str):
    """The run command's own parsing and error path, in a world of ``world`` ranks."""
    monkeypatch.setattr(
        run_module, "build_config", lambda file, opts, _size: build_config(file, opts, world)
    )
    return CliRunner().invoke(run_module.main, list(args))


@pytest.mark.parametrize(
    "args, expect",
    [
        (["--k", "3"], "k must satisfy 1 <= k <= n=2, got k=3"),
        (["--n", "1", "--k", "2"], "k must satisfy 1 <= k <= n=1, got k=2"),
        (["--scenario", "1", "--lambda-tr", "-1"], "lambda_tr must be >= 0, got -1.0"),
        (["--scenario", "1", "--lambda-tr", "nan"], "lambda_tr must be a finite number"),
        (["--scenario", "1", "--lambda-tr", "inf"], "lambda_tr must be a finite number"),
        (["--scenario", "2", "--failures", "99"], "99 failures per round leave no live worker"),
        (["--scenario", "3", "--failures", "2"], "2 failures per round leave no live worker"),
        (["--failures", "-1"], "failures must be >= 0"),
        (["--tolerance", "nan"], "tolerance must be a finite number"),
    ],
)
def test_range_errors_on_the_command_line(monkeypatch, tmp_path, args, expect):
    out = tmp_path / "x.h5"
    result = invoke_run(monkeypatch, 3, "--model", "lenet5", *args, "--out", str(out))
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert_one_clean_line(result.stderr, expect)
    assert not out.exists()


@pytest.mark.parametrize(
    "text, expect",
    [
        ("k = 5\n", "k must satisfy 1 <= k <= n=2, got k=5"),
        ("scenario = 1\nlambda_tr = -1\n", "lambda_tr must be >= 0"),
        ("scenario = 1\nlambda_tr = -1.5\n", "lambda_tr must be >= 0"),
        ("scenario = 1\nlambda_tr = nan\n", "lambda_tr must be a finite number"),
        ("scenario = 2\nfailures = 99\n", "99 failures per round"),
        ("[run]\nscenario = 3\nfailures = 3\n", "3 failures per round"),
    ],
)
def test_range_errors_in_the_toml_file(tmp_path, text, expect):
    path = tmp_path / "run.toml"
    path.write_text('model = "lenet5"\n' + text)
    with pytest.raises(ConfigError, match=expect):
        build_config(str(path), {}, 3)


def test_non_finite_sweep_level_is_refused(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text("[sweep]\nscenarios = [{scenario = 1, lambda_tr = inf}]\n")
    with pytest.raises(ConfigError, match=r"\[sweep\]: lambda_tr must be a finite number"):
        build_config(str(path), {}, 3)


# --------------------------------------------------------------------------- 6: hostfile


@needs_mpirun
def test_hostfile_with_too_few_slots(tmp_path):
    """Open MPI itself refuses 3 ranks on a 1-slot hostfile (no --oversubscribe)."""
    hostfile, out = tmp_path / "one_slot", tmp_path / "slots.h5"
    hostfile.write_text("localhost slots=1\n")
    clean = {k: v for k, v in env().items() if "OVERSUBSCRIBE" not in v.upper()}
    cmd = [MPIRUN, "-np", "3", "--hostfile", str(hostfile), "--bind-to", "none"]
    cmd += [sys.executable, "-m", "cocoi_mpi.run", "--model", "lenet5", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=clean)
    assert proc.returncode != 0
    assert "not enough slots" in (proc.stdout + proc.stderr).lower()
    assert "Traceback" not in proc.stderr
    assert not out.exists()


# --------------------------------------------------------------------------- 7: weights


def test_weights_for_another_model_say_so(tmp_path):
    path = tmp_path / "resnet18.pt"
    torch.save(build_model("resnet18").state_dict(), path)
    with pytest.raises(WeightsError) as info:
        load_weights(build_model("lenet5"), path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    assert "10 missing keys (features.0.weight" in msg and "122 unexpected keys" in msg
    assert "weights for another model?" in msg


@pytest.mark.parametrize(
    "make, expect",
    [
        (lambda p: p.write_bytes(np.random.default_rng(1).bytes(999)), "not a PyTorch"),
        (lambda p: torch.save(build_model("lenet5"), p), "pickled cocoi_mpi.models.lenet5"),
        (lambda p: p.write_bytes(b""), "empty or truncated"),
    ],
)
def test_unreadable_weights_are_one_line(tmp_path, make, expect):
    """torch.load's own text spans many lines and suggests weights_only=False."""
    path = tmp_path / "w.pt"
    make(path)
    with pytest.raises(WeightsError, match=expect) as info:
        load_weights(build_model("lenet5"), path)
    assert "\n" not in str(info.value) and "weights_only" not in str(info.value)


# --------------------------------------------------------------------------- 8, 9: input


@pytest.mark.parametrize(
    "shape, expect",
    [
        ((1, 28, 28), "does not match lenet5's expected (1, 32, 32)"),
        ((2, 3, 32, 32), "does not match lenet5's expected (1, 32, 32)"),
        ((0, 1, 32, 32), "holds no image"),
        ((32, 32), "expected C×H×W or N×C×H×W"),
    ],
)
def test_input_of_wrong_shape_is_refused(tmp_path, shape, expect):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros(shape, dtype=np.float32))
    with pytest.raises(InputError) as info:
        check_shape(load_input(path), SHAPE, "lenet5")
    assert expect in str(info.value)


@pytest.mark.parametrize("dtype", [np.int64, np.uint8, np.bool_, np.complex64])
def test_integer_bool_and_complex_inputs_are_refused(tmp_path, dtype):
    path = tmp_path / "x.npy"
    np.save(path, np.ones(SHAPE, dtype=dtype))
    with pytest.raises(InputError) as info:
        load_input(path)
    msg = str(info.value)
    assert str(path) in msg and f"dtype {np.dtype(dtype).name}" in msg
    assert "expected a floating-point tensor" in msg and "/ 255" in msg


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_float_inputs_are_cast_to_float32(tmp_path, dtype):
    path = tmp_path / "x.pt"
    torch.save(torch.full(SHAPE, 0.5, dtype=dtype), path)
    batch = load_input(path)
    assert batch.dtype == torch.float32 and batch.shape == (1, *SHAPE)
    assert (batch == 0.5).all()


def test_non_finite_input_is_counted(tmp_path):
    data = np.zeros((2, *SHAPE), dtype=np.float64)
    data[0, 0, 0, :3] = np.nan
    data[1, 0, 5, 5] = -np.inf
    data[1, 0, 6, 6] = 1e300  # finite in float64, Inf as float32
    path = tmp_path / "x.npy"
    np.save(path, data)
    with pytest.raises(InputError) as info:
        load_input(path)
    msg = str(info.value)
    assert str(path) in msg and "5 NaN or Inf values of 2048 (3 NaN, 2 Inf" in msg


@needs_mpirun
def test_nan_input_through_mpirun(tmp_path):
    """The whole job: rank 0 prints the one line, every rank exits, no trace file."""
    path, out = tmp_path / "nan.npy", tmp_path / "nan.h5"
    data = np.zeros((1, *SHAPE), dtype=np.float32)
    data[0, 0, 1, 1] = np.nan
    np.save(path, data)
    proc = mpirun(3, "--model", "lenet5", "--input", str(path), "--out", str(out), timeout=180)
    assert proc.returncode != 0
    assert len(error_lines(proc)) == 1, proc.stderr
    assert_one_clean_line(proc.stderr, str(path), "1 NaN or Inf values of 1024")
    assert not out.exists()


# --------------------------------------------------------------------------- 10: report


def real_trace(path: Path) -> Path:
    """A small but genuine trace, as a run writes it."""
    config = {"model": "lenet5", "n": 2, "k": 1}
    with TraceWriter(path, config=config, meta={}, num_classes=10) as w:
        w.append("requests", [dict(request=i, scheme="cocoi", latency=0.1) for i in range(50)])
        w.append("rounds", [dict(request=i, round=i, layer="features.3") for i in range(50)])
        for _ in range(50):
            w.append_logits(np.arange(10, dtype=np.float32))
    return path


def truncated(path: Path) -> Path:
    real_trace(path)
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) // 2)
    return path


def random_bytes(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(0).bytes(8192))
    return path


def foreign_hdf5(path: Path) -> Path:
    with h5py.File(path, "w") as fh:
        fh["images"] = np.zeros((4, 3))
        fh.attrs["author"] = "someone else"
    return path


@pytest.mark.parametrize(
    "make, expect",
    [
        (truncated, "truncated HDF5 file"),
        (random_bytes, "not a readable HDF5 file"),
        (foreign_hdf5, "not a cocoi trace: root attribute 'format_version' is missing"),
        (lambda p: p, "no such file"),
    ],
)
def test_report_refuses_bad_traces(tmp_path, make, expect):
    path = make(tmp_path / "trace.h5")
    result = CliRunner().invoke(cocoi_main, ["report", str(path)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert_one_clean_line(result.stderr, str(path), expect)
    assert result.stdout == ""


def test_report_subprocess_prints_one_line(tmp_path):
    """The installed command on a half file: stderr is the one line and nothing else."""
    path = truncated(tmp_path / "half.h5")
    cmd = [sys.executable, "-m", "cocoi_mpi", "report", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1
    assert_one_clean_line(proc.stderr, "half.h5", "truncated HDF5 file")


# --------------------------------------------------------------------------- 11: codecs


@pytest.fixture(scope="module")
def lenet():
    return build_model("lenet5", seed=0)


def save_untrained(model, block: str, path: Path) -> Path:
    """A checkpoint as `cocoi train` writes it; training is irrelevant to the checks."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        cb = make_coded_block(model, block, SHAPE, k=2, r=1, arch="sparsemlp")
    save_codec(path, cb, new_state("lenet5", "digits", SHAPE, cb, model))
    return path


def test_codec_for_another_block_is_refused(tmp_path, lenet):
    """features.0's codec relabelled as features.3's (a renamed or mixed-up file)."""
    path = save_untrained(lenet, "features.0", tmp_path / "f0.pt")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    torch.save({**payload, "block": "features.3"}, tmp_path / "f3.pt")
    with pytest.raises(CodecError, match=r"f3\.pt: block features\.3 .* another structure"):
        load_codec(tmp_path / "f3.pt", lenet, "lenet5", SHAPE)
    cb, _ = load_codec(path, lenet, "lenet5", SHAPE)  # the genuine file still loads
    assert cb.name == "features.0"


@pytest.mark.parametrize(
    "make, expect",
    [
        (random_bytes, "not a PyTorch tensor file"),
        (lambda p: p.write_bytes(b""), "empty or truncated"),
        (lambda p: p.write_text("codec = features.3\n"), "not a PyTorch tensor file"),
        (lambda p: torch.save(build_model("lenet5"), p), "pickled cocoi_mpi.models.lenet5"),
        (lambda p: torch.save(torch.zeros(3), p), "not a cocoi codec checkpoint"),
    ],
)
def test_files_that_are_no_checkpoint(tmp_path, lenet, make, expect):
    path = tmp_path / "codec.pt"
    make(path)
    with pytest.raises(CodecError) as info:
        load_codec(path, lenet, "lenet5", SHAPE)
    msg = str(info.value)
    assert expect in msg and str(path) in msg and "\n" not in msg


def test_truncated_checkpoint_is_refused(tmp_path, lenet):
    path = save_untrained(lenet, "features.3", tmp_path / "c.pt")
    path.write_bytes(path.read_bytes()[: os.path.getsize(path) // 2])
    with pytest.raises(CodecError, match="truncated or corrupt PyTorch file"):
        load_codec(path, lenet, "lenet5", SHAPE)
