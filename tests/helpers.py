"""Shared helpers: tiny configs and launching ``mpirun -n K fednas-mpi`` with a hard timeout."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

TINY = {
    "run": {"name": "tiny", "seed": 7, "rounds": 4},
    "data": {"name": "digits"},
    "partition": {"scheme": "dirichlet", "alpha": 0.5, "num_clients": 8, "min_train": 8},
    "federation": {"clients_per_round": 3},
    "model": {"channels": [8, 16], "hidden": 32},
    "algorithm": {"name": "fedavg", "local_epochs": 1, "batch_size": 16, "lr": 0.05},
}


def mpirun() -> str:
    """The launcher: $FEDNAS_MPI_MPIRUN, the one beside this Python (PyPI mpich), or PATH's."""
    if os.environ.get("FEDNAS_MPI_MPIRUN"):
        return os.environ["FEDNAS_MPI_MPIRUN"]
    beside = Path(sys.executable).parent / "mpirun"
    return str(beside) if beside.exists() else (shutil.which("mpirun") or "mpirun")


def write_config(path: Path, base: dict | None = None, **sections) -> Path:
    cfg = {k: dict(v) for k, v in (base or TINY).items()}
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(cfg))
    return path


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def launch(n: int, args: list[str], timeout: float = 120, cwd: Path | None = None,
           script: list[str] | None = None) -> Result:
    """Run ``mpirun -n n <script or fednas-mpi> args``; kill the whole group on timeout."""
    prog = script or [sys.executable, "-m", "fednas_mpi"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([mpirun(), "-n", str(n), *prog, *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"mpirun -n {n} {args} hung for {timeout}s\n{out}\n{err}") from None
    return Result(proc.returncode, out, err)


def run_per_rank_count(root: Path, base: dict, ranks=(1, 3), timeout: float = 240,
                       **sections) -> dict[int, Path]:
    """Run one config once per rank count; returns {ranks: run directory}."""
    cfg = write_config(root / "cfg.yaml", base=base, **sections)
    out = {}
    for n in ranks:
        res = launch(n, [str(cfg), "--out", str(root / f"n{n}")], timeout=timeout)
        assert res.returncode == 0, res.stderr
        out[n] = root / f"n{n}"
    return out
