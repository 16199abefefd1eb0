"""Linear MDS codes: any k of n subtask outputs rebuild the k source pieces.

Exhaustive over n <= 10, every k and every k-subset, for both generators, with and without
the systematic form. The rotation code must also decode accurately in float32 from any
subset, because that is what the runtime does with real activations.
"""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
import torch

from cocoi_mpi.codes import CODES, DEFAULT_CODE, DecodeError, LinearCode, Scheme, make_code
from cocoi_mpi.codes.analysis import decode_errors
from cocoi_mpi.codes.linear import (
    cached_generator,
    rotation_generator,
    vandermonde_generator,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GENERATORS = ["rotation", "vandermonde"]
GENERATOR_BUILDERS = {"rotation": rotation_generator, "vandermonde": vandermonde_generator}
EPS64 = np.finfo(np.float64).eps
PIECE_SHAPE = (2, 3, 4)  # (C, H, w) of one width piece


def source_pieces(code: Scheme, seed: int, dtype=torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(code.source_pieces, *PIECE_SHAPE, generator=gen, dtype=torch.float64).to(
        dtype
    )


def arrived(coded: torch.Tensor, subset: tuple[int, ...], rng: random.Random) -> dict:
    """Outputs of ``subset`` in a shuffled arrival order (the identity 'conv')."""
    order = list(subset)
    rng.shuffle(order)
    return {i: coded[i] for i in order}


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).abs().max() / want.double().abs().max())


def all_cases():
    for n in range(1, 11):
        for k in range(1, n + 1):
            yield n, k


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("systematic", [False, True], ids=["plain", "systematic"])
@pytest.mark.parametrize("n", range(1, 11))
def test_rotation_decodes_from_every_k_subset_in_float64(n, systematic):
    rng = random.Random(n)
    for k in range(1, n + 1):
        code = LinearCode(n, k, "rotation", systematic)
        x = source_pieces(code, seed=100 * n + k)
        coded = code.encode(x)
        assert coded.shape == (n, 2, *PIECE_SHAPE)
        for subset in itertools.combinations(range(n), k):
            outputs = arrived(coded, subset, rng)
            decoded, used = code.decode(outputs)
            assert used == list(outputs)
            assert decoded.shape == x.shape
            assert rel_err(decoded, x) < 1e-8, (n, k, subset)


@pytest.mark.parametrize("systematic", [False, True], ids=["plain", "systematic"])
@pytest.mark.parametrize("n", range(1, 11))
def test_vandermonde_decodes_from_every_k_subset_within_its_conditioning(n, systematic):
    rng = random.Random(n)
    for k in range(1, n + 1):
        code = LinearCode(n, k, "vandermonde", systematic)
        x = source_pieces(code, seed=100 * n + k)
        coded = code.encode(x)
        assert coded.shape == (n, 1, *PIECE_SHAPE)
        for subset in itertools.combinations(range(n), k):
            outputs = arrived(coded, subset, rng)
            decoded, _ = code.decode(outputs)
            cond = np.linalg.cond(code.rows(subset))
            # systematic rows are G @ inv(G_top): their error also carries G_top's conditioning
            top = np.linalg.cond(vandermonde_generator(n, k)[:k]) if systematic else 1.0
            tol = max(1e-10, 1e3 * cond * top * EPS64)
            assert rel_err(decoded, x) < tol, (n, k, subset, cond)


@pytest.mark.parametrize("k", range(1, 11))
def test_rotation_float32_decodes_every_subset_at_n10(k):
    n, rng = 10, random.Random(k)
    code = LinearCode(n, k, "rotation")
    x = source_pieces(code, seed=k, dtype=torch.float32)
    coded = code.encode(x)
    assert coded.dtype == torch.float32
    worst = 0.0
    for subset in itertools.combinations(range(n), k):
        decoded, _ = code.decode(arrived(coded, subset, rng))
        assert decoded.dtype == torch.float32
        worst = max(worst, rel_err(decoded, x))
    assert worst < 1e-4


def test_decode_uses_the_first_k_arrivals_and_ignores_later_ones():
    code = LinearCode(6, 3, "rotation")
    x = source_pieces(code, seed=1)
    coded = code.encode(x)
    outputs = {i: coded[i] for i in (4, 1, 5, 0, 2)}
    outputs[0] = torch.full_like(coded[0], float("nan"))  # a 4th arrival is never read
    decoded, used = code.decode(outputs)
    assert used == [4, 1, 5]
    assert rel_err(decoded, x) < 1e-10


