"""bench/RESULTS.md holds only current results: every `python bench/...` or `bash bench/...`
command it gives names a script that exists, options that script accepts today (read from
its own `--help`) and paths inside the repository, so a section cannot silently go stale.
Older results live in docs/results-archive.md, which this test leaves alone: its commands
are the ones that ran then."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS.md"

# Options whose value a run writes (a run cache, a report, a venv): it need not exist yet,
# but it must lie inside the repository. Every other path a command names must exist.
WRITES = {"--json", "--markdown", "--plots", "--runs", "--workdir", "--peers-venv", "--commands"}
PATHISH = re.compile(r"/|\.(ya?ml|json|md|py|sh|txt)$")
COMMAND = re.compile(r"\b(python|bash) (bench/[^\s`;|&#]+)([^`;|&#\n]*)")

# Sections whose runs are being redone; their commands are replaced with the new numbers.
# Listed here only while they still fail the check, so the entry goes when they are fixed.
AWAITING_RERUN: set[str] = set()


def _sections(text: str) -> dict[str, str]:
    """Each `## ` section of the page by its heading."""
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def _commands(section: str) -> list[tuple[str, str, list[str]]]:
    """(interpreter, script, arguments) of every bench command, in code blocks or inline."""
    fenced = re.findall(r"^```.*?^```", section, flags=re.S | re.M)
    prose = re.sub(r"^```.*?^```", "", section, flags=re.S | re.M)
    # an inline command may wrap onto the next line of the paragraph
    prose = re.sub(r"`[^`]*`", lambda m: m.group(0).replace("\n", " "), prose)
    text = re.sub(r"\\\n\s*", " ", "\n".join([*fenced, prose]))
    return [(m[1], m[2], shlex.split(m[3])) for m in COMMAND.finditer(text)]


@pytest.fixture(scope="module")
def options_of() -> dict[str, set[str]]:
    """The options each python script named in the page accepts, from its `--help`, all
    read in one process (each script imports torch)."""
    scripts = sorted(
        {s for body in _sections(RESULTS.read_text()).values() for py, s, _ in _commands(body)}
    )
    scripts = [s for s in scripts if s.endswith(".py") and (ROOT / s).is_file()]
    probe = (
        "import contextlib, io, json, runpy, sys\n"
        "out = {}\n"
        "for s in sys.argv[1:]:\n"
        "    buf = io.StringIO()\n"
        "    sys.argv = [s, '--help']\n"
        "    with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):\n"
        "        runpy.run_path(s, run_name='__main__')\n"
        "    out[s] = buf.getvalue()\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, *scripts],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    helps = json.loads(done.stdout.strip().splitlines()[-1])
    option = re.compile(r"(?<![\w-])--[a-z][\w-]*")
    return {s: set(option.findall(h)) - {"--help"} for s, h in helps.items()}


def _inside(path: str) -> bool:
    return not Path(path).is_absolute() and ".." not in Path(path).parts


def _problems(body: str, options_of: dict[str, set[str]]) -> list[str]:
    found = []
    for interpreter, script, args in _commands(body):
        cmd = f"{interpreter} {script} {' '.join(args)}"
        if not (ROOT / script).is_file():
            found.append(f"{cmd}: no script {script}")
            continue
        option = None
        for token in args:
            if token.startswith("--"):
                option, _, arg = token.partition("=")
                if interpreter == "python" and option not in options_of[script]:
                    found.append(f"{cmd}: {script} takes no {option}")
                if not arg:
                    continue
            else:
                arg = token
            if not PATHISH.search(arg) or "=" in arg or "$" in arg:
                continue  # a value (a seed, a --set key=value, a shell variable)
            if not _inside(arg):
                found.append(f"{cmd}: {arg} lies outside the repository")
            elif interpreter == "python" and option not in WRITES and not (ROOT / arg).exists():
                found.append(f"{cmd}: no {arg} in the repository")
    return found


def test_every_command_runs_today(options_of):
    sections = _sections(RESULTS.read_text())
    commands = sum(len(_commands(body)) for body in sections.values())
    assert commands >= 10, "the page's commands were not found: has its format changed?"
    stale = {}
    for heading, body in sections.items():
        problems = _problems(body, options_of)
        pending = any(heading.startswith(name) for name in AWAITING_RERUN)
        if pending:
            assert problems, f"{heading!r} passes now: drop it from AWAITING_RERUN"
        elif problems:
            stale[heading] = problems
    assert not stale, json.dumps(stale, indent=1)


def test_a_command_with_an_old_path_or_option_is_caught(options_of):
    """The check itself: the kinds of staleness the archive's sections had."""
    old = (
        "```\npython bench/compare_methods.py configs/fednas_digits.yaml --seeds 0 \\\n"
        "    --nas-suffix digits\npython bench/compare.py configs/quickstart.yaml\n```\n"
        "(`python bench/search_quality.py bench/protocols/search_quality/cpu.yaml --runs\n"
        "/work/runs --json=/tmp/sq.json`)\n"
    )
    problems = _problems(old, options_of)
    assert any("no configs/fednas_digits.yaml" in p for p in problems), problems
    assert any("takes no --nas-suffix" in p for p in problems), problems
    assert any("no script bench/compare.py" in p for p in problems), problems
    assert any("/work/runs lies outside" in p for p in problems), problems
    assert any("/tmp/sq.json lies outside" in p for p in problems), problems
    current = (
        "    python bench/search_quality.py \\\n"
        "        bench/protocols/search_quality/cpu.yaml --jobs 2 --settings fmnist_dir0.1\n"
    )
    assert _commands(current) and not _problems(current, options_of)


def test_the_index_lists_every_section_and_the_archive():
    text = RESULTS.read_text()
    index = text.split("\n## ", 1)[0]
    linked = re.findall(r"\]\(#([^)]+)\)", index)
    anchors = [
        re.sub(r"\s+", "-", re.sub(r"[^\w\s-]", "", h.replace("`", "")).strip().lower())
        for h in _sections(text)
    ]
    assert linked == anchors, "one index line per current section, in the page's order"
    assert "](../docs/results-archive.md)" in index
    assert (ROOT / "docs" / "results-archive.md").is_file()
