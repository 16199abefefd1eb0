"""safetensors weights and codec checkpoints (issue 20, part 3).

`--weights FILE.safetensors` and safetensors codecs load through the safetensors package
for every model and give exactly what the .pt gives; `cocoi convert` writes them; a
truncated, foreign or mismatched file ends a command with one ``cocoi: error:`` line
(exit 2, no traceback), as a bad .pt does.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_e2e import MPIRUN, error_lines, mpirun

from cocoi_mpi.cli.commands import main
from cocoi_mpi.learned.accuracy import coded_predictions
from cocoi_mpi.learned.checkpoint import load_codec, new_state, read_codec, save_codec
from cocoi_mpi.learned.coded_block import CodecError, coded_block_output, make_coded_block
from cocoi_mpi.learned.training import CodecTraining, train_codec
from cocoi_mpi.models import WeightsError, build_model, input_shape, load_weights
from cocoi_mpi.models.data import load_dataset
from cocoi_mpi.models.tensorfiles import is_safetensors, load_safetensors, save_safetensors
from cocoi_mpi.traces.reader import read_trace

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE = (1, 32, 32)
BLOCK = "features.3"


def cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error_line(result) -> str:
    """The command failed with exit 2, one `cocoi: error:` line on stderr and no traceback."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith("cocoi: error: ")
    return line


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a
    )


def cut(path, size: int, out):
    """The first ``size`` bytes of ``path``, written to ``out``."""
    out.write_bytes(path.read_bytes()[:size])
    return out


# --------------------------------------------------------------------------- weights


