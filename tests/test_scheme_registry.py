"""The scheme registry (codes/registry.py) and the sweep that mixes learned with exact schemes.

Every scheme a run can name is registered once with what it is; the rest of the
program asks the registry instead of comparing names. The mixed sweep used to stop
at the first learned cell when some distributed conv sat outside every coded block
(issue 17): its conv proxy asked the learned scheme for a conv code.
"""

from __future__ import annotations

import ast
import copy
import importlib
import inspect

import pytest
import torch

from cocoi_mpi import codes
from cocoi_mpi.codes import (
    BLOCK,
    CONV,
    FINEST,
    REGISTRY,
    RUN_SCHEMES,
    SCHEMES,
    Scheme,
    is_exact,
    make_scheme,
    scheme_info,
    scheme_k,
    schemes_coding,
)
from cocoi_mpi.codes.linear import GENERATORS
from cocoi_mpi.codes.registry import K_SOURCES, UNITS
from cocoi_mpi.engine.core import LocalEngine
from cocoi_mpi.engine.proxies import install, install_blocks
from cocoi_mpi.experiment.config import ConfigError, build_config
from cocoi_mpi.learned.coded_block import make_coded_block
from cocoi_mpi.learned.scheme import LearnedScheme
from cocoi_mpi.models import build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------- the registry


def test_run_schemes_keep_their_order_and_exact_ones_are_the_buildable_ones():
    """The CLI's choice list and error messages list the schemes in this order."""
    assert RUN_SCHEMES == ("cocoi", "uncoded", "replication", "lt-kl", "lt-ks", "learned")
    assert RUN_SCHEMES == tuple(REGISTRY)
    assert SCHEMES == ("cocoi", "uncoded", "replication", "lt-kl", "lt-ks")
    assert set(SCHEMES) == {name for name, info in REGISTRY.items() if info.build is not None}


@pytest.mark.parametrize("name", RUN_SCHEMES)
def test_every_scheme_is_registered_consistently(name):
    info = scheme_info(name)
    assert info.name == name and info.summary
    assert info.unit in UNITS and info.k_source in K_SOURCES
    block = info.unit == BLOCK
    # Block schemes take k from their trained codecs and build nothing for a conv.
    assert block == info.needs_codec == (info.k_source == "codec") == (info.build is None)
    assert not (block and (info.plannable or info.uses_code))
    if info.plannable:  # a plan's k replaces the run's: only where k is the run's
        assert info.k_source == "run"
    assert info.exact == (not block)  # the one approximate scheme is the learned one


