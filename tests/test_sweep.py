"""Sweep tables: scheme entries with their k, validation, interleaving, shared faults."""

from __future__ import annotations

import pytest

from cocoi_mpi.experiment.scenarios import Scenario
from cocoi_mpi.experiment.sweep import cells, parse_entry, parse_part, parse_sweep, select_part


@pytest.mark.parametrize(
    "entry, expected",
    [
        ("cocoi", ("cocoi", None)),
        ("cocoi:auto", ("cocoi", "auto")),
        ("cocoi:star", ("cocoi", "star")),
        ("cocoi:6", ("cocoi", 6)),
        ("lt-ks:auto", ("lt-ks", "auto")),
        ("uncoded", ("uncoded", None)),
    ],
)
def test_scheme_entries_name_their_k(entry, expected):
    assert parse_entry(entry) == expected


@pytest.mark.parametrize("entry", ["mds", "cocoi:best", "cocoi:", "lt:3"])
def test_bad_scheme_entries_are_named(entry):
    if entry == "cocoi:":
        assert parse_entry(entry) == ("cocoi", None)
        return
    with pytest.raises(ValueError, match="sweep scheme"):
        parse_entry(entry)


def test_parse_sweep_overrides_the_base_scenario():
    base = Scenario(kind=0, link_mbps=100)
    schemes, scenarios, reps = parse_sweep(
        {
            "schemes": ["cocoi:auto", "uncoded"],
            "repetitions": 3,
            "scenarios": [{"scenario": 2, "failures": 1}, {"scenario": 1, "lambda_tr": 0.5}],
        },
        base,
    )
    assert schemes == ["cocoi:auto", "uncoded"] and reps == 3
    assert scenarios[0] == Scenario(kind=2, failures=1, link_mbps=100)
    assert scenarios[1] == Scenario(kind=1, lambda_tr=0.5, link_mbps=100)


@pytest.mark.parametrize(
    "table, message",
    [
        ({"schemes": []}, "empty"),
        ({"repetitions": 0}, "repetitions"),
        ({"scenarios": [{"failure": 1}]}, "failure"),
        ({"scenarios": [3]}, "table"),
        ({"levels": [1]}, "levels"),
    ],
)
def test_bad_sweep_tables_are_named(table, message):
    with pytest.raises(ValueError, match=message):
        parse_sweep(table, Scenario())


def test_cells_interleave_and_share_faults_per_level():
    schemes = ["cocoi:auto", "cocoi:star", "uncoded"]
    levels = [Scenario(2, failures=f) for f in (0, 1)]
    order = cells(schemes, levels, 2, seed=4)
    assert len(order) == 3 * 2 * 2
    assert [c.repetition for c in order] == [0] * 6 + [1] * 6  # repetitions outermost
    for start in range(0, 12, 3):  # each (rep, level) block runs every scheme once
        block = order[start : start + 3]
        assert sorted(c.name for c in block) == sorted(schemes)
        assert len({c.fault_seed for c in block}) == 1 and len({c.scenario for c in block}) == 1
    assert {c.k for c in order} == {"auto", "star", None}
    assert cells(schemes, levels, 2, seed=4) == order  # reproducible
    assert cells(schemes, levels, 2, seed=5) != order


@pytest.mark.parametrize(("text", "expect"), [("0/1", (0, 1)), ("3/8", (3, 8)), ("7/8", (7, 8))])
def test_parse_part(text, expect):
    assert parse_part(text) == expect


@pytest.mark.parametrize("text", ["8/8", "-1/8", "1", "a/2", "1/0", "1/2/3", ""])
def test_parse_part_refuses(text):
    with pytest.raises(ValueError, match="part"):
        parse_part(text)


@pytest.mark.parametrize("count", [1, 2, 3, 7, 20])
def test_parts_cover_the_sweep_once(count):
    order = cells(["cocoi", "uncoded", "replication", "lt-ks"], [Scenario()], 5, seed=1)
    parts = [select_part(order, f"{i}/{count}") for i in range(count)]
    assert sorted(sum(parts, []), key=order.index) == order
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_more_parts_than_cells_is_refused():
    order = cells(["cocoi"], [Scenario()], 2, seed=0)
    with pytest.raises(ValueError, match="only 2 cells for 3 parts"):
        select_part(order, "0/3")
    assert select_part(order, None) is order
