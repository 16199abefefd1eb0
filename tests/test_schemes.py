"""The baselines behind the Scheme interface: uncoded, replication and LT (LtCoI).

Each scheme is checked on its own (encode, decodable, decode, needs_resend, streaming),
then every scheme runs a small CNN through the in-process engine and must give the
plain model's logits.
"""

from __future__ import annotations

import copy
import ctypes
import itertools
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cocoi_mpi.codes import SCHEMES, DecodeError, Scheme, make_scheme, replication, scheme_k
from cocoi_mpi.codes import uncoded as make_uncoded
from cocoi_mpi.codes.base import Scheme as BaseScheme
from cocoi_mpi.codes.lt import LTCode, robust_soliton
from cocoi_mpi.engine.core import LocalEngine
from cocoi_mpi.engine.proxies import install
from cocoi_mpi.geometry.split import tightest_pieces

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel"),
]


def numpy_openblas_threads():
    """(get, set) of the OpenBLAS bundled with numpy's wheel, or None elsewhere."""
    for lib in (Path(np.__file__).parent.parent / "numpy.libs").glob("*openblas*.so*"):
        try:
            blas = ctypes.CDLL(str(lib))
        except OSError:
            continue
        for suffix in ("64_", "_64_", ""):
            get = getattr(blas, f"scipy_openblas_get_num_threads{suffix}", None)
            put = getattr(blas, f"scipy_openblas_set_num_threads{suffix}", None)
            if get is not None and put is not None:
                return get, put
    return None


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    """The LT checks run many small SVDs: threaded BLAS on a loaded box is 50x slower."""
    funcs = numpy_openblas_threads()
    if funcs is None:
        yield
        return
    get, put = funcs
    old = get()
    put(1)
    yield
    put(old)


def sources(k: int, seed: int = 0, shape=(2, 3, 4)) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(k, *shape, generator=gen)


def identity_outputs(scheme: Scheme, coded: torch.Tensor, order) -> dict[int, torch.Tensor]:
    """Subtask outputs when the 'conv' is the identity, in the given arrival order."""
    return {i: coded[i] for i in order}