def test_encode_is_the_generator_applied_to_the_pieces():
    code = LinearCode(5, 3, "vandermonde")
    x = source_pieces(code, seed=2)
    coded = code.encode(x)
    expected = torch.einsum("ij,j...->i...", torch.tensor(code.generator), x)
    torch.testing.assert_close(coded[:, 0], expected)


def test_encode_rejects_the_wrong_number_of_pieces():
    code = LinearCode(4, 2, "rotation")  # 4 source pieces
    with pytest.raises(ValueError, match="expected 4 pieces"):
        code.encode(torch.zeros(3, *PIECE_SHAPE))


# --------------------------------------------------------------------------- below k


@pytest.mark.parametrize("generator", GENERATORS)
@pytest.mark.parametrize("n,k", [(1, 1), (4, 2), (6, 6), (10, 7)])
def test_decodable_is_false_below_k_and_decode_raises(n, k, generator):
    code = LinearCode(n, k, generator)
    coded = code.encode(source_pieces(code, seed=3))
    for size in range(k):
        for subset in itertools.combinations(range(n), size):
            assert not code.decodable(subset)
            with pytest.raises(DecodeError, match=f"needs {k} outputs"):
                code.decode({i: coded[i] for i in subset})
    assert code.decodable(tuple(range(k)))
    assert code.decodable(tuple(range(n)))


def test_decode_error_is_a_runtime_error():
    assert issubclass(DecodeError, RuntimeError)


# --------------------------------------------------------------------------- systematic


@pytest.mark.parametrize("generator", GENERATORS)
@pytest.mark.parametrize("n,k", [(1, 1), (3, 2), (6, 4), (10, 7), (10, 10)])
def test_systematic_first_k_subtasks_carry_the_sources(n, k, generator):
    code = LinearCode(n, k, generator, systematic=True)
    m = code.pieces_per_task
    raw = GENERATOR_BUILDERS[generator](n, k)[: k * m]
    tol = max(1e-12, 1e2 * np.linalg.cond(raw) * EPS64)
    np.testing.assert_allclose(code.generator[: k * m], np.eye(k * m), atol=tol)
    x = source_pieces(code, seed=4)
    coded = code.encode(x)
    torch.testing.assert_close(coded[:k].reshape(x.shape), x, rtol=0, atol=10 * tol)


@pytest.mark.parametrize("generator", GENERATORS)
@pytest.mark.parametrize("n,k", [(1, 1), (3, 2), (6, 4), (10, 7)])
def test_systematic_decode_of_first_k_is_the_identity_shortcut(n, k, generator):
    code = LinearCode(n, k, generator, systematic=True)
    x = source_pieces(code, seed=5, dtype=torch.float32)
    outs = x.reshape(k, code.pieces_per_task, *PIECE_SHAPE)  # what the first k would return
    rng = random.Random(k)
    order = list(range(k))
    rng.shuffle(order)
    decoded, used = code.decode({i: outs[i] for i in order})
    assert sorted(used) == list(range(k))
    assert torch.equal(decoded, x)  # bitwise: no matrix product on the shortcut
    assert not code._inverses  # no inverse was even computed


def test_systematic_decode_from_other_subsets_still_inverts():
    code = LinearCode(6, 3, "rotation", systematic=True)
    x = source_pieces(code, seed=6)
    coded = code.encode(x)
    decoded, _ = code.decode({i: coded[i] for i in (5, 0, 3)})
    assert rel_err(decoded, x) < 1e-10
    assert (0, 3, 5) in code._inverses  # systematic decoding caches by sorted subset


def test_names_and_pieces_per_task():
    assert LinearCode(4, 2).name == "stable" and LinearCode(4, 2).pieces_per_task == 1
    assert LinearCode(4, 2).systematic  # the default is systematic as built
    assert LinearCode(4, 2, "rotation").name == "rotation"
    assert LinearCode(4, 2, "rotation").pieces_per_task == 2
    assert LinearCode(4, 2, "rotation", systematic=True).name == "rotation-sys"
    code = LinearCode(4, 2, "vandermonde")
    assert code.name == "vandermonde" and code.pieces_per_task == 1 and code.source_pieces == 2
    assert LinearCode(4, 3, "rotation").source_pieces == 6
    assert code.describe() == "vandermonde(n=4, k=2, m=1)"


# --------------------------------------------------------------------------- caches


@pytest.mark.parametrize("systematic", [False, True])
@pytest.mark.parametrize("generator", GENERATORS)
def test_generator_cache_returns_the_same_read_only_array(generator, systematic):
    a = LinearCode(7, 4, generator, systematic).generator
    b = LinearCode(7, 4, generator, systematic).generator
    assert a is b
    assert a is cached_generator(generator, 7, 4, systematic)
    assert a.dtype == np.float64 and not a.flags.writeable
    with pytest.raises(ValueError):
        a[0, 0] = 1.0
    m = 2 if generator == "rotation" else 1
    assert a.shape == (7 * m, 4 * m)


