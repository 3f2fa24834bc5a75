"""Stopping a run between rounds (what the SLURM scripts do on a signal), without SLURM."""

from __future__ import annotations

import pytest
import torch
from helpers import launch, write_config

from fednas_mpi.store import list_checkpoints, read_checkpoint

pytestmark = pytest.mark.slow


def test_stop_file_ends_after_the_round_and_resume_matches(tmp_path):
    cfg = write_config(tmp_path / "cfg.yaml", run={"name": "stop", "seed": 4, "rounds": 3})
    ref = launch(3, [str(cfg), "--out", str(tmp_path / "ref")])
    assert ref.returncode == 0, ref.stderr
    run = tmp_path / "run"
    run.mkdir()
    (run / "STOP").touch()
    res = launch(3, [str(cfg), "--out", str(run), "--overwrite"])
    assert res.returncode == 3, res.stderr  # EXIT_STOPPED
    assert res.stderr.count("STOP exists") == 1
    assert "stopped on request after round 1" in res.stdout
    assert [r for r, _ in list_checkpoints(run)] == [1]
    (run / "STOP").unlink()
    again = launch(3, ["--resume", str(run)])
    assert again.returncode == 0, again.stderr
    a, b = (
        read_checkpoint(tmp_path / "ref" / "round_00003.h5"),
        read_checkpoint(run / "round_00003.h5"),
    )
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)