@pytest.mark.parametrize("spec", ["vgg16", "resnet18", "zoo:odd_cnn"])
def test_safetensors_weights_load_exactly_as_the_pt(tmp_path, spec):
    """`cocoi convert` a .pt state_dict; both load to identical weights and outputs
    (ResNet18 and the user model carry BatchNorm's int64 num_batches_tracked)."""
    trained = build_model(spec, seed=7).state_dict()
    pt, st = tmp_path / "w.pt", tmp_path / "w.safetensors"
    torch.save(trained, pt)
    del trained
    result = cli("convert", pt, st)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"wrote {st}: ")
    from_pt = load_weights(build_model(spec, seed=0), pt).eval()
    from_st = load_weights(build_model(spec, seed=0), st).eval()
    assert same_state(from_pt.state_dict(), from_st.state_dict())
    x = torch.randn((1, *input_shape(spec, from_pt)), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(from_pt(x), from_st(x))


def test_convert_back_and_a_safetensors_file_named_pt(tmp_path):
    """.safetensors -> .pt gives the same state_dict; a safetensors file is recognised by
    its header whatever its name."""
    model = build_model("zoo:odd_cnn", seed=2)
    st = tmp_path / "w.safetensors"
    save_safetensors(st, model.state_dict())
    assert cli("convert", st, tmp_path / "back.pt").exit_code == 0
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    assert same_state(back, model.state_dict())
    renamed = tmp_path / "really_safetensors.pt"
    renamed.write_bytes(st.read_bytes())
    assert is_safetensors(renamed) and not is_safetensors(tmp_path / "back.pt")
    loaded = load_weights(build_model("zoo:odd_cnn", seed=0), renamed)
    assert same_state(loaded.state_dict(), model.state_dict())


def test_tied_weights_are_written_as_copies(tmp_path):
    """safetensors refuses two names for one storage; they are saved apart and load back."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    model[1].weight = model[0].weight
    path = tmp_path / "tied.safetensors"
    save_safetensors(path, model.state_dict())
    tensors, meta = load_safetensors(path)
    assert meta == {} and same_state(tensors, model.state_dict())
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    fresh[1].weight = fresh[0].weight
    load_weights(fresh, path)
    assert torch.equal(fresh[1].weight, model[0].weight)


def test_train_base_writes_safetensors(tmp_path):
    out = tmp_path / "base.safetensors"
    result = cli("train", "--base", "--epochs", "1", "--quiet", "--out", out)
    assert result.exit_code == 0, result.output
    tensors, meta = load_safetensors(out)
    assert (meta["kind"], meta["model"], meta["data"]) == ("cocoi-base", "lenet5", "digits")
    assert [row["epoch"] for row in meta["log"]] == [1]
    assert f"test accuracy {meta['accuracy']:.2f}%" in result.output
    model = load_weights(build_model("lenet5", seed=5), out)
    assert same_state(model.state_dict(), tensors)
    assert [p.name for p in tmp_path.iterdir()] == ["base.safetensors"]  # no temp file left
    back = tmp_path / "base.pt"
    assert cli("convert", out, back).exit_code == 0  # a .pt as cocoi train writes it
    payload = torch.load(back, weights_only=True)
    assert payload["kind"] == "cocoi-base" and payload["log"] == meta["log"]
    assert same_state(payload["state_dict"], tensors)


@pytest.fixture(scope="module")
def good_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "lenet5.safetensors"
    save_safetensors(path, build_model("lenet5", seed=3).state_dict())
    return path


def header_length(path) -> int:
    return struct.unpack("<Q", path.read_bytes()[:8])[0]


BAD_WEIGHTS = {
    "cut in half": (
        lambda good, tmp: cut(good, good.stat().st_size // 2, tmp / "half.safetensors"),
        "truncated safetensors file (",
    ),
    "cut inside the header": (
        lambda good, tmp: cut(good, 8 + header_length(good) // 2, tmp / "head.safetensors"),
        "truncated safetensors file (it ends inside its header",
    ),
    "wrong keys": (
        lambda good, tmp: save_resnet_weights(tmp / "resnet.safetensors"),
        "does not match the model: 10 missing keys",
    ),
    "wrong shapes": (
        lambda good, tmp: save_wider_lenet(good, tmp / "wide.safetensors"),
        "shape mismatch for features.0.weight: file has (7, 1, 5, 5), model expects (6, 1, 5, 5)",
    ),
    "not safetensors": (
        lambda good, tmp: write(tmp / "x.safetensors", np.random.default_rng(1).bytes(999)),
        "not a safetensors file (no JSON header",
    ),
    "a torch file named .safetensors": (
        lambda good, tmp: torch_file(tmp / "t.safetensors"),
        "not a safetensors file (it is a zip archive",
    ),
    "empty": (lambda good, tmp: write(tmp / "e.safetensors", b""), "the file is empty"),
}


def write(path, data: bytes):
    path.write_bytes(data)
    return path


def torch_file(path):
    torch.save(build_model("lenet5").state_dict(), path)
    return path


def save_resnet_weights(path):
    save_safetensors(path, build_model("resnet18").state_dict())
    return path


def save_wider_lenet(good, path):
    tensors, _ = load_safetensors(good)
    tensors["features.0.weight"] = torch.zeros(7, 1, 5, 5)
    save_safetensors(path, tensors)
    return path


@pytest.mark.parametrize("case", BAD_WEIGHTS, ids=list(BAD_WEIGHTS))
def test_bad_safetensors_weights_give_one_line(tmp_path, good_weights, case):
    make, expect = BAD_WEIGHTS[case]
    path = make(good_weights, tmp_path)
    with pytest.raises(WeightsError) as info:
        load_weights(build_model("lenet5"), path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    line = one_error_line(
        cli("accuracy", "--weights", path, "--codec", tmp_path / "unused.safetensors")
    )
    assert expect in line and str(path) in line


def test_a_bad_metadata_json_is_one_line(tmp_path, good_weights):
    from safetensors.torch import save_file

    path = tmp_path / "meta.safetensors"
    save_file(load_safetensors(good_weights)[0], str(path), {"cocoi": "{not json"})
    with pytest.raises(WeightsError, match="its 'cocoi' metadata is not valid JSON$"):
        load_weights(build_model("lenet5"), path)


def test_convert_refuses_what_it_cannot_write(tmp_path, good_weights):
    line = one_error_line(cli("convert", good_weights, tmp_path / "w.npz"))
    assert "name it .safetensors or .pt" in line
    line = one_error_line(cli("convert", tmp_path / "nope.pt", tmp_path / "w.safetensors"))
    assert "file not found" in line
    odd = tmp_path / "odd.pt"
    torch.save({"weight": torch.zeros(2), "step": 3}, odd)
    line = one_error_line(cli("convert", odd, tmp_path / "odd.safetensors"))
    assert "step is int, not a tensor: a safetensors file holds tensors only" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.pt"]


# --------------------------------------------------------------------------- mpirun


@pytest.mark.skipif(MPIRUN is None, reason="mpirun not found next to python")
def test_run_with_safetensors_weights_is_exact(tmp_path):
    """Three ranks, --weights X.safetensors: the run's own check passes and its logits are
    this process's forward of the same weights; a truncated file stops it with one line."""
    net = build_model("lenet5", seed=42)
    weights = tmp_path / "w.safetensors"
    save_safetensors(weights, net.state_dict())
    out = tmp_path / "st.h5"
    proc = mpirun(
        3,
        *("--model", "lenet5", "--weights", str(weights), "--requests", "2"),
        *("--seed", "5", "--out", str(out)),
    )
    assert proc.returncode == 0, proc.stderr
    assert "top-1 identical 2/2: OK" in proc.stdout
    x = torch.randn((2, *SHAPE), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = net(x).numpy()
    got = read_trace(out).logits
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    assert (got.argmax(1) == ref.argmax(1)).all()

    half = cut(weights, weights.stat().st_size // 2, tmp_path / "half.safetensors")
    bad = mpirun(3, "--model", "lenet5", "--weights", str(half), "--out", str(tmp_path / "b.h5"))
    assert bad.returncode != 0 and "Traceback" not in bad.stderr  # 1: the ranks had started
    (line,) = error_lines(bad)
    assert f"cannot read weights file {half}: truncated safetensors file" in line
    assert not (tmp_path / "b.h5").exists()


# --------------------------------------------------------------------------- codecs


@pytest.fixture(scope="module")
def codec_files(tmp_path_factory):
    """LeNet-5 weights and a codec for features.3 trained one epoch on 128 digits, saved
    as .pt by save_codec, converted by `cocoi convert`, and saved directly."""
    folder = tmp_path_factory.mktemp("codec")
    model = build_model("lenet5", seed=0).eval()
    weights = folder / "lenet5.safetensors"
    save_safetensors(weights, model.state_dict())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        cb = make_coded_block(model, BLOCK, SHAPE, k=2, r=1, arch="sparsemlp")
    state = new_state("lenet5", "digits", SHAPE, cb, model)
    train = load_dataset("digits", "train").subset(128)
    train_codec(model, cb, train, CodecTraining(epochs=1), state)
    pt, converted, direct = folder / "c.pt", folder / "c.safetensors", folder / "d.safetensors"
    save_codec(pt, cb, state)
    result = cli("convert", pt, converted)
    assert result.exit_code == 0, result.output
    assert "codec for features.3 (optimizer state left out: no --resume)" in result.output
    save_codec(direct, cb, state)
    return dict(model=model, weights=weights, pt=pt, converted=converted, direct=direct)


@pytest.mark.parametrize("form", ["converted", "direct"])
def test_safetensors_codec_gives_identical_outputs(codec_files, form):
    model = codec_files["model"]
    ref, ref_state = load_codec(codec_files["pt"], model, "lenet5", SHAPE)
    got, got_state = load_codec(codec_files[form], model, "lenet5", SHAPE)
    assert got.codec.meta() == ref.codec.meta() and got.name == ref.name
    assert same_state(got.codec.state_dict(), ref.codec.state_dict())
    assert ref_state.optimizer is not None and got_state.optimizer is None
    for field in ("model", "block", "data", "input_shape", "block_input_shape", "signature"):
        assert getattr(got_state, field) == getattr(ref_state, field), field
    assert got_state.epoch == 1 and got_state.history == ref_state.history
    x = torch.randn(8, 6, 14, 14, generator=torch.Generator().manual_seed(0))
    images = load_dataset("digits", "test").images[:16]
    for lost in ([], [0], [1], [2]):
        present = torch.ones(8, 3, dtype=torch.bool)
        present[:, lost] = False
        with torch.no_grad():
            assert torch.equal(
                coded_block_output(got, x, present), coded_block_output(ref, x, present)
            )
        assert torch.equal(
            coded_predictions(model, [got], images, lost),
            coded_predictions(model, [ref], images, lost),
        )


def test_accuracy_takes_safetensors_weights_and_codec(codec_files):
    args = ["accuracy", "--weights", codec_files["weights"], "--lost-rows", "1"]
    from_st = cli(*args, "--codec", codec_files["converted"])
    from_pt = cli(*args, "--codec", codec_files["pt"])
    assert from_st.exit_code == 0, from_st.output
    assert from_st.output == from_pt.output


def tampered_codec(codec_files, path, drop_key: bool = False, **meta_changes):
    tensors, meta = load_safetensors(codec_files["converted"])
    if drop_key:
        tensors.pop(next(iter(tensors)))
    save_safetensors(path, tensors, {**meta, **meta_changes})
    return path


BAD_CODECS = {
    "cut in half": (
        lambda files, tmp: cut(files["converted"], 9000, tmp / "half.safetensors"),
        "truncated safetensors file (",
    ),
    "cut inside the header": (
        lambda files, tmp: cut(files["converted"], 20, tmp / "head.safetensors"),
        "truncated safetensors file (it ends inside its header",
    ),
    "weights, not a codec": (lambda files, tmp: files["weights"], "not a cocoi codec checkpoint"),
    "a key missing": (
        lambda files, tmp: tampered_codec(files, tmp / "k.safetensors", drop_key=True),
        "codec weights do not load: Error(s) in loading state_dict for Codec: Missing key(s)",
    ),
    "another model": (
        lambda files, tmp: tampered_codec(files, tmp / "m.safetensors", model="vgg16"),
        "was trained for model 'vgg16', not 'lenet5'",
    ),
    "metadata missing": (
        lambda files, tmp: codec_without(files, tmp / "s.safetensors", "signature"),
        "the codec checkpoint lacks signature",
    ),
}


def codec_without(codec_files, path, key: str):
    tensors, meta = load_safetensors(codec_files["converted"])
    del meta[key]
    save_safetensors(path, tensors, meta)
    return path


@pytest.mark.parametrize("case", BAD_CODECS, ids=list(BAD_CODECS))
def test_bad_safetensors_codecs_give_one_line(tmp_path, codec_files, case):
    make, expect = BAD_CODECS[case]
    path = make(codec_files, tmp_path)
    with pytest.raises(CodecError) as info:
        load_codec(path, codec_files["model"], "lenet5", SHAPE)
    assert "\n" not in str(info.value) and expect in str(info.value)
    line = one_error_line(cli("accuracy", "--weights", codec_files["weights"], "--codec", path))
    assert expect in line and str(path) in line


def test_safetensors_codec_metadata_is_json(codec_files):
    from safetensors import safe_open

    with safe_open(str(codec_files["converted"]), framework="pt") as handle:
        meta = handle.metadata()
    assert meta["format"] == "pt"
    payload = json.loads(meta["cocoi"])
    assert payload["kind"] == "cocoi-codec" and "optimizer" not in payload
    assert read_codec(codec_files["converted"])["optimizer"] is None


def test_resume_and_convert_back_refuse_a_safetensors_codec(tmp_path, codec_files):
    line = one_error_line(
        cli(
            *("train", "--weights", codec_files["weights"], "--block", BLOCK),
            *("--k", "2", "--r", "1", "--epochs", "2", "--resume"),
            *("--out", codec_files["converted"]),
        )
    )
    assert "is a .safetensors codec, which keeps no optimizer state" in line
    line = one_error_line(cli("convert", codec_files["converted"], tmp_path / "c.pt"))
    assert "codecs convert to .safetensors only" in line
    assert os.listdir(tmp_path) == []
