"""Progress bars: shown on a terminal only, never with quiet, never in a log."""

from __future__ import annotations

import io

import pytest
from click.testing import CliRunner

from cocoi_mpi.cli.commands import main
from cocoi_mpi.experiment import progress as progress_module
from cocoi_mpi.experiment.progress import echo_line, on_terminal, progress


class FakeTTY(io.StringIO):
    """A stream that says it is a terminal (what tqdm writes stays readable)."""

    def isatty(self) -> bool:
        return True


class FakeRankStream(io.StringIO):
    """A rank's stderr under mpirun: a pipe on descriptor 2."""

    def fileno(self) -> int:
        return 2


def drive(bar) -> None:
    bar.set_postfix_str("cocoi, none 0, rep 0: 0.123 s", refresh=False)
    bar.update(3)
    bar.close()


def test_disabled_when_the_stream_is_not_a_terminal():
    stream = io.StringIO()
    bar = progress(5, "lenet5", stream=stream)
    assert bar.disable
    drive(bar)
    assert stream.getvalue() == ""


def test_shown_on_a_terminal():
    stream = FakeTTY()
    bar = progress(5, "lenet5", stream=stream, unit="req")
    assert not bar.disable
    drive(bar)
    out = stream.getvalue()
    assert "lenet5" in out and "3/5" in out and "0.123 s" in out and "\r" in out


def test_quiet_disables_it_even_on_a_terminal():
    stream = FakeTTY()
    bar = progress(5, "lenet5", quiet=True, stream=stream)
    assert bar.disable
    drive(bar)
    assert stream.getvalue() == ""


def test_lines_go_out_where_no_bar_shows_them():
    lines: list[str] = []
    with progress(2, stream=io.StringIO()) as hidden:
        echo_line(hidden, lines.append, "request 1/2", stdout=FakeTTY())
    with progress(2, stream=FakeTTY()) as shown:
        echo_line(shown, lines.append, "request 1/2 (same screen)", stdout=FakeTTY())
        echo_line(shown, lines.append, "request 2/2 (to a log)", stdout=io.StringIO())
    assert lines == ["request 1/2", "request 2/2 (to a log)"]


@pytest.mark.parametrize(("target", "expected"), [("/dev/pts/3", True), ("pipe:[42]", False)])
def test_under_mpirun_the_launchers_descriptor_decides(monkeypatch, target, expected):
    """A rank's own stderr is a pipe to mpirun whatever mpirun writes to; mpirun's counts."""
    seen = []
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "0")
    monkeypatch.setattr(progress_module.os, "readlink", lambda path: seen.append(path) or target)
    assert on_terminal(FakeRankStream()) is expected
    assert seen == [f"/proc/{progress_module.os.getppid()}/fd/2"]


def test_train_prints_lines_and_no_bar_without_a_terminal(tmp_path):
    out = tmp_path / "lenet5.pt"
    args = ["train", "--base", "--epochs", "1", "--out", str(out)]
    run = CliRunner().invoke(main, args)
    assert run.exit_code == 0, run.output
    assert "epoch 1/1: loss" in run.output
    assert "\r" not in run.output and "%|" not in run.output and "epoch/s" not in run.output
    quiet = CliRunner().invoke(main, [*args, "--quiet"])
    assert quiet.exit_code == 0, quiet.output
    assert "epoch" not in quiet.output and "\r" not in quiet.output
    assert f"wrote {out}" in quiet.output
