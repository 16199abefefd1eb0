"""Worst-case decode error over all k-subsets: the numbers docs/codes.md quotes."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from cocoi_mpi.cli.commands import main
from cocoi_mpi.codes.analysis import decode_errors, error_table, format_table

N = 10
TOLERANCE = 1e-4  # RunConfig.tolerance: the runtime's check


@pytest.fixture(scope="module")
def table() -> list[dict]:
    """Both codes, every k, both dtypes at n = 10: computed once for the module."""
    return error_table(N, range(1, N + 1), ["rotation", "vandermonde"])


def rows_of(table: list[dict], code: str) -> dict[int, dict]:
    return {r["k"]: r for r in table if r["code"] == code}


def test_rotation_float32_meets_runtime_tolerance_for_every_k(table):
    """The runtime decodes float32 activations from any k workers and relies on this."""
    rows = rows_of(table, "rotation")
    assert sorted(rows) == list(range(1, N + 1))
    for k, row in rows.items():
        assert row["worst_float32"] < TOLERANCE, (k, row)
        assert row["worst_cond"] < 1e2, (k, row)


@pytest.mark.parametrize("systematic", [False, True])
def test_rotation_float32_ok_also_systematic(systematic):
    res = decode_errors("rotation", N, 5, torch.float32, systematic=systematic)
    assert res["subsets"] == 252
    assert res["worst_error"] < TOLERANCE


def test_vandermonde_float32_fails_at_k7(table):
    """The paper's code on nodes 1..n: float32 decoding is garbage at n=10, k=7."""
    row = rows_of(table, "vandermonde")[7]
    assert row["worst_float32"] > 1e-2
    assert row["worst_cond"] > 1e9


def test_float64_more_accurate_than_float32(table):
    for row in table:
        if row["worst_float32"] > 0:
            assert row["worst_float64"] < row["worst_float32"], row


def test_decode_errors_reports_worst_subset():
    res = decode_errors("vandermonde", N, 4, torch.float64)
    assert len(res["worst_subset"]) == 4
    assert res["median_error"] <= res["worst_error"]
    assert res["median_cond"] <= res["worst_cond"]
    assert res["dtype"] == "float64"


def test_decode_errors_reproducible():
    a = decode_errors("rotation", 6, 3, torch.float32, seed=1)
    b = decode_errors("rotation", 6, 3, torch.float32, seed=1)
    assert a == b


def test_cli_prints_a_row_per_k():
    result = CliRunner().invoke(main, ["codes", "--n", "6", "--code", "rotation"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].split()[:3] == ["code", "systematic", "k"]
    assert [line.split()[2] for line in lines[1:]] == [str(k) for k in range(1, 7)]
    assert all(line.split()[-3:-1] == ["ok", "all"] for line in lines[1:])  # verdict, patterns


def test_cli_markdown_table():
    args = ["codes", "--n", "5", "--k", "3", "--k", "2", "--markdown", "--systematic"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 2 + 3 * 2  # header, rule, 3 codes x 2 ks
    assert all(line.startswith("|") and line.endswith("|") for line in lines)
    assert set(lines[1]) <= set("|-")
    assert lines[1].count("|") == lines[0].count("|")
    assert "| stable | yes | 2 |" in lines[2]  # the default, systematic as built
    assert "| rotation | yes | 2 |" in lines[4]


@pytest.mark.parametrize("args", [["--k", "11"], ["--code", "nope"]])
def test_cli_rejects_bad_options(args):
    result = CliRunner().invoke(main, ["codes", *args])
    assert result.exit_code == 2
    assert "Invalid value" in result.output


def test_format_table_verdict_marks_failures():
    rows = [
        {
            "code": "x",
            "systematic": False,
            "k": 1,
            "worst_cond": 1.0,
            "worst_float32": 1e-3,
            "median_float32": 1e-5,
            "worst_float64": 1e-12,
        }
    ]
    assert "FAILS" in format_table(rows, 1e-4)
    assert "FAILS" not in format_table(rows, 1e-2)