def rel_diff(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


# --------------------------------------------------------------------------- uncoded


@pytest.mark.parametrize("n", [1, 2, 3, 6, 10])
def test_uncoded_encode_is_the_identity_assignment(n):
    scheme = make_uncoded(n)
    assert (scheme.n, scheme.k, scheme.pieces_per_task) == (n, n, 1)
    assert scheme.assign == tuple(range(n))
    pieces = sources(n)
    coded = scheme.encode(pieces)
    assert coded.shape == (n, 1, *pieces.shape[1:])
    assert torch.equal(coded[:, 0], pieces)
    with pytest.raises(ValueError):
        scheme.encode(sources(n + 1))


@pytest.mark.parametrize("n", [1, 2, 4, 6])
def test_uncoded_is_decodable_only_with_all_n(n):
    scheme = make_uncoded(n)
    for size in range(n + 1):
        for subset in itertools.combinations(range(n), size):
            assert scheme.decodable(subset) == (size == n), subset


@pytest.mark.parametrize("n", [1, 3, 6])
def test_uncoded_decode_is_exact_and_in_piece_order(n):
    scheme = make_uncoded(n)
    pieces = sources(n, seed=n)
    coded = scheme.encode(pieces)
    rng = random.Random(n)
    for _ in range(5):
        order = list(range(n))
        rng.shuffle(order)
        decoded, used = scheme.decode(identity_outputs(scheme, coded, order))
        assert torch.equal(decoded, pieces)
        assert used == list(range(n))
    if n > 1:
        with pytest.raises(DecodeError):
            scheme.decode(identity_outputs(scheme, coded, range(n - 1)))


def test_uncoded_needs_resend_only_when_nothing_else_covers_the_piece():
    scheme = make_uncoded(4)
    assert scheme.needs_resend(2, arrived=[0, 1], pending=[3])
    assert scheme.needs_resend(0, arrived=[], pending=[])
    # a re-sent copy of the same subtask already pending covers the piece
    assert not scheme.needs_resend(2, arrived=[0, 1], pending=[2, 3])


# --------------------------------------------------------------------------- replication


def expected_replication_assign(n: int) -> list[int]:
    """floor(n/2) pieces, each on two workers; an odd n gives piece 0 a third copy."""
    k = max(1, n // 2)
    if n == 1:
        return [0]
    return [i % k for i in range(2 * k)] + ([0] if n % 2 else [])


@pytest.mark.parametrize("n", [1, 2, 4, 6, 8, 10])
def test_replication_even_n_puts_every_piece_on_two_workers(n):
    scheme = replication(n)
    assert (scheme.n, scheme.k) == (n, max(1, n // 2))
    assert list(scheme.assign) == expected_replication_assign(n)
    if n > 1:
        assert all(scheme.assign.count(p) == 2 for p in range(scheme.k))


@pytest.mark.parametrize("n", [3, 5, 7, 9, 11])
def test_replication_odd_n_gives_piece_zero_a_third_copy(n):
    scheme = replication(n)
    assert scheme.n == n
    assert list(scheme.assign) == expected_replication_assign(n)
    assert scheme.assign.count(0) == 3


@pytest.mark.parametrize("n", range(1, 12))
def test_replication_is_decodable_iff_every_piece_is_covered(n):
    scheme = replication(n)
    for size in range(scheme.n + 1):
        for subset in itertools.combinations(range(scheme.n), size):
            covered = {scheme.assign[i] for i in subset}
            assert scheme.decodable(subset) == (covered == set(range(scheme.k))), subset


@pytest.mark.parametrize("n", range(1, 12))
def test_replication_first_copy_in_arrival_order_wins(n):
    scheme = replication(n)
    pieces = sources(scheme.k, seed=n)
    coded = scheme.encode(pieces)
    assert coded.shape == (scheme.n, 1, *pieces.shape[1:])
    for i in range(scheme.n):
        assert torch.equal(coded[i, 0], pieces[scheme.assign[i]])
    rng = random.Random(n)
    for _ in range(6):
        order = list(range(scheme.n))
        rng.shuffle(order)
        order = order[: rng.randint(0, scheme.n)]
        outputs = identity_outputs(scheme, coded, order)
        if not scheme.decodable(order):
            with pytest.raises(DecodeError):
                scheme.decode(outputs)
            continue
        decoded, used = scheme.decode(outputs)
        assert torch.equal(decoded, pieces)
        want = [next(i for i in order if scheme.assign[i] == p) for p in range(scheme.k)]
        assert used == want, order


@pytest.mark.parametrize("n", [2, 4, 6, 10])
def test_replication_needs_resend_only_when_both_copies_failed(n):
    scheme = replication(n)
    k = scheme.k
    for piece in range(k):
        a, b = piece, piece + k  # the two copies of this piece
        assert (scheme.assign[a], scheme.assign[b]) == (piece, piece)
        others = [i for i in range(n) if scheme.assign[i] != piece]
        assert not scheme.needs_resend(a, arrived=[b], pending=[])
        assert not scheme.needs_resend(a, arrived=[], pending=[b])
        assert not scheme.needs_resend(b, arrived=others, pending=[a])
        assert scheme.needs_resend(a, arrived=others, pending=[])  # b failed as well
        assert scheme.needs_resend(b, arrived=[], pending=others)


# --------------------------------------------------------------------------- make_scheme


@pytest.mark.parametrize("n", [1, 3, 6, 10])
@pytest.mark.parametrize("name", SCHEMES)
def test_make_scheme_builds_each_scheme_with_its_k_and_n(name, n):
    k_cli = min(3, n)
    k = scheme_k(name, n, k_cli)
    if name == "lt-kl":
        from cocoi_mpi.codes import FINEST

        assert k == FINEST  # capped by the layer's output width in the engine
        k = 37  # e.g. a layer 37 columns wide
    scheme = make_scheme(name, n, k)
    assert isinstance(scheme, BaseScheme)
    want_k = {
        "cocoi": k_cli,
        "uncoded": n,
        "replication": max(1, n // 2),
        "lt-kl": 37,
        "lt-ks": k_cli,
    }[name]
    assert scheme.k == want_k
    if name == "cocoi":
        assert scheme.n == n and scheme.pieces_per_task in (1, 2)
    elif name == "replication":
        assert scheme.n == n
    else:
        assert scheme.n == n and scheme.pieces_per_task == 1
    if name.startswith("lt"):
        assert isinstance(scheme, LTCode) and scheme.name == name


def test_make_scheme_caps_uncoded_and_replication_by_a_narrow_layer():
    assert (make_scheme("uncoded", 6, 4).n, make_scheme("uncoded", 6, 4).k) == (4, 4)
    rep = make_scheme("replication", 10, 2)
    assert rep.k == 2 and sorted(rep.assign) == [0, 0, 1, 1]


@pytest.mark.parametrize("name", ["", "lt", "LT-KL", "mds", "replicate"])
def test_make_scheme_rejects_unknown_names(name):
    with pytest.raises(ValueError, match="unknown scheme"):
        make_scheme(name, 6, 3)


# --------------------------------------------------------------------------- LT


def test_robust_soliton_is_a_distribution_for_k_up_to_300():
    for k in range(1, 301):
        p = robust_soliton(k)
        assert p.shape == (k,)
        assert np.all(p >= 0), k
        assert abs(p.sum() - 1.0) < 1e-12, k


@pytest.mark.parametrize("k", [1, 2, 7, 50, 224])
def test_lt_symbol_vectors_are_deterministic_with_1_to_k_ones(k):
    a, b = LTCode(4, k, seed=3), LTCode(9, k, seed=3)
    other = LTCode(4, k, seed=4)
    differ = 0
    for j in reversed(range(60)):  # reversed: the order vectors are asked for is irrelevant
        v = a.vector(j)
        assert set(np.unique(v)) <= {0.0, 1.0}
        assert 1 <= v.sum() <= k
        assert np.array_equal(v, b.vector(j))
        differ += not np.array_equal(v, other.vector(j))
    assert k == 1 or differ > 0


@pytest.mark.parametrize("k", [5, 20, 60])
def test_lt_rank_matches_matrix_rank_including_cache_resets(k):
    code = LTCode(6, k, seed=k)
    rng = random.Random(k)
    pool = list(range(3 * k))
    arrival: list[int] = []
    for step in range(40):
        if step % 3 == 0 or not arrival:  # a fresh arrival list: not an extension
            arrival = rng.sample(pool, rng.randint(1, 2 * k))
        elif step % 3 == 1:  # extend the previous list
            arrival = arrival + rng.sample([j for j in pool if j not in arrival], 3)
        else:  # a prefix, then a reordering of it
            arrival = arrival[: rng.randint(1, len(arrival))]
            rng.shuffle(arrival)
        want = np.linalg.matrix_rank(code.matrix(arrival))
        assert code.rank(arrival) == want, (step, len(arrival))
        assert code.rank(list(arrival)) == want  # asked again: served from the cache


@pytest.mark.parametrize("k", [3, 10, 50])
def test_lt_not_decodable_below_rank_k(k):
    code = LTCode(4, k, seed=1)
    assert not code.decodable(list(range(k - 1)))
    # many symbols that all miss source piece 0 span at most k - 1 dimensions
    blind = [j for j in range(40 * k) if code.vector(j)[0] == 0][: 3 * k]
    assert len(blind) >= k
    assert code.rank(blind) < k
    assert not code.decodable(blind)
    with pytest.raises(DecodeError):
        code.decode({j: torch.zeros(1, 2) for j in blind})


def first_decodable(code: LTCode, start: int = 0) -> list[int]:
    symbols = list(range(start, start + code.k))
    while not code.decodable(symbols):
        symbols.append(symbols[-1] + 1)
    return symbols


@pytest.mark.parametrize("k", [3, 10, 50, 224])
def test_lt_decode_recovers_the_sources_in_float32(k):
    code = LTCode(10, k, seed=11)
    pieces = sources(k, seed=k)
    assert pieces.dtype == torch.float32
    rng = random.Random(k)
    for start in (0, 500):
        symbols = first_decodable(code, start)
        rng.shuffle(symbols)  # arrival order
        assert code.decodable(symbols)
        outputs = {j: code.subtask_input(pieces, j) for j in symbols}
        decoded, used = code.decode(outputs)
        assert decoded.dtype == torch.float32 and decoded.shape == pieces.shape
        assert used == symbols
        assert rel_diff(decoded, pieces) < 1e-4, (k, start)


def test_lt_encode_gives_the_first_n_symbols():
    code = LTCode(5, 8, seed=2)
    pieces = sources(8)
    coded = code.encode(pieces)
    assert coded.shape == (5, 1, *pieces.shape[1:])
    for j in range(5):
        want = pieces[np.flatnonzero(code.vector(j)).tolist()].sum(dim=0)
        assert torch.allclose(coded[j, 0], want)
    with pytest.raises(ValueError):
        code.encode(sources(7))


def test_lt_streams_and_never_resends():
    code = LTCode(4, 12, seed=0)
    assert [code.next_subtask(i) for i in range(30)] == list(range(30))
    assert not code.needs_resend(0, arrived=[], pending=[])
    assert not code.needs_resend(3, arrived=[0, 1], pending=[2])
    with pytest.raises(ValueError):
        LTCode(4, 0)
    with pytest.raises(ValueError):
        LTCode(0, 4)


def test_lt_symbols_needed_for_k_224_is_close_to_k():
    k = 224
    needed = [len(first_decodable(LTCode(10, k, seed=seed))) for seed in range(10)]
    mean = float(np.mean(needed))
    print(f"LT k={k}: symbols needed per seed {needed}, mean {mean:.1f} ({mean / k:.3f} k)")
    assert k <= mean <= 1.2 * k


# --------------------------------------------------------------------------- engine


class TinyOddNet(nn.Module):
    """Odd geometry, narrow enough that lt-kl (one column per source symbol) stays fast."""

    input_shape = (3, 9, 19)

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.odd = nn.Conv2d(4, 6, 5, stride=2, dilation=2, padding=3)  # width 19 -> 9
        self.bn = nn.BatchNorm2d(6)
        self.same = nn.Conv2d(6, 6, 4, padding="same")
        self.grouped = nn.Conv2d(6, 8, 3, padding=1, groups=2, bias=False)
        self.pool = nn.MaxPool2d(2)  # width 9 -> 4
        self.rect = nn.Conv2d(8, 8, (3, 5), stride=(2, 1), padding=(1, 2))
        self.squeeze = nn.AdaptiveAvgPool2d((2, 1))
        self.narrow = nn.Conv2d(8, 4, 1)  # width 1: one piece
        self.head = nn.Linear(8, 5)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.relu(self.stem(x))
        x = self.relu(self.bn(self.odd(x)))
        x = self.relu(self.same(x))
        x = self.pool(self.relu(self.grouped(x)))
        x = self.squeeze(self.relu(self.rect(x)))
        return self.head(torch.flatten(self.narrow(x), 1))


WIDTHS_OUT = {"odd": 9, "same": 9, "grouped": 9, "rect": 4, "narrow": 1}


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    model = TinyOddNet()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    model.eval()
    x = torch.randn(1, *model.input_shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model, x, model(x)


def run_scheme(reference, scheme: str, n: int, k: int, **kw):
    model, x, want = reference
    net = copy.deepcopy(model)
    engine = LocalEngine(n, k, scheme=scheme, **kw)
    install(net, engine)
    with torch.no_grad():
        got = net(x)
    return rel_diff(got, want), engine.take_rows()[0]


@pytest.mark.parametrize("n, k", [(6, 3), (5, 4), (4, 1)])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_scheme_gives_the_models_logits(reference, scheme, n, k):
    diff, rows = run_scheme(reference, scheme, n, k)
    assert diff < (1e-4 if scheme.startswith("lt") else 1e-5), diff
    m = make_scheme(scheme, n, 1).pieces_per_task
    assert m == 1 or scheme == "cocoi"
    splittable = [name for name, width in WIDTHS_OUT.items() if width // m >= 1]
    assert [r["layer"] for r in rows] == splittable
    for row in rows:
        width = WIDTHS_OUT[row["layer"]]
        assert row["width_out"] == width and row["pieces_per_worker"] == m
        k_fit = min(scheme_k(scheme, n, k), width // m)
        k_tight = -(-tightest_pieces(width, k_fit * m) // m)  # same width, fewest pieces
        assert row["k"] == k_tight, row["layer"]
    if scheme == "lt-kl":
        assert [r["k"] for r in rows] == list(WIDTHS_OUT.values())  # one column per symbol


@pytest.mark.parametrize("scheme", ["lt-kl", "lt-ks"])
def test_lt_streams_past_silent_workers(reference, scheme):
    diff, rows = run_scheme(reference, scheme, 6, 4, silent=frozenset({0, 2}))
    assert diff < 1e-4
    assert all(r["n_used"] >= r["k"] for r in rows)


def wide_reference():
    """Every distributed conv is at least 8 columns wide, so every scheme keeps n = 6."""
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1),  # width 15
        nn.ReLU(),
        nn.Conv2d(6, 5, 3, stride=2, padding=1),  # width 8
        nn.Flatten(),
        nn.Linear(5 * 4 * 8, 3),
    ).eval()
    x = torch.randn(1, 3, 7, 15, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return model, x, model(x)


@pytest.mark.parametrize("scheme", ["replication", "uncoded"])
def test_piece_schemes_are_exact_in_any_arrival_order(scheme):
    for order in ([5, 4, 3, 2, 1, 0], [3, 0, 5, 1, 4, 2]):
        diff, rows = run_scheme(wide_reference(), scheme, 6, 3, order=order)
        assert diff < 1e-5
        assert len(rows) == 2 and all(r["n_used"] == r["k"] for r in rows)
        # uncoded takes the fewest pieces of ceil(W/6) columns (tightest_pieces): 15
        # columns -> 5 pieces of 3, 8 columns -> 4 pieces of 2; replication keeps 6 workers
        want = [5, 4] if scheme == "uncoded" else [6, 6]
        assert [r["n"] for r in rows] == want


def test_replication_uses_the_first_arrived_copy_in_the_engine():
    # n = 6: pieces 0, 1, 2 on workers (1, 4), (2, 5), (3, 6); worker 1 silent
    order = [5, 0, 4, 3, 2, 1]
    diff, rows = run_scheme(wide_reference(), "replication", 6, 3, order=order, silent={0, 1})
    assert diff < 1e-5
    assert [r["used_workers"] for r in rows] == ["4,5,6", "4,5,6"]
    assert all(r["n_failed"] == 2 for r in rows)


def test_local_engine_arrival_order_with_a_narrow_layer(reference):
    diff, _ = run_scheme(reference, "uncoded", 6, 6, order=[5, 4, 3, 2, 1, 0])
    assert diff < 1e-5