@pytest.mark.parametrize("name", [n for n in RUN_SCHEMES if scheme_info(n).unit == CONV])
@pytest.mark.parametrize("code", list(GENERATORS))
def test_conv_schemes_build_what_the_registry_says(name, code):
    info = scheme_info(name)
    n, k = 6, 3
    source = info.source_k(n, k)
    assert source == scheme_k(name, n, k)
    assert source == {"run": k, "workers": n, "half": n // 2, "width": FINEST}[info.k_source]
    built = info.make(n, min(source, 37), code)  # lt-kl: a layer 37 columns wide
    assert isinstance(built, Scheme) and built.n == n
    assert built.pieces_per_task == info.pieces_per_task(code)
    assert type(built) is type(make_scheme(name, n, min(source, 37), code))


def test_only_mds_codes_take_m_from_the_generator():
    assert scheme_info("cocoi").pieces_per_task("rotation") == 2
    assert scheme_info("cocoi").pieces_per_task("stable") == 1
    assert {scheme_info(n).pieces_per_task("rotation") for n in RUN_SCHEMES if n != "cocoi"} == {1}
    with pytest.raises(ValueError, match="unknown code 'nope'; choose one of: stable"):
        scheme_info("cocoi").pieces_per_task("nope")


@pytest.mark.parametrize("bad", ["", "lt", "LT-KL", "mds", "learned:3", None, ["cocoi"]])
def test_unknown_names_are_refused_naming_every_valid_one(bad):
    with pytest.raises(ValueError, match="unknown scheme") as err:
        scheme_info(bad)
    assert str(err.value).endswith("choose one of: " + ", ".join(RUN_SCHEMES))


def test_block_schemes_build_no_conv_code_and_have_no_run_k():
    with pytest.raises(ValueError, match="codes conv blocks with trained codecs"):
        make_scheme("learned", 6, 3)
    with pytest.raises(ValueError, match="takes its k from its trained codecs"):
        scheme_k("learned", 6, 3)
    assert schemes_coding(BLOCK) == ("learned",)
    assert schemes_coding(CONV) == SCHEMES
    with pytest.raises(ValueError, match="unknown unit 'layer'"):
        schemes_coding("layer")


@pytest.mark.parametrize(
    "label, exact",
    [("cocoi", True), ("cocoi:auto", True), ("lt-ks:6", True), ("learned", False), ("x", False)],
)
def test_is_exact_reads_trace_labels(label, exact):
    assert is_exact(label) is exact


def test_engine_refuses_an_unknown_scheme_by_name():
    with pytest.raises(ValueError, match="choose one of: cocoi, uncoded"):
        LocalEngine(3, 2, scheme="mds")
    engine = LocalEngine(3, 2)
    with pytest.raises(ValueError, match="unknown scheme 'lt'"):
        engine.use("lt", 2)
    assert engine.scheme == "cocoi"  # a refused switch leaves the scheme in use


@pytest.mark.parametrize(
    "module",
    [
        "cocoi_mpi.engine.core",
        "cocoi_mpi.engine.proxies",
        "cocoi_mpi.engine.rows",
        "cocoi_mpi.experiment.config",
        "cocoi_mpi.experiment.summary",
        "cocoi_mpi.runtime.job",
        "cocoi_mpi.runtime.plans",
        "cocoi_mpi.runtime.prepare",
        "cocoi_mpi.runtime.serving",
        "cocoi_mpi.runtime.trace_meta",
    ],
)
def test_no_scheme_name_is_compared_outside_the_registry(module):
    """A scheme's name as a literal, other than a default value, is a branch on it."""
    tree = ast.parse(inspect.getsource(importlib.import_module(module)))
    defaults = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.arguments):
            defaults.update(map(id, [*node.defaults, *node.kw_defaults]))
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            defaults.add(id(node.value))  # a dataclass field's default
    names = [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in RUN_SCHEMES
        if id(node) not in defaults
    ]
    assert names == [], module


