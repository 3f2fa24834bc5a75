"""Every command the README and docs/*.md show in a fenced block works as written.

Each command (continuation lines joined, ``&&`` chains and ``for`` loops taken apart) falls
in one class, decided by its program:

- checked here without running (fast): ``fednas-mpi`` commands parse with the CLI's own
  parsers, name configs that load with their ``--set`` overrides, and name only options
  that exist (usage synopses like ``[--round N]`` too); a ``bench/`` script exists and its
  ``--help`` lists every option used; CMake ``-D`` options are ones CMakeLists.txt reads
  (the CUDA recipe's build is tests/kernels/test_kernels_build.py's, where nvcc is);
- run at a cheap scale (``slow``: launches MPI jobs; ``build``: compiles): the README's
  next commands (a run, its resume, compare, data stats) and the CPU CMake recipe;
- left out, each with its reason (installation, SLURM, network, GPU, other tools' commands).

Every repository path a command names (configs/, jobs/, bench/ ...) must exist, whatever
its class; a program no class knows fails the test, so a new command is classified when
it is documented.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from debian_data import need_fashion_mnist

ROOT = Path(__file__).resolve().parents[1]
# pages whose commands are records, not instructions
EXCLUDED_PAGES = {
    "results-archive.md": "superseded results with the commands of their time (config paths "
    "before the configs/ move, which configs/MOVED.yaml maps)",
}
PAGES = [
    ROOT / "README.md",
    *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name not in EXCLUDED_PAGES),
]
FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^ *```", re.S | re.M)
SHELL = {"", "bash", "sh", "shell", "console"}
# a run's first line of output (the quickstart's, shown as what it prints), not a command
OUTPUT = re.compile(r"fednas-mpi \d+\.\d+\.\d+: ")
# a word a reader replaces: RUN_DIR, CFG.yaml, FILE, N, ID, runs/fednas-RUN
PLACEHOLDER = re.compile(r"[A-Z]{2,}|^[A-Z]$")
REPO_PATH = re.compile(r"(?<![\w./$-])((?:configs|jobs|bench|tests|src|tools|docs)/[\w./*$-]+)")
LAUNCHERS = ("mpirun", "mpiexec")

# program -> why it is not run or checked beyond its paths
EXCLUDED = {
    "python3 -m venv": "installation: .ci/run installs from nothing as the README says "
    "(tests/test_repo.py checks the install command)",
    ".": "activates the virtual environment of the installation",
    "pip install": "installation (site MPI builds: docs/hpc.md; CI's is .ci/run)",
    "python3 -m pip download": "fetches wheels from PyPI for a GPU machine without network",
    "module load": "a cluster's environment modules",
    "sbatch": "SLURM submission (tests/slurm submits the jobs/ scripts to a real SLURM)",
    "srun": "SLURM launch inside an allocation (tests/slurm)",
    "tensorboard": "TensorBoard's own command (tests/report reads the events it would show)",
}


@dataclass(frozen=True)
class Command:
    where: str  # README.md:83
    words: tuple[str, ...]
    block: int  # index of its fenced block among all documented ones
    line: str = ""  # the shell line it is part of, as written

    @property
    def text(self) -> str:
        return shlex.join(self.words)

    @property
    def program(self) -> str:
        """The command without its MPI launcher, from its program on."""
        words = list(self.words)
        if words[0] in LAUNCHERS and len(words) > 2 and words[1] == "-n":
            words = words[3:]
        return " ".join(words)


def _split(line: str) -> list[list[str]]:
    """The simple commands of one shell line: words split as the shell would, comments
    dropped, ``&&`` and ``;`` between commands."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    out: list[list[str]] = [[]]
    for word in lexer:
        if word in ("&&", ";"):
            out.append([])
        else:
            out[-1].append(word)
    return [c for c in out if c]


def _expand_loops(lines: list[str]) -> list[str]:
    """``for V in A B; do BODY; done`` as BODY once per word, $V replaced."""
    out, i = [], 0
    while i < len(lines):
        loop = re.fullmatch(r"for (\w+) in (.+); do", lines[i])
        if not loop:
            out.append(lines[i])
            i += 1
            continue
        end = lines.index("done", i)
        for word in loop.group(2).split():
            for body in lines[i + 1 : end]:
                out.append(re.sub(rf"\$\{{?{loop.group(1)}\}}?", word, body))
        i = end + 1
    return out


