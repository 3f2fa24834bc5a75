"""Rounds per second and where a round's time goes, against the rank count.

    python bench/runtime.py [--rounds 4] [--ranks 2 3 5 9] [--set runtime.transport=torch]
        [--config configs/quickstart.yaml ...] [--set KEY=VALUE ...]

For each config and rank count it runs ``mpirun -n N fednas-mpi CFG`` (one torch thread per
rank, the default) and reads the per-round time components from the last checkpoint: compute
(slowest worker's client updates), comm (broadcast, transfers and waiting beyond that),
aggregate (folding not hidden behind compute, averaging, server step), eval, checkpoint
(writing the round file). Round 1 (warm-up) is left out, and so is the last round's
checkpoint time, which its own file cannot hold. A round's total is round_time +
checkpoint_time; rounds/s = 1 / mean total; non-compute = comm + aggregate + checkpoint.
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

PARTS = ("compute", "comm", "aggregate", "eval", "checkpoint")


def run(n: int, cfg: str, rounds: int, sets: list[str], out: Path) -> dict:
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
    ]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    m = read_checkpoint(list_checkpoints(out)[-1][1], tensors=False).metrics
    sl = slice(1, rounds - 1)  # skip warm-up round 1 and the last (no checkpoint_time)
    parts = {p: float(np.mean(m[f"{p}_time"][sl])) for p in PARTS}
    total = float(np.mean(m["round_time"][sl])) + parts["checkpoint"]
    return {
        "n": n,
        "wall": wall,
        "total": total,
        "rps": 1.0 / total,
        "parts": parts,
        "acc": float(m["global_acc"][-1]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", nargs="+", default=[str(ROOT / "configs/quickstart.yaml")])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--ranks", type=int, nargs="+", default=[2, 3, 5, 9])
    p.add_argument("--set", action="append", default=[], dest="sets")
    a = p.parse_args()
    if a.rounds < 3:
        p.error("--rounds must be >= 3: round 1 warms up and the last has no checkpoint time")
    with tempfile.TemporaryDirectory() as tmp:
        for cfg in a.config:
            rows = [
                run(n, cfg, a.rounds, a.sets, Path(tmp) / f"{Path(cfg).stem}-n{n}") for n in a.ranks
            ]
            print(
                f"\n{Path(cfg).name} {' '.join(a.sets)}: rounds 2..{a.rounds - 1} "
                f"(mean), {a.rounds} rounds per run"
            )
            print(
                "| ranks | workers | s/round | rounds/s | x vs first | "
                + " | ".join(f"{q} %" for q in PARTS)
                + " | non-compute % | final acc |"
            )
            print("|---" * (7 + len(PARTS)) + "|")
            for r in rows:
                shares = {q: 100 * r["parts"][q] / r["total"] for q in PARTS}
                nc = shares["comm"] + shares["aggregate"] + shares["checkpoint"]
                print(
                    f"| {r['n']} | {r['n'] - 1} | {r['total']:.3f} | {r['rps']:.3f} | "
                    f"{r['rps'] / rows[0]['rps']:.2f} | "
                    + " | ".join(f"{shares[q]:.1f}" for q in PARTS)
                    + f" | {nc:.1f} | {r['acc']:.4f} |"
                )
            accs = {round(r["acc"], 5) for r in rows}
            print(f"final accuracy identical across rank counts: {len(accs) == 1}", flush=True)


if __name__ == "__main__":
    main()
