"""A newcomer's first command (the README's quickstart, cut to one round) prints nothing but
our own lines: no warning from any rank (the CUDA_HOME notice of torch's extension loader
on a machine with a CUDA toolkit but no GPU used to come once per rank)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import launch

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]


def test_quickstart_prints_no_warning(tmp_path):
    res = launch(
        3,
        [
            str(ROOT / "configs/quickstart.yaml"),
            "--out",
            str(tmp_path / "run"),
            "--set",
            "run.rounds=1",
            "--set",
            "algorithm.fedmetanas.final_round=1",
        ],
        timeout=840,
    )
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    lines = res.stdout.splitlines()
    assert lines[0].startswith("fednas-mpi ") and lines[1].startswith("devices: ")
    assert lines[2].startswith("round 1/1") and lines[3].startswith("done: ")
    assert len(lines) == 4
    assert "warn" not in res.stdout.replace(str(tmp_path), "RUN_DIR").lower()