def test_generator_matches_the_builders():
    np.testing.assert_array_equal(
        cached_generator("rotation", 5, 3, False), rotation_generator(5, 3)
    )
    np.testing.assert_array_equal(
        cached_generator("vandermonde", 5, 3, False), vandermonde_generator(5, 3)
    )


def test_vandermonde_generator_is_the_papers():
    np.testing.assert_array_equal(
        vandermonde_generator(3, 3), np.array([[1, 1, 1], [4, 2, 1], [9, 3, 1]], dtype=float)
    )


def test_rotation_generator_blocks_are_rotations_of_roots_of_unity():
    n, k = 5, 3
    gen = rotation_generator(n, k)
    for i in range(n):
        for j in range(k):
            z = np.exp(2j * np.pi * i * j / n)
            block = gen[2 * i : 2 * i + 2, 2 * j : 2 * j + 2]
            np.testing.assert_allclose(block, [[z.real, -z.imag], [z.imag, z.real]], atol=1e-15)


def test_inverse_cache_hits_on_the_second_call():
    code = LinearCode(6, 3, "rotation")
    first = code.inverse((4, 0, 2))
    assert code.inverse((4, 0, 2)) is first
    np.testing.assert_allclose(first @ code.rows((4, 0, 2)), np.eye(6), atol=1e-12)


def test_decode_reuses_the_cached_inverse_and_torch_matrix():
    code = LinearCode(6, 3, "rotation")
    coded = code.encode(source_pieces(code, seed=7, dtype=torch.float32))
    code.decode({i: coded[i] for i in (1, 3, 5)})
    inv, mats = dict(code._inverses), dict(code._torch)
    code.decode({i: coded[i] for i in (1, 3, 5)})
    assert code._inverses[(1, 3, 5)] is inv[(1, 3, 5)]
    assert code._torch == mats and all(code._torch[key] is mats[key] for key in mats)


def test_rows_selects_each_subtasks_m_rows_in_order():
    code = LinearCode(4, 2, "rotation")
    np.testing.assert_array_equal(code.rows((2, 0)), code.generator[[4, 5, 0, 1]])


# --------------------------------------------------------------------------- conditioning


@pytest.mark.parametrize("k", range(1, 11))
def test_rotation_worst_condition_at_n10_is_small(k):
    code = LinearCode(10, k, "rotation")
    worst = max(code.condition(s) for s in itertools.combinations(range(10), k))
    assert worst < 100


def test_vandermonde_worst_condition_at_n10_k7_is_huge():
    code = LinearCode(10, 7, "vandermonde")
    worst = max(code.condition(s) for s in itertools.combinations(range(10), 7))
    assert worst > 1e9


def test_rotation_condition_is_one_for_consecutive_full_sets():
    # all n roots of unity: a scaled unitary DFT matrix
    assert LinearCode(8, 8, "rotation").condition(tuple(range(8))) == pytest.approx(1.0)


# --------------------------------------------------------------------------- make_code


@pytest.mark.parametrize("name", GENERATORS)
@pytest.mark.parametrize("systematic", [False, True])
def test_make_code_builds_a_linear_code(name, systematic):
    code = make_code(name, 5, 3, systematic)
    assert isinstance(code, LinearCode) and isinstance(code, Scheme)
    expected = systematic or name == "stable"  # stable is systematic as built
    assert (code.n, code.k, code.systematic, code.generator_name) == (5, 3, expected, name)


def test_code_registry():
    assert set(CODES) == {"stable", "rotation", "vandermonde"}
    assert DEFAULT_CODE == "stable"


@pytest.mark.parametrize("name", ["rs", "", "Rotation", "lt"])
def test_make_code_rejects_unknown_names(name):
    with pytest.raises(ValueError, match="unknown code"):
        make_code(name, 4, 2)
    with pytest.raises(ValueError, match="unknown code"):
        LinearCode(4, 2, name)


@pytest.mark.parametrize("name", GENERATORS)
@pytest.mark.parametrize("n,k", [(4, 5), (4, 0), (4, -1), (1, 2), (0, 0)])
def test_make_code_rejects_k_outside_1_to_n(name, n, k):
    with pytest.raises(ValueError, match="1 <= k <= n"):
        make_code(name, n, k)


