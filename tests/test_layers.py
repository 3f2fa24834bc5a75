"""The layering of the package, read from the import statements (``ast``, nothing is
imported): a method module imports ``algorithms.base``, ``algorithms.common``,
``algorithms.configs``, ``nas``, ``models`` and the layers below, never another method;
``algorithms.common`` never imports a method; ``nas`` imports nothing distributed and no
layer above it; ``config`` imports nothing of the package, and no import circle remains
anywhere in it."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "fednas_mpi"
ALGORITHMS = PKG / "algorithms"
# what is not a method module under algorithms/
NOT_METHODS = {"__init__", "base", "registry"}
LOWER = ("fednas_mpi.flat", "fednas_mpi.seeding", "fednas_mpi.config", "fednas_mpi.kernels")
METHOD_MAY_IMPORT = (
    "fednas_mpi.algorithms.base",
    "fednas_mpi.algorithms.common",
    "fednas_mpi.algorithms.configs",
    "fednas_mpi.nas",
    "fednas_mpi.models",
    *LOWER,
)
COMMON_MAY_IMPORT = METHOD_MAY_IMPORT
NAS_MAY_NOT_IMPORT = (
    "fednas_mpi.algorithms",
    "fednas_mpi.runtime",
    "fednas_mpi.store",
    "fednas_mpi.export",
    "fednas_mpi.report",
    "fednas_mpi.cli",
    "fednas_mpi.data",
    "mpi4py",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, source: str | None = None) -> set[str]:
    """Absolute names of every module ``path`` (or ``source`` read as that file) imports
    (``from X import y`` counts as X and, where y may be a submodule, X.y)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    text = path.read_text() if source is None else source
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def within(mod: str, prefixes: tuple[str, ...]) -> bool:
    return any(mod == p or mod.startswith(p + ".") for p in prefixes)


def method_modules() -> list[Path]:
    return sorted(p for p in ALGORITHMS.glob("*.py") if p.stem not in NOT_METHODS)


def ours(mods: set[str]) -> set[str]:
    return {m for m in mods if m == "fednas_mpi" or m.startswith("fednas_mpi.")}


def real_modules(mods: set[str]) -> set[str]:
    """Drop ``X.y`` where y is a name in module X rather than a submodule."""
    out = set()
    for m in mods:
        rel = m.removeprefix("fednas_mpi").lstrip(".").replace(".", "/")
        if not rel or (PKG / rel).is_dir() or (PKG / f"{rel}.py").exists():
            out.add(m)
    return out


def test_there_are_method_modules():
    names = {p.stem for p in method_modules()}
    assert {"fednas", "fedrlnas", "perfedrlnas", "fedpnas", "fedmetanas"} <= names


@pytest.mark.parametrize("path", method_modules(), ids=lambda p: p.stem)
def test_a_method_imports_no_other_method(path):
    bad = {
        m for m in real_modules(ours(imported_modules(path))) if not within(m, METHOD_MAY_IMPORT)
    }
    assert not bad, (
        f"{path.name} imports {sorted(bad)}: shared code belongs in algorithms/common/ or nas/"
    )


@pytest.mark.parametrize("path", sorted((ALGORITHMS / "common").glob("*.py")), ids=lambda p: p.stem)
def test_common_imports_no_method(path):
    bad = {
        m for m in real_modules(ours(imported_modules(path))) if not within(m, COMMON_MAY_IMPORT)
    }
    assert not bad, f"common/{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("path", sorted((PKG / "nas").glob("*.py")), ids=lambda p: p.stem)
def test_nas_imports_nothing_distributed_nor_above_it(path):
    bad = {m for m in imported_modules(path) if within(m, NAS_MAY_NOT_IMPORT)}
    assert not bad, f"nas/{path.name} imports {sorted(bad)}"


def test_the_check_sees_a_method_importing_a_method():
    path = ALGORITHMS / "fedrlnas.py"
    for line in (
        "from .fednas import FedNAS",
        "from . import fednas",
        "from fednas_mpi.algorithms.fednas import FedNAS",
        "import fednas_mpi.algorithms.fednas",
    ):
        mods = real_modules(ours(imported_modules(path, path.read_text() + f"\n{line}\n")))
        assert not all(within(m, METHOD_MAY_IMPORT) for m in mods), line