def blocks() -> list[tuple[str, str]]:
    """(page:line, text) of every fenced shell block, dedented, continuations joined."""
    out = []
    for page in PAGES:
        text = page.read_text()
        for m in FENCE.finditer(text):
            if m.group(2) not in SHELL:
                continue
            body = textwrap.dedent(m.group(3))
            where = f"{page.relative_to(ROOT)}:{text[: m.start()].count(chr(10)) + 1}"
            out.append((where, re.sub(r"\\\n\s*", " ", body)))
    return out


def documented_commands() -> list[Command]:
    out = []
    for index, (where, body) in enumerate(blocks()):
        if OUTPUT.match(body):
            continue
        lines = [ln.strip() for ln in body.splitlines()]
        lines = [ln for ln in lines if ln and not ln.startswith("#")]
        for line in _expand_loops(lines):
            out.extend(Command(where, tuple(w), index, line) for w in _split(line))
    return out


COMMANDS = documented_commands()


def _ids(c: Command) -> str:
    return f"{c.where}:{c.program[:40]}"


def excluded(c: Command) -> str | None:
    for program, why in EXCLUDED.items():
        if c.program == program or c.program.startswith(program + " "):
            return why
    return None


# ------------------------------------------------------------------ fednas-mpi commands


def is_fednas(c: Command) -> bool:
    return c.program.startswith(("fednas-mpi", "python -m fednas_mpi"))


def fednas_args(c: Command) -> list[str]:
    words = c.program.split(" ")  # the words hold no spaces: no quoted args in these commands
    return words[1:] if words[0] == "fednas-mpi" else words[3:]


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise AssertionError(f"{parser.prog} has no subcommands")


