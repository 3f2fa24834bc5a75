"""FedMetaNAS beside FedAvg on the same data, partition, rounds and seed.

    python bench/compare_methods.py CFG_A.yaml CFG_B.yaml ... [--ranks 3] [--seeds 0 1 2]
        [--set key=value ...]

Each config is run with ``mpirun -n RANKS fednas-mpi`` for every seed (``--set`` applies
to all runs, e.g. ``run.rounds=20``). Prints, per config, the method, final and best
global accuracy, mean local accuracy (mean +- std over seeds), the accuracy just before
and after the final architecture derivation (NAS methods), total wall time and the sum
of round times, and the time ratio to the first config (the baseline, run in the same
invocation on the same machine).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from helpers import mpirun  # noqa: E402

from fednas_mpi.store import list_checkpoints, read_checkpoint  # noqa: E402


def run_one(cfg: str, seed: int, ranks: int, sets: list[str], out: Path) -> dict:
    cmd = [mpirun(), "-n", str(ranks), sys.executable, "-m", "fednas_mpi", cfg, "--out",
           str(out), "--set", f"run.seed={seed}"]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    ck = read_checkpoint(list_checkpoints(out)[-1][1], tensors=False)
    m = ck.metrics
    acc = m["global_acc"][np.isfinite(m["global_acc"])]
    before = m.get("acc_before_prune", np.array([np.nan]))[-1]
    return {"method": ck.attrs["algorithm"], "final": acc[-1], "best": acc.max(),
            "local": float(np.nanmean(m["local_acc"][-1:])), "before": before,
            "wall": wall, "rounds_time": float(np.nansum(m["round_time"])),
            "genotype": ck.spec.get("genotype", {}) or {}}


def fmt(values: list[float], scale: float = 100.0) -> str:
    v = np.asarray(values, dtype=float) * scale
    if np.all(np.isnan(v)):
        return "-"
    return f"{np.nanmean(v):.2f} ± {np.nanstd(v):.2f}" if len(v) > 1 else f"{v[0]:.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="+")
    p.add_argument("--ranks", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--set", dest="sets", action="append", default=[])
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, cfg in enumerate(a.configs):
            runs = [run_one(cfg, s, a.ranks, a.sets, Path(tmp) / f"c{i}-s{s}") for s in a.seeds]
            rows.append((cfg, runs))
    base = np.mean([r["rounds_time"] for r in rows[0][1]])
    print(f"ranks {a.ranks}, seeds {a.seeds}, overrides {a.sets}")
    print("| config | method | final acc % | best acc % | local acc % | acc before final "
          "derivation % | wall s | sum of round times s | time x baseline |")
    print("|---|---|---|---|---|---|---|---|---|")
    for cfg, runs in rows:
        rt = np.mean([r["rounds_time"] for r in runs])
        print(f"| {Path(cfg).name} | {runs[0]['method']} | {fmt([r['final'] for r in runs])} "
              f"| {fmt([r['best'] for r in runs])} | {fmt([r['local'] for r in runs])} "
              f"| {fmt([r['before'] for r in runs])} | {np.mean([r['wall'] for r in runs]):.1f} "
              f"| {rt:.1f} | {rt / base:.2f} |")
    for cfg, runs in rows:
        for seed, r in zip(a.seeds, runs):
            if r["genotype"].get("text"):
                print(f"\n{Path(cfg).name} seed {seed} genotype:\n{r['genotype']['text']}")


if __name__ == "__main__":
    main()