def test_codes_exports_the_registry():
    assert {"scheme_info", "SchemeInfo", "REGISTRY", "is_exact"} <= set(codes.__all__)


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"sweep": {"schemes": ["cocoi", "learned"]}}, "scheme learned needs --codec"),
        ({"scheme": "learned"}, "scheme learned needs --codec"),
        ({"codec": "c.pt", "sweep": {"schemes": ["cocoi:2"]}}, "only by --scheme learned"),
        ({"hybrid": True}, "--hybrid applies to --scheme learned"),
        ({"scheme": "mds"}, "unknown scheme 'mds'; choose one of: cocoi, uncoded"),
    ],
)
def test_codec_settings_follow_the_schemes_the_config_names(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_config(None, overrides, 4)


def test_a_mixed_sweep_with_a_codec_is_accepted():
    cfg = build_config(
        None, {"codec": "c.pt", "sweep": {"schemes": ["learned", "cocoi:auto", "uncoded"]}}, 4
    )
    assert cfg.codec == ("c.pt",)


# --------------------------------------------------------------------------- the mixed sweep


@pytest.fixture(scope="module")
def lenet_with_first_block_coded():
    """LeNet-5 with a (seeded, untrained) codec for features.0 only: features.3, a conv
    every exact cell distributes, lies outside every coded block."""
    model = build_model("lenet5", seed=1).eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        cb = make_coded_block(model, "features.0", (1, 32, 32), k=2, r=1, arch="sparsemlp")
    return model, cb


def test_learned_cells_run_convs_outside_coded_blocks_on_the_master(lenet_with_first_block_coded):
    """The proxy of a conv outside the coded blocks works under exact schemes and runs
    locally under the learned one (as in a run of the learned scheme alone)."""
    model, cb = lenet_with_first_block_coded
    coded, engine = copy.deepcopy(model), LocalEngine(n=3, k=2)
    assert [spec.name for spec in install(coded, engine)] == ["features.3"]
    install_blocks(coded, engine, [cb.loc])
    engine.codecs = {cb.name: LearnedScheme(cb.codec)}
    x = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(x)
        for scheme, layer in [("cocoi", "features.3"), ("learned", "features.0")]:
            engine.use(scheme, 2)
            torch.testing.assert_close(coded(x), want, rtol=0, atol=1e-5)
            assert [row["layer"] for row in engine.take_rows()[0]] == [layer]


class SweepEngine(LocalEngine):
    """LocalEngine with what the MPI master is given (the codecs) and does per cell
    (MasterEngine.configure itself, which the job's cell set-up calls)."""

    def __init__(self, n: int, k: int, codecs: dict):
        super().__init__(n, k)
        self.codecs = codecs

    def set_scenario(self, scenario, fault_seed: int) -> None:
        self.scenario = scenario

    def configure(self, *args) -> None:
        from cocoi_mpi.runtime.master import MasterEngine

        MasterEngine.configure(self, *args)


def test_mixed_learned_and_exact_sweep_serves_every_request_exactly(
    lenet_with_first_block_coded,
):
    """The job's own set-up (install_for, run_cells, configure_cell) and request loop,
    with in-process workers: 2 repetitions x 3 schemes x 2 requests, none refused."""
    from cocoi_mpi.experiment.config import RunConfig
    from cocoi_mpi.runtime.plans import configure_cell, install_for, learned_codecs, run_cells
    from cocoi_mpi.runtime.prepare import MasterJob

    model, cb = lenet_with_first_block_coded
    cfg = RunConfig(
        model="lenet5",
        n=3,
        k=2,
        codec=("features.0.pt",),
        sweep={"schemes": ["learned", "cocoi", "uncoded"], "repetitions": 2},
    )
    inputs = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    job = MasterJob(copy.deepcopy(model), inputs, 10, blocks=[cb], requests=len(inputs))
    engine = SweepEngine(n=3, k=2, codecs=learned_codecs(job.blocks))
    job.specs = install_for(job, engine, cfg)
    assert [spec.name for spec in job.specs] == ["features.3"]
    served: dict[str, set[str]] = {}
    requests = 0
    plan = run_cells(cfg)
    assert [cell.scheme for cell in plan].count("learned") == 2
    for cell in plan:
        configure_cell(cfg, job, engine, cell)
        for i in range(job.requests):
            engine.begin_request(requests, fault_request=i)
            requests += 1
            with torch.no_grad():
                got, want = job.model(job.input_for(i)), model(job.input_for(i))
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * float(want.abs().max()))
            rounds, _ = engine.take_rows()
            served.setdefault(cell.name, set()).update(row["layer"] for row in rounds)
    assert requests == 12
    assert served == {"learned": {"features.0"}, "cocoi": {"features.3"}, "uncoded": {"features.3"}}


def test_the_schemes_the_analysis_compares_are_registered():
    """analysis/ and the simulator name the baseline and the paper's scheme through
    statuses.py (they cannot import the torch-backed registry): both must exist."""
    from cocoi_mpi.statuses import BASELINE_SCHEME, PAPER_SCHEME

    assert scheme_info(BASELINE_SCHEME).exact and scheme_info(PAPER_SCHEME).exact
    assert scheme_info(PAPER_SCHEME).plannable and not scheme_info(BASELINE_SCHEME).plannable