# ------------------------------------------------------------ config is the bottom layer

CONFIG = PKG / "config.py"


def module_paths() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def import_edges(path: Path, source: str | None = None) -> set[str]:
    """The package's modules ``path`` (or ``source`` read as that file) imports, itself left
    out: ``from X import y`` is an edge to X.y where y is a submodule, else to X. A
    package's ``__init__`` runs before its submodules for every import alike, so that
    implicit step is no edge (else each module would close a circle with its parent)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    known = set(module_paths())
    out: set[str] = set()
    text = path.read_text() if source is None else source
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.update(f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names)
    return ours(out) - {name}


def import_graph() -> dict[str, set[str]]:
    paths = module_paths()
    return {m: import_edges(p) & set(paths) for m, p in paths.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_config_imports_nothing_of_the_package():
    bad = import_edges(CONFIG)
    assert not bad, f"config.py imports {sorted(bad)}: the table of methods is handed to it"


def test_the_config_check_sees_an_import_of_the_registry():
    for line in (
        "from .algorithms import registry",
        "from .algorithms.registry import METHODS",
        "import fednas_mpi.algorithms",
        "from . import algorithms",
    ):
        assert import_edges(CONFIG, CONFIG.read_text() + f"\n{line}\n"), line


def test_no_import_circle_in_the_package():
    found = circles(import_graph())
    assert not found, f"import circles: {found}"


def test_the_circle_check_sees_a_circle():
    graph = import_graph()
    graph["fednas_mpi.config"] = graph["fednas_mpi.config"] | {"fednas_mpi.algorithms.registry"}
    assert any("fednas_mpi.config" in c for c in circles(graph))


TORCH_FREE_LOAD = """
import sys
import fednas_mpi.config as config
cfg = config.load(sys.argv[1], ["run.rounds=3"])
assert cfg.algorithm.name == "fedmetanas", cfg.algorithm.name
try:
    config.from_dict({"algorithm": {"name": "fedavg", "fednas": {"lr": 1}}})
except config.ConfigError as e:
    assert "section of method fednas" in str(e), e
else:
    raise AssertionError("an unread section passed")
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "numpy", "mpi4py"))
assert not heavy, heavy
"""


def test_loading_and_validating_a_yaml_imports_no_torch(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("algorithm: {name: fedmetanas}\nmodel: {name: darts}\n")
    subprocess.run(
        [sys.executable, "-c", TORCH_FREE_LOAD, str(path)],
        check=True,
        env={**os.environ, "PYTHONPATH": str(PKG.parent)},
    )


# ------------------------------------------------------------ the runtime's jobs

TORCH_FREE_DECISION = """
import sys
from fednas_mpi import cli
try:
    cli.decide(cli.build_parser().parse_args(["--resume"]))
except cli.UsageError as e:
    assert "--resume needs the run directory" in str(e), e
else:
    raise AssertionError("a bare --resume passed")
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "h5py", "mpi4py"))
assert not heavy, heavy
"""


def test_the_run_directory_decision_imports_no_torch():
    """Rank 0 decides on the run directory (store/rundir.py) while the other ranks wait:
    the CLI and the store package load torch and h5py only once a checkpoint is read."""
    subprocess.run(
        [sys.executable, "-c", TORCH_FREE_DECISION],
        check=True,
        env={**os.environ, "PYTHONPATH": str(PKG.parent)},
    )


def message_tags(path: Path) -> set[str]:
    """The ``TAG_*`` names ``path`` assigns at module level."""
    tree = ast.parse(path.read_text(), str(path))
    return {
        t.id
        for node in tree.body
        if isinstance(node, ast.Assign)
        for t in node.targets
        if isinstance(t, ast.Name) and t.id.startswith("TAG_")
    }


def test_every_message_tag_is_the_protocols():
    """The wire protocol is one module: no other module defines a message tag."""
    owners = {module_name(p): message_tags(p) for p in sorted(PKG.rglob("*.py"))}
    owners = {m: tags for m, tags in owners.items() if tags}
    assert list(owners) == ["fednas_mpi.runtime.protocol"], owners
    assert {"TAG_PARTIAL", "TAG_STATES_META", "TAG_STATES_OUT", "TAG_STATES_IN"} <= owners[
        "fednas_mpi.runtime.protocol"
    ]