def parser_for(args: list[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    """The CLI's own parser of a ``fednas-mpi ARGS`` command and the arguments it parses."""
    if args[:1] == ["data"]:
        from fednas_mpi.data.cli import build_parser

        return build_parser(), args[1:]
    if args[:1] and args[0] in ("inspect", "compare", "plot"):
        from fednas_mpi.report.cli import build_parser

        return build_parser(args[0]), args[1:]
    if args[:1] == ["export"]:
        from fednas_mpi.export.cli import build_parser

        return build_parser(), args[1:]
    from fednas_mpi.cli import build_parser

    return build_parser(), args


def options(parser: argparse.ArgumentParser, args: list[str]) -> set[str]:
    """The option strings of ``parser`` (of its subcommand where ``args`` names one)."""
    out = set(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and args[:1]:
            out |= set(_subparser(parser, args[0])._option_string_actions)
    return out


def is_synopsis(c: Command) -> bool:
    return any(ch in c.text for ch in "[|") or "..." in c.words


FEDNAS = [c for c in COMMANDS if is_fednas(c) and not excluded(c)]


@pytest.mark.parametrize("c", [c for c in FEDNAS if is_synopsis(c)], ids=_ids)
def test_a_usage_synopsis_names_only_options_that_exist(c):
    parser, args = parser_for(fednas_args(c))
    named = {w.split("=")[0] for w in re.findall(r"--[\w-]+", c.text)}
    assert named, c.text
    missing = named - options(parser, args)
    assert not missing, f"{c.where}: {c.text}\n{parser.prog} has no {sorted(missing)}"


@pytest.mark.parametrize("c", [c for c in FEDNAS if not is_synopsis(c)], ids=_ids)
def test_a_fednas_command_parses_and_its_config_loads(c, capsys):
    from fednas_mpi.config import load_run

    parser, args = parser_for(fednas_args(c))
    try:
        parsed = parser.parse_args(args)
    except SystemExit:
        pytest.fail(f"{c.where}: {c.text}\n{capsys.readouterr().err}")
    config = getattr(parsed, "config", None)
    if config is None or PLACEHOLDER.search(config) or not config.endswith(".yaml"):
        return
    overrides = [o for o in getattr(parsed, "overrides", []) if not PLACEHOLDER.search(o)]
    load_run(ROOT / config, overrides)  # raises ConfigError naming the bad key or file


# ------------------------------------------------------------------ other programs


@cache
def _help(script: str) -> str:
    res = subprocess.run(
        [sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, f"python {script} --help\n{res.stderr}"
    return res.stdout


BENCH = [c for c in COMMANDS if re.match(r"python3? bench/", c.program)]


@pytest.mark.parametrize("c", BENCH, ids=_ids)
def test_a_bench_command_names_a_script_and_options_it_has(c):
    script = c.words[1]
    assert (ROOT / script).is_file(), f"{c.where}: {script} does not exist"
    text = _help(script)
    for option in re.findall(r"(?<!\S)--[\w-]+", c.text):
        assert re.search(rf"(?<![\w-]){option}(?![\w-])", text), (
            f"{c.where}: python {script} has no {option}"
        )


def is_test_command(c: Command) -> bool:
    return c.program.startswith(("python -m pytest", "python3 -m pytest"))


def test_the_test_commands_are_the_ones_ci_runs():
    ci = (ROOT / ".ci/run").read_text()
    found = [c for c in COMMANDS if is_test_command(c)]
    assert found
    for c in found:
        assert c.text in ci, f"{c.where}: CI does not run {c.text}"


CMAKE = [c for c in COMMANDS if c.program.startswith("cmake ")]
# the CMake options every CMake knows; the others must be read by our CMakeLists.txt
CMAKE_OWN = ("CMAKE_", "Torch_DIR")


def is_cuda_recipe(block: int) -> bool:
    return any("-DFEDNAS_WITH_CUDA=ON" in c.words for c in CMAKE if c.block == block)


def test_the_cmake_recipes_use_options_cmakelists_reads():
    assert CMAKE, "the docs lost the CMake recipe"
    assert {is_cuda_recipe(c.block) for c in CMAKE} == {True, False}, (
        "the docs show a CPU and a CUDA recipe"
    )
    cmakelists = (ROOT / "CMakeLists.txt").read_text()
    for c in CMAKE:
        for word in c.words:
            if word.startswith("-D"):
                name = word[2:].split("=")[0]
                assert name.startswith(CMAKE_OWN) or name in cmakelists, (c.where, name)


def classify(c: Command) -> str:
    if excluded(c):
        return "excluded"
    if is_fednas(c):
        return "fednas"
    if c in BENCH:
        return "bench"
    if is_test_command(c):
        return "tests"
    if c in CMAKE:
        return "cmake"
    return "unknown"


def test_the_excluded_pages_exist():
    for name in EXCLUDED_PAGES:
        assert (ROOT / "docs" / name).is_file(), f"docs/{name} is gone: drop it from EXCLUDED_PAGES"


def test_every_documented_command_is_classified():
    assert len(COMMANDS) > 20, "the parser of the docs found too few commands"
    unknown = [f"{c.where}: {c.text}" for c in COMMANDS if classify(c) == "unknown"]
    assert not unknown, "classify these in tests/test_documented_commands.py:\n" + "\n".join(
        unknown
    )


@pytest.mark.parametrize("c", COMMANDS, ids=_ids)
def test_every_repository_path_a_command_names_exists(c):
    for path in REPO_PATH.findall(c.text):
        if "$" in path or PLACEHOLDER.search(path):
            continue
        assert glob.glob(str(ROOT / path)), f"{c.where}: {path} does not exist\n{c.text}"


def test_the_check_sees_a_renamed_option_and_path():
    """The checks above fail on a command that names an option or a file that went away."""
    parser, args = parser_for(["export", "RUN_DIR", "--out", "m.pt2", "--calibration-samples"])
    assert "--calibration-samples" in options(parser, args)
    assert "--calibration-sample" not in options(parser, args)
    moved = Command("x:1", ("fednas-mpi", "configs/cpu/digits/no-such-method.yaml"), 0)
    assert REPO_PATH.findall(moved.text) == ["configs/cpu/digits/no-such-method.yaml"]
    assert not glob.glob(str(ROOT / REPO_PATH.findall(moved.text)[0]))
    assert classify(Command("x:1", ("fednas-mpj", "run"), 0)) == "unknown"


# ------------------------------------------------------------------ run at a cheap scale

# what shrinks a documented run: two rounds of 2 clients, one local epoch, FedNAS's search
# cut to the first (it needs a round of each phase); data and model as documented
CHEAP = [
    "--set",
    "run.rounds=2",
    "--set",
    "federation.clients_per_round=2",
    "--set",
    "algorithm.local_epochs=1",
    "--set",
    "algorithm.fednas.search_rounds=1",
]


def _env() -> dict:
    # fednas-mpi and mpirun of this Python's environment, as after the README's install
    bin_dir = str(Path(sys.executable).parent)
    return dict(os.environ, PATH=bin_dir + os.pathsep + os.environ["PATH"], PYTHONUNBUFFERED="1")


def _sh(command: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    res = subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert res.returncode == 0, f"{command}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def _readme_next_commands() -> list[Command]:
    first = next(c for c in COMMANDS if c.where.startswith("README") and "--resume" in c.words)
    return [c for c in COMMANDS if c.block == first.block]


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_readmes_next_commands_run(tmp_path):
    """The README's block after the quickstart, in order, in a directory holding the
    repository's configs: a run (two cheap rounds), its resume for one more round, compare
    over runs/*, and data stats of a Fashion-MNIST config."""
    commands = _readme_next_commands()
    assert [c.program.split(" ")[1] for c in commands] == [
        "configs/cpu/digits/fednas.yaml",
        "--resume",
        "compare",
        "data",
    ], "the README's next commands changed: update this test"
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    run, resume, compare, stats = commands
    _sh(shlex.join([*run.words, *CHEAP]), tmp_path)
    (run_dir,) = (tmp_path / "runs").iterdir()
    # RUN_DIR is the run just made; one more round instead of 48
    words = [str(run_dir) if w == "RUN_DIR" else w for w in resume.words]
    _sh(shlex.join([*words, "--set", "run.rounds=3"]), tmp_path)
    from fednas_mpi.store import checkpoint_path, list_checkpoints

    assert list_checkpoints(run_dir)[-1] == (3, checkpoint_path(run_dir, 3))
    out = _sh(compare.line, tmp_path).stdout
    assert "fednas" in out
    need_fashion_mnist()  # the data stats command reads the Debian files
    out = _sh(stats.text, tmp_path).stdout
    assert "client" in out


@pytest.mark.build
@pytest.mark.timeout(1500)
def test_the_cpu_cmake_recipe_builds_a_library_torch_loads(tmp_path):
    """docs/kernels.md's CPU recipe, verbatim, in a copy of the sources: it configures
    against this Python's torch (pip's, a CUDA build, where CI runs), builds, installs
    where it says, and the library it installs loads and computes the reference's mix."""
    block = {c.block for c in CMAKE if not is_cuda_recipe(c.block)}
    assert len(block) == 1
    recipe = list(dict.fromkeys(c.line for c in CMAKE if c.block in block))  # lines in order
    shutil.copy(ROOT / "CMakeLists.txt", tmp_path)
    shutil.copytree(ROOT / "src/fednas_mpi/kernels/csrc", tmp_path / "src/fednas_mpi/kernels/csrc")
    for command in recipe:
        _sh(command, tmp_path, timeout=1200)
    from fednas_mpi.kernels.loader import library_name

    lib = tmp_path / "src/fednas_mpi/kernels/lib" / library_name()
    assert lib.is_file(), sorted(p.name for p in tmp_path.rglob("*.so"))
    probe = textwrap.dedent(
        """
        import torch
        from fednas_mpi import kernels
        st = kernels.configure("fused")
        assert st.source == "prebuilt", st
        x = [torch.randn(3, 5, 7, dtype=torch.float64) for _ in range(3)]
        w = torch.randn(3, dtype=torch.float64)
        assert torch.allclose(kernels.mix(x, w), kernels.reference_mix(x, w))
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", probe],
        env=dict(os.environ, FEDNAS_KERNELS_LIBRARY=str(lib)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
