"""What the fault-injection tests share: launching a run they can break, finding its ranks,
timing its exit, and checking what it left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fednas_mpi.harness import mpirun
from fednas_mpi.store import list_checkpoints, read_checkpoint

EXIT_LIMIT_S = 30.0  # a broken job must be gone this soon after the fault
# an unbroken run's limit (a few seconds on 2 idle cores); raise it on a loaded machine
RUN_LIMIT_S = float(os.environ.get("FEDNAS_FAULT_RUN_LIMIT", "180"))
REPORT = os.environ.get("FEDNAS_FAULT_REPORT")  # JSON lines: one per scenario, if set


@dataclass
class Job:
    proc: subprocess.Popen
    out: Path
    err: Path
    started: float

    @property
    def stdout(self) -> str:
        return self.out.read_text()

    @property
    def stderr(self) -> str:
        return self.err.read_text()


def start(
    n: int, args: list[str], log_dir: Path, env: dict | None = None, name: str = "job"
) -> Job:
    """``mpirun -n n python -m fednas_mpi args`` in a session of its own (so every process
    it starts can be found and, at worst, killed as a group); output goes to files."""
    log_dir.mkdir(parents=True, exist_ok=True)
    out, err = log_dir / f"{name}.out", log_dir / f"{name}.err"
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen(
            [mpirun(), "-n", str(n), sys.executable, "-m", "fednas_mpi", *args],
            stdout=o,
            stderr=e,
            env=full_env,
            start_new_session=True,
        )
    return Job(proc, out, err, time.monotonic())


def start_command(
    command: list[str], log_dir: Path, env: dict | None = None, name: str = "job"
) -> Job:
    """Any command (the jobs/ wrapper), started like ``start``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    out, err = log_dir / f"{name}.out", log_dir / f"{name}.err"
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen(
            command,
            stdout=o,
            stderr=e,
            env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
            start_new_session=True,
        )
    return Job(proc, out, err, time.monotonic())


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def _descends(pid: int, ancestor: int) -> bool:
    """Whether ``pid`` is a (grand)child of ``ancestor`` (hydra gives ranks sessions of
    their own, so the session does not tell)."""
    for _ in range(16):
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
        pid = _parent(pid)
    return False


def rank_pids(job: Job, n: int, timeout: float = 60.0) -> dict[int, int]:
    """The pid of each MPI rank of ``job`` (its descendants with PMI_RANK set)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            try:
                if not _descends(pid, job.proc.pid):
                    continue
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except (OSError, ProcessLookupError):
                continue
            ranks = [v[len(b"PMI_RANK=") :] for v in env if v.startswith(b"PMI_RANK=")]
            if ranks and b"fednas_mpi" in cmd:
                found[int(ranks[0])] = pid
        if len(found) == n:
            return found
        if job.proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"ranks of the job not found (have {found}); stderr:\n{job.stderr}")


def wait_for(predicate, timeout: float, what: str, job: Job | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if job is not None and job.proc.poll() is not None:
            raise AssertionError(
                f"job ended (status {job.proc.returncode}) before {what}:\n{job.stderr}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def wait_exit(job: Job, limit: float) -> tuple[int, float]:
    """(exit status, seconds it took); kill the session and fail if it takes over ``limit``."""
    t0 = time.monotonic()
    try:
        rc = job.proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(job.proc.pid, signal.SIGKILL)
        job.proc.wait()
        raise AssertionError(f"job still running after {limit}s; killed.\n{job.stderr}") from None
    return rc, time.monotonic() - t0


def finish(job: Job, limit: float = RUN_LIMIT_S) -> int:
    rc, _ = wait_exit(job, limit)
    return rc


def assert_checkpoints_whole(run_dir: Path) -> list[int]:
    """Every round file left reads back whole (tensors included); their rounds."""
    rounds = []
    for r, path in list_checkpoints(run_dir):
        ck = read_checkpoint(path)  # raises CheckpointError naming the file
        assert ck.round == r
        rounds.append(r)
    return rounds


def assert_same_final(ref_dir: Path, run_dir: Path, rounds: int) -> None:
    """Bit-identical final checkpoints (tensors, per-client state, every metric that is not a
    wall-clock time)."""
    a = read_checkpoint(ref_dir / f"round_{rounds:05d}.h5")
    b = read_checkpoint(run_dir / f"round_{rounds:05d}.h5")
    for part in ("state", "server_state"):
        sa, sb = getattr(a, part), getattr(b, part)
        assert list(sa) == list(sb), part
        for k in sa:
            assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), f"{part}/{k}"
    assert sorted(a.client_states) == sorted(b.client_states)
    for c, st in a.client_states.items():
        assert all(torch.equal(st[k], b.client_states[c][k]) for k in st), c
    assert a.stages == b.stages
    for k, v in a.metrics.items():
        if not k.endswith("_time"):
            np.testing.assert_array_equal(v, b.metrics[k], err_msg=k)
    for k, v in a.client_metrics.items():
        np.testing.assert_array_equal(v, b.client_metrics[k], err_msg=k)


def report(scenario: str, **fields) -> None:
    """One line of the fault-suite report (FEDNAS_FAULT_REPORT), for the issue's numbers."""
    if REPORT:
        with open(REPORT, "a") as f:
            f.write(json.dumps({"scenario": scenario, **fields}) + "\n")
