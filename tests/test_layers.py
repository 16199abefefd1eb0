"""The package layout is the architecture (docs/design.md, "Layout"): which package may
import which, checked on the source, so a new dependency is a decision, not an accident.

Every ``import``/``from ... import`` in the package counts, inside functions and under
``TYPE_CHECKING`` too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "cocoi_mpi"

# package (or top-level module) -> the project packages it may import. errors and
# statuses are the shared vocabulary: everyone may import them.
SHARED = {"errors", "statuses"}
ALLOWED = {
    "errors": set(),
    "statuses": set(),
    "geometry": {"codes"},
    "codes": {"latency"},  # codes/lt.py: latency/soliton.py, the one robust soliton
    "models": set(),
    "learned": {"codes", "geometry", "models"},
    "engine": {"codes", "geometry", "latency"},
    "latency": {"geometry", "experiment", "traces", "models"},
    "experiment": {"codes", "engine", "traces"},
    "traces": {"experiment"},
    "analysis": {"traces"},
    "testbed": set(),
    "runtime": {
        "codes",
        "engine",
        "experiment",
        "geometry",
        "latency",
        "learned",
        "models",
        "testbed",
        "traces",
    },
    "cli": {
        "analysis",
        "codes",
        "engine",
        "experiment",
        "latency",
        "learned",
        "models",
        "runtime",
        "testbed",
        "traces",
    },
    "run": {"cli"},
    "__main__": {"cli"},
    "__init__": set(),
}
# The pure core: no MPI, no files, no command line; tested exhaustively on its own.
PURE = [
    "geometry",
    "codes",
    "latency/profile.py",
    "latency/counts.py",
    "latency/model.py",
    "latency/soliton.py",
    "errors.py",
    "statuses.py",
]
NOT_IN_PURE = {"mpi4py", "h5py", "click"}


def modules() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def owner(path: Path) -> str:
    """The package a file belongs to (its first folder under cocoi_mpi/), or the
    top-level module's name."""
    rel = path.relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imported(path: Path, root: Path = ROOT) -> set[str]:
    """Absolute names of every module ``path`` imports, relative imports resolved."""
    rel = path.relative_to(root.parent).with_suffix("")
    package = list(rel.parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                head = ".".join(base + ([node.module] if node.module else []))
                # `from .. import x` may import a submodule x: count it as one
                names.update(f"{head}.{a.name}" for a in node.names)
            else:
                names.add(node.module)
    return names


def project_packages(names: set[str]) -> set[str]:
    """The cocoi_mpi packages (first component under cocoi_mpi) among ``names``."""
    out = set()
    for name in names:
        parts = name.split(".")
        if parts[0] == "cocoi_mpi" and len(parts) > 1:
            first = parts[1]
            if (ROOT / first).is_dir() or (ROOT / f"{first}.py").exists():
                out.add(first)
    return out


def third_party(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names}


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_layers(path):
    mine = owner(path)
    assert mine in ALLOWED, f"{mine}: a new package; give it a row in ALLOWED and design.md"
    used = project_packages(imported(path)) - {mine} - SHARED
    assert used <= ALLOWED[mine], f"{path.name} imports {sorted(used - ALLOWED[mine])}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_only_runtime_imports_mpi4py(path):
    if owner(path) != "runtime":
        assert "mpi4py" not in third_party(imported(path))


@pytest.mark.parametrize("part", PURE)
def test_the_pure_core_has_no_mpi_files_or_command_line(part):
    paths = sorted((ROOT / part).rglob("*.py")) if (ROOT / part).is_dir() else [ROOT / part]
    assert paths and all(p.exists() for p in paths)
    for path in paths:
        assert not third_party(imported(path)) & NOT_IN_PURE, path.name
        used = project_packages(imported(path)) - SHARED
        assert used <= {"geometry", "codes", "latency"}, (path.name, used)


def test_the_import_scanner_sees_relative_lazy_and_type_checking_imports(tmp_path):
    """The checks above can fail: each kind of import is read, resolved to its module."""
    probe = tmp_path / "cocoi_mpi" / "analysis" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from ..runtime import master\n"
        "def f():\n    from mpi4py import MPI\n"
        "from .. import cli\n"
        "from .report import x\n"
    )
    found = imported(probe, root=tmp_path / "cocoi_mpi")
    assert {
        "cocoi_mpi.runtime.master",
        "mpi4py",
        "cocoi_mpi.cli",
        "cocoi_mpi.analysis.report.x",
    } <= found
    assert third_party(found) >= {"mpi4py"}