@pytest.mark.parametrize("name", GENERATORS)
def test_fixed_rate_subtask_input_is_its_encoded_row(name):
    code = make_code(name, 5, 3)
    pieces = torch.randn(code.source_pieces, 2, 3, 4, dtype=torch.float64)
    coded = code.encode(pieces)
    for j in range(code.n):
        assert torch.equal(code.subtask_input(pieces, j), coded[j])
    with pytest.raises(ValueError, match="subtasks 0..4"):
        code.subtask_input(pieces, 5)


# --------------------------------------------------------------------------- the stable code


@pytest.mark.parametrize("k", range(1, 11))
def test_stable_float32_worst_error_over_every_erasure_pattern_at_n10(k):
    """The default code's claim (docs/codes.md): <= 1e-5 for every k-subset of 10."""
    res = decode_errors("stable", 10, k, torch.float32)
    assert res["subsets"] == math.comb(10, k)
    assert res["worst_error"] <= 1e-5, res


@pytest.mark.parametrize("n,k", [(10, 7), (10, 8), (6, 3), (5, 1), (4, 4)])
def test_stable_encodes_sources_unchanged_and_only_multiplies_parities(n, k):
    code = LinearCode(n, k)
    x = torch.randn(k, 2, 3, 4, dtype=torch.float64)
    coded = code.encode(x)
    assert torch.equal(coded[:k, 0], x)  # bit for bit: a copy, no arithmetic
    if n > k:
        parity = torch.tensor(code.generator[k:]) @ x.reshape(k, -1)
        torch.testing.assert_close(coded[k:, 0].reshape(n - k, -1), parity)
    assert code.sources_of(0) == range(0, 1)
    assert code.sources_of(n - 1) == (None if k < n else range(n - 1, n))


def test_stable_decode_missing_rebuilds_only_what_is_missing():
    code = LinearCode(10, 7)
    x = torch.randn(7, 2, 3, 4, dtype=torch.float64)
    coded = code.encode(x)
    arrived = {i: coded[i] for i in (8, 0, 1, 9, 3, 5, 6)}  # sources 2 and 4 lost
    rebuilt, used = code.decode_missing(arrived, [2, 4])
    assert rebuilt.shape[0] == 2
    torch.testing.assert_close(rebuilt.reshape(2, -1), x[[2, 4]].reshape(2, -1))
    assert sorted(used) == [0, 1, 3, 5, 6, 8, 9] and used == [8, 0, 1, 9, 3, 5, 6]
    nothing, used = code.decode_missing({i: coded[i] for i in range(7)}, [])
    assert nothing.shape[0] == 0 and used == list(range(7))
    decoded, _ = code.decode(arrived)
    torch.testing.assert_close(decoded.reshape(7, -1), x.reshape(7, -1))


def test_stable_table_is_what_the_search_finds():
    """The shipped parity blocks are reproducible: the seeded search gives them again."""
    from cocoi_mpi.codes.stable import search_parity, shipped_table, stable_parity

    assert "10,7" in shipped_table()
    np.testing.assert_array_equal(stable_parity(6, 3), search_parity(6, 3))


@pytest.mark.parametrize("n", [*range(1, 20), 24, 32, 33, 48, 64, 65, 100])
def test_stable_groups_share_the_workers_and_the_pieces(n):
    """One group up to the shipped table; past it groups of at most GROUP_MAX workers
    (bigger only as repetition codes, k_g = 1, or with one parity, when there are fewer
    parities than groups), every group with a parity, every piece and worker in one."""
    from cocoi_mpi.codes.stable import GROUP_MAX, TABLE_MAX_N, group_subtasks, stable_groups

    for k in range(1, n + 1):
        groups = stable_groups(n, k)
        assert sum(size for size, _ in groups) == n and sum(p for _, p in groups) == k
        assert all(1 <= pieces <= size for size, pieces in groups)
        big = [(size, p) for size, p in groups if size > GROUP_MAX and n > TABLE_MAX_N]
        assert all(p in (1, size - 1) for size, p in big)  # repetition, or one sum parity
        assert k == n or all(p < size for size, p in groups)  # every group tolerates a loss
        assert len(groups) == 1 or n > TABLE_MAX_N
        layout = group_subtasks(n, k)
        assert sorted(i for s, p in layout for i in [*s, *p]) == list(range(n))
        assert sorted(i for s, _ in layout for i in s) == list(range(k))


