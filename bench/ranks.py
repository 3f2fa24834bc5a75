"""Wall time of a FedAvg digits run against the rank count and the idle-wait policy.

    python bench/ranks.py [--rounds 30] [--ranks 1 2 3 5]
        [--config configs/cpu/digits/fedavg-cnn.yaml]

For each rank count it runs ``mpirun -n N fednas-mpi CFG`` twice: with idle ranks polling
MPI requests with a 1 ms sleep (``runtime.poll_interval_ms=1``, the default) and blocking in
MPI (``=0``, MPICH spins). It prints the mean round time (from the checkpoints, start-up
excluded), the total wall time, the final accuracy and the ratio to the 1-rank run measured in
the same invocation. Final accuracies must agree across all rows (rank-count invariance).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fednas_mpi.harness import mpirun
from fednas_mpi.store import list_checkpoints, read_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def run(n: int, cfg: str, rounds: int, poll: float, out: Path) -> dict:
    cmd = [
        mpirun(),
        "-n",
        str(n),
        sys.executable,
        "-m",
        "fednas_mpi",
        cfg,
        "--out",
        str(out),
        "--set",
        f"run.rounds={rounds}",
        "--set",
        f"runtime.poll_interval_ms={poll}",
    ]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    ck = read_checkpoint(list_checkpoints(out)[-1][1], tensors=False)
    rt = ck.metrics["round_time"][1:]  # round 1 carries one-off warm-up
    return {
        "n": n,
        "poll": poll,
        "wall": wall,
        "round": float(np.mean(rt)),
        "acc": float(ck.metrics["global_acc"][-1]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs/cpu/digits/fedavg-cnn.yaml"))
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 3, 5])
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in a.ranks:
            for poll in (1.0,) if n == 1 else (1.0, 0.0):
                rows.append(run(n, a.config, a.rounds, poll, Path(tmp) / f"n{n}-{poll}"))
    base = rows[0]
    print("| ranks | idle wait | mean round (s) | x vs -n 1 | wall (s) | final acc |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        wait = "poll 1 ms" if r["poll"] else "block (spin)"
        print(
            f"| {r['n']} | {wait} | {r['round']:.4f} | {r['round'] / base['round']:.2f} "
            f"| {r['wall']:.1f} | {r['acc']:.4f} |"
        )
    accs = {round(r["acc"], 5) for r in rows}
    print(f"final accuracy identical across rows: {len(accs) == 1}")


if __name__ == "__main__":
    main()
