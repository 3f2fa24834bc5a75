"""Ctrl-C on an mpirun job: one line from rank 0, no traceback from any rank, exit status
130, every checkpoint intact (no temporary file left), and the printed resume works."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import TINY, launch, write_config

from fednas_mpi.harness import mpirun
from fednas_mpi.store import list_checkpoints, read_checkpoint

pytestmark = pytest.mark.slow


def _interrupt_after_first_checkpoint(cfg, out, n=3, timeout=240):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # a session of its own: the signal goes to the whole group, as a terminal's Ctrl-C does
    proc = subprocess.Popen(
        [mpirun(), "-n", str(n), sys.executable, "-m", "fednas_mpi", str(cfg), "--out", str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    t0 = time.monotonic()
    try:
        while not (out / "round_00001.h5").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() - t0 < timeout, "no checkpoint appeared"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return proc.returncode, stdout, stderr


def test_ctrl_c_prints_one_line_and_the_run_resumes(tmp_path):
    cfg = write_config(tmp_path / "cfg.yaml", run={**TINY["run"], "rounds": 200})
    out = tmp_path / "run"
    code, stdout, stderr = _interrupt_after_first_checkpoint(cfg, out)
    assert code == 130, (stdout, stderr)
    assert "Traceback" not in stdout + stderr and "[rank" not in stdout + stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    done = list_checkpoints(out)[-1][0]
    assert lines[0] == (
        f"fednas-mpi: interrupted at round {done + 1}; resume with: fednas-mpi --resume {out}"
    )
    assert not [p for p in os.listdir(out) if p.startswith(".round_")]  # no half file
    for _, path in list_checkpoints(out):
        read_checkpoint(path)  # whole
    res = launch(3, ["--resume", str(out), "--set", f"run.rounds={done + 1}"], timeout=240)
    assert res.returncode == 0, res.stderr
    assert list_checkpoints(out)[-1][0] == done + 1