@pytest.mark.parametrize(("n", "k"), [(16, 8), (20, 15), (32, 24), (64, 48), (32, 30), (64, 63)])
def test_grouped_stable_decodes_any_loss_its_groups_tolerate(n, k):
    """Any n_g - k_g lost per group decodes in float32 within 1e-5; one more lost in a
    group does not decode, whatever the others hold."""
    code = make_code("stable", n, k)
    assert len(code.groups) > 1 or k == n - 1
    rng = random.Random(n * 100 + k)
    source = torch.randn(k, 3, 2, 4, generator=torch.Generator().manual_seed(k))
    coded = code.encode(source)
    for _ in range(100):
        kept = []
        for sources, parities in code.groups:
            members = [*sources, *parities]
            kept += rng.sample(members, len(members) - rng.randint(0, len(parities)))
        rng.shuffle(kept)
        assert code.decodable(kept)
        decoded, used = code.decode({i: coded[i] for i in kept})
        assert set(used) <= set(kept)
        assert float((decoded - source).abs().max() / source.abs().max()) <= 1e-5
    sources, parities = code.groups[0]
    too_few = [i for i in range(n) if i not in [*sources, *parities][: len(parities) + 1]]
    assert not code.decodable(too_few)


def test_grouped_worst_case_is_its_worst_groups():
    """Exact at any n: the whole code's worst is the worst of its groups' exhaustive
    worst cases (each group decodes from its own subtasks alone)."""
    from cocoi_mpi.codes.analysis import decode_errors

    whole = decode_errors("stable", 32, 24, torch.float32)
    assert whole["method"].startswith("all, per group")
    groups = make_code("stable", 32, 24).groups
    alone = [
        decode_errors("stable", len(s) + len(p), len(s), torch.float32)["worst_error"]
        for s, p in groups
    ]
    assert whole["worst_error"] == max(alone) <= 1e-5
    assert len(set(whole["worst_subset"])) == len(groups[0][0])


def test_unsafe_codes_are_refused_naming_a_safe_one():
    from cocoi_mpi.codes.safety import UnsafeCode, check_code, largest_safe_k

    assert largest_safe_k("vandermonde", 10, False, 1e-4) == 2
    with pytest.raises(UnsafeCode, match=r"k=3 .*--code stable .*k <= 2 with --code vandermonde"):
        check_code("vandermonde", 10, 8, False, 1e-4)
    check_code("vandermonde", 10, 2, False, 1e-4)
    check_code("stable", 64, 48, False, 1e-4)
    assert largest_safe_k("stable", 64, False, 1e-4) == 64


@pytest.mark.parametrize("name", sorted(CODES))
@pytest.mark.parametrize("systematic", [False, True])
def test_bias_scales_are_the_encoding_row_sums(name, systematic):
    """A worker adds bias_scales(i)[p] times the bias to piece p of subtask i: the sum
    of that piece's generator row, so the coded outputs are the code's combination of
    biased pieces; a source piece carried unchanged gets exactly 1."""
    code = make_code(name, 10, 7, systematic)
    m = code.pieces_per_task
    for i in range(code.n):
        rows = code.generator[i * m : (i + 1) * m]
        want = torch.tensor(rows.sum(axis=1), dtype=torch.float32)
        got = torch.tensor(code.bias_scales(i))
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)
        if code.sources_of(i) is not None:
            assert code.bias_scales(i) == (1.0,) * m


def test_lt_bias_scales_are_each_symbols_degree():
    from cocoi_mpi.codes import LTCode

    code = LTCode(10, 8, seed=3)
    ones = torch.ones(code.k, 1, 1, 1)
    for i in (0, 5, 9, 14, 30):  # streaming symbols past n too
        degree = float(code.subtask_input(ones, i).sum())
        assert code.bias_scales(i) == (degree,)
        assert degree == int(degree) >= 1


def test_shipped_worst_errors_are_what_the_analysis_measures():
    """stable_errors.json (the safety check's look-up) holds each shipped block's
    measured worst case: measured again here for a few blocks, and used as the
    whole grouped code's worst case."""
    from cocoi_mpi.codes.analysis import decode_errors
    from cocoi_mpi.codes.safety import shipped_errors, worst_float32

    table = shipped_errors()
    assert len(table) == 78  # every (n, k) with 1 <= k <= n <= 12
    for n, k in [(10, 5), (12, 6), (7, 3)]:
        measured = decode_errors("stable", n, k, torch.float32)["worst_error"]
        # the same blocks and patterns; float32 sums in another order (this test runs
        # torch on one thread, the table was made on two) move the worst case a little
        assert measured / 2 <= table[f"{n},{k}"] <= 2 * measured
        assert table[f"{n},{k}"] <= 1e-4
    error, how = worst_float32("stable", 32, 24, False)
    assert "shipped" in how and error == table["8,6"]
