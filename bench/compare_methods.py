"""Methods side by side on the same data, partition, rounds, seeds and machine (paper
Tables 1, 2, 3 and 5 at the scale you give it).

    python bench/compare_methods.py CFG_A.yaml CFG_B.yaml ... [--ranks 3] [--seeds 0 1 2]
        [--target 0.9] [--set key=value ...]

Each config is run with ``mpirun -n RANKS fednas-mpi`` for every seed (``--set`` applies
to every run, e.g. ``partition.alpha=0.1``). Printed per config (mean +- std over seeds):
final and best global accuracy (Table 1), the personalised accuracy of the last round -
mean over all clients of each client's personalised model on its eval split (Table 5;
``personal_acc``) and its std across clients -, the mean local accuracy of the sampled
clients' models in the last round where the method reports it and its std over those
clients (paper Table 5's "mean ± std"), total wall time of the job, the sum of round
times per stage, the time (sum of round times) until the global accuracy first reaches
``--target``, and the global accuracy just before and just after the last architecture
change (FedNAS: the hard pruning, with inherited weights; FedMetaNAS: the final
derivation) - paper Table 3. Times are ratios to the first config's, all measured in this
invocation on this machine.

Any method's configs can be given; ``--nas SCALE/DATASET`` adds the configs of every
searching NAS method of the registry (``registry.SEARCH_METHODS``) there, e.g. ``--nas
cpu/fashion_mnist`` = configs/cpu/fashion_mnist/METHOD.yaml (Tables 2 and 5), which share
clients, rounds and search space (``fednas-mpi configs`` lists the tree).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fednas_mpi.algorithms.registry import SEARCH_METHODS as NAS_METHODS
from fednas_mpi.harness import mpirun
from fednas_mpi.store import list_checkpoints, read_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _last_finite(values) -> float:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return float(v[-1]) if v.size else float("nan")


def run_one(cfg: str, seed: int, ranks: int, sets: list[str], target: float, out: Path) -> dict:
    cmd = [
        mpirun(),
        "-n",
        str(ranks),
        sys.executable,
        "-m",
        "fednas_mpi",
        cfg,
        "--out",
        str(out),
        "--set",
        f"run.seed={seed}",
    ]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    ck = read_checkpoint(list_checkpoints(out)[-1][1], tensors=False)
    m = ck.metrics
    acc, rt = m["global_acc"], m["round_time"]
    reached = np.flatnonzero(np.nan_to_num(acc, nan=-1.0) >= target)
    stages = {}
    for stage, t in zip(ck.stages, rt):
        stages[stage] = stages.get(stage, 0.0) + float(t)
    nan = [np.nan]
    return {
        "method": ck.attrs["algorithm"],
        "final": _last_finite(acc),
        "best": float(np.nanmax(acc)),
        "local": _last_finite(m.get("local_acc", nan)),
        "local_std": _last_finite(m.get("local_acc_std", nan)),
        "personal": _last_finite(m.get("personal_acc", nan)),
        "personal_std": _last_finite(m.get("personal_acc_std", nan)),
        "before": _last_finite(m.get("acc_before_prune", [np.nan])),
        "after": _last_finite(m.get("acc_after_prune", [np.nan])),
        "wall": wall,
        "stages": stages,
        "to_target": float(np.sum(rt[: reached[0] + 1])) if reached.size else np.nan,
        "genotype": (ck.spec.get("genotype") or {}).get("text", ""),
    }


def ms(values, scale: float = 1.0, digits: int = 2) -> str:
    v = np.asarray(values, dtype=float) * scale
    if v.size == 0 or np.all(np.isnan(v)):
        return "-"
    if len(v) == 1 or np.isnan(v).any():
        never = "" if len(v) == 1 else f" ({int(np.isnan(v).sum())} never)"
        return f"{np.nanmean(v):.{digits}f}{never}"
    return f"{v.mean():.{digits}f} ± {v.std():.{digits}f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="*")
    p.add_argument(
        "--nas",
        metavar="SCALE/DATASET",
        help="add configs/SCALE/DATASET/METHOD.yaml "
        "of every NAS method (e.g. cpu/fashion_mnist, cpu/digits)",
    )
    p.add_argument("--ranks", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--target", type=float, default=0.9)
    p.add_argument("--set", dest="sets", action="append", default=[])
    a = p.parse_args()
    if a.nas:
        a.configs += [str(ROOT / "configs" / a.nas / f"{m}.yaml") for m in NAS_METHODS]
    if not a.configs:
        p.error("give configs or --nas SCALE/DATASET")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, cfg in enumerate(a.configs):
            runs = []
            for s in a.seeds:
                runs.append(run_one(cfg, s, a.ranks, a.sets, a.target, Path(tmp) / f"c{i}-s{s}"))
                r = runs[-1]
                print(
                    f"{cfg} seed {s}: final {r['final']:.4f} personal {r['personal']:.4f} "
                    f"wall {r['wall']:.1f}s",
                    file=sys.stderr,
                    flush=True,
                )
            rows.append((cfg, runs))
    base = np.mean([r["wall"] for r in rows[0][1]])
    print(f"mpirun -n {a.ranks}; seeds {a.seeds}; overrides {a.sets}; target {a.target:.0%}")
    print(
        "| config | method | final acc % | best acc % | personal acc % | std across clients "
        "% | local acc % | clients' std of local acc % | wall s | x first | round time per "
        "stage s | time to target s | acc before -> after last architecture change % |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for cfg, runs in rows:
        wall = [r["wall"] for r in runs]
        stages = sorted({s for r in runs for s in r["stages"]})
        per_stage = ", ".join(
            f"{s} {ms([r['stages'].get(s, 0.0) for r in runs], digits=1)}" for s in stages
        )
        prune = (
            "-"
            if all(np.isnan(r["before"]) for r in runs)
            else f"{ms([r['before'] for r in runs], 100)} -> {ms([r['after'] for r in runs], 100)}"
        )
        print(
            f"| {Path(cfg).name} | {runs[0]['method']} | {ms([r['final'] for r in runs], 100)} "
            f"| {ms([r['best'] for r in runs], 100)} "
            f"| {ms([r['personal'] for r in runs], 100)} "
            f"| {ms([r['personal_std'] for r in runs], 100)} "
            f"| {ms([r['local'] for r in runs], 100)} "
            f"| {ms([r['local_std'] for r in runs], 100)} "
            f"| {ms(wall, digits=1)} | {np.mean(wall) / base:.2f} | {per_stage} "
            f"| {ms([r['to_target'] for r in runs], digits=1)} | {prune} |"
        )
    for cfg, runs in rows:
        for seed, r in zip(a.seeds, runs):
            if r["genotype"]:
                print(f"\n{Path(cfg).name}, seed {seed}:\n{r['genotype']}")


if __name__ == "__main__":
    main()
