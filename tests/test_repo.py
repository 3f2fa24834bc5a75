"""Keep the README true: its commands are what CI runs (its config reference moved to
docs/configuration.md, checked in test_docs.py)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    test_cmd = _bash_blocks(readme)[1].strip()
    assert "pytest" in test_cmd
    ci_lines = [ln.strip() for ln in (ROOT / ".ci/run").read_text().splitlines()]
    assert test_cmd in ci_lines


def test_ci_runs_the_linters_before_the_tests():
    lines = [ln.strip() for ln in (ROOT / ".ci/run").read_text().splitlines()]
    check = lines.index("python -m ruff check src tests bench tools")
    fmt = lines.index("python -m ruff format --check src tests bench tools")
    assert check < fmt < next(i for i, ln in enumerate(lines) if "python -m pytest" in ln)


def test_ci_installs_and_starts_slurm_for_the_job_tests():
    ci = (ROOT / ".ci/run").read_text()
    assert re.search(r"apt-get install .*slurm-wlm munge", ci)
    lines = [ln.strip() for ln in ci.splitlines()]
    start = lines.index("bash tests/slurm/start_slurm.sh")
    assert "export CI=true" in lines[start:]  # the SLURM tests may not skip in CI
    assert start < next(i for i, ln in enumerate(lines) if "python -m pytest" in ln)
    for script in ("one_node_8gpu.sbatch", "multi_node.sbatch", "array_seeds.sbatch"):
        text = (ROOT / "jobs" / script).read_text()
        assert "#SBATCH --requeue" in text and "#SBATCH --signal=B:USR1@" in text, script


def test_quickstart_config_is_valid():
    from fednas_mpi.config import load

    cfg = load(ROOT / "configs/quickstart.yaml")
    assert cfg.data.name == "digits" and cfg.algorithm.name == "fedmetanas"


def test_every_shipped_run_config_loads():
    from fednas_mpi.config import load
    from fednas_mpi.shipped_configs import runs

    # the fragments (data/, partition/, model/, */setup.yaml): tests/config/test_shipped_configs.py
    files = [ROOT / "configs" / r.path for r in runs(ROOT / "configs")]
    assert len(files) > 20
    for f in files:
        load(f)  # raises ConfigError naming the file's bad key
    assert load(ROOT / "configs/paper/cifar10/fedmetanas.yaml").model.darts.layers == 8


def test_install_command_and_ci_pin_the_tested_torch():
    import torch

    pins = dict(
        line.split("==")
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    # torch and torchvision: the results; ruff: CI's format check formats as we do
    assert set(pins) == {"torch", "torchvision", "ruff"}
    install = _bash_blocks((ROOT / "README.md").read_text())[0]
    assert "pip install -c constraints.txt -e '.[mpich,test]'" in install
    ci = (ROOT / ".ci/run").read_text()
    assert "pip install --quiet -c constraints.txt -e '.[mpich,test]'" in ci
    assert "torch==" not in ci  # one place for the pins
    assert torch.__version__.split("+")[0] == pins["torch"], "tests run on another torch"
    from importlib.metadata import version

    assert version("ruff") == pins["ruff"], "the linters run in another ruff"
