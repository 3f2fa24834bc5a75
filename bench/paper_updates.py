"""What bench/project_paper.py projects from: client updates and steps at the paper shape,
and a short run's seconds per round by stage (issue 28).

    python bench/paper_updates.py updates [--device cuda] [--configs CFG ...] [--set K=V ...]
                                          [--reps 5] [--json OUT]
    python bench/paper_updates.py stages RUN_DIR ... [--json OUT]

``updates``: for each config (default the paper's CIFAR-10 FedMetaNAS and FedNAS), on
``--device``, the client step (forward, backward, optimiser step at the config's batch,
the method's relaxation) of the supernet with 0, 50 and 90 % of its ops dead and of a
derived network (one op per edge), then one whole client update of
``partition.train_size`` images (the paper: 600, 5 local epochs) in the first search round.
Both run on the config's ``kernels.supernet`` path, so their ratio counts the steps of the
method's loop. The schedule is the config's own at its ``run.rounds`` without the --set
lines (the paper's 1000).

``stages``: per run directory (a run of a paper config), the mean seconds per round of each
stage (FedMetaNAS's warm-up apart from its search) and their compute, comm, aggregate, eval
and checkpoint parts, read from the newest checkpoint's metrics (``fednas-mpi inspect``
shows the same); the whole-set evaluation (last round, derivation) apart from the subset's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from supernet import dead_masks  # noqa: E402

from fednas_mpi.algorithms import ClientData, DataInfo, RoundContext, get_algorithm  # noqa: E402
from fednas_mpi.config import load_run  # noqa: E402
from fednas_mpi.data.datasets import load_dataset  # noqa: E402
from fednas_mpi.nas import ArchSpec, sampled_spec  # noqa: E402
from fednas_mpi.report.runs import load_run as load_run_dir  # noqa: E402

CONFIGS = ["configs/paper/cifar10/fedmetanas.yaml", "configs/paper/cifar10/fednas.yaml"]
PARTS = ("compute", "comm", "aggregate", "eval", "checkpoint")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_seconds(algo, spec: dict, x, y, gumbel: bool, reps: int) -> float:
    """Median seconds of one client step of the network of ``spec``."""
    net = algo.fresh(spec)
    net.train()
    weights = torch.optim.SGD(net.weight_parameters(), lr=0.01, momentum=0.9)
    arch = torch.optim.Adam(net.arch_parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)

    def step():
        net.set_sampling(1.0, g if gumbel else None)
        weights.zero_grad()
        arch.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        weights.step()
        arch.step()

    for _ in range(2):  # warm-up: allocator, cuDNN plans
        step()
    times = []
    for _ in range(reps):
        sync(x.device)
        t = time.perf_counter()
        step()
        sync(x.device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def schedule_of(path: str) -> dict:
    """The config's own schedule (at its run.rounds, without --set): what is projected."""
    cfg = load_run(ROOT / path if not Path(path).is_absolute() else path)
    if cfg.algorithm.name == "fednas":
        return {"search": cfg.algorithm.fednas.search_rounds or cfg.run.rounds // 2}
    f = cfg.algorithm.fedmetanas
    return {"warmup": f.arch_warmup_rounds, "final": f.final_round or cfg.run.rounds}


def measure(path: str, sets: list[str], device: torch.device, reps: int) -> dict:
    cfg = load_run(ROOT / path if not Path(path).is_absolute() else path, sets)
    ds = load_dataset(cfg.data, cfg.run.seed)
    algo = get_algorithm(cfg.algorithm.name)(cfg, DataInfo(ds.input_shape, ds.num_classes))
    algo.device = device
    b, n = cfg.algorithm.batch_size, cfg.partition.train_size or 600
    if len(ds.train_y) < 2 * n:
        raise SystemExit(f"{path}: the training pool has {len(ds.train_y)} images, needs {2 * n}")
    x, y = ds.train_inputs(slice(0, b)).to(device), ds.train_y[:b].to(device)
    gumbel = cfg.algorithm.name != "fednas"
    step_s = {}
    for dead in (0.0, 0.5, 0.9):
        spec = dead_masks(algo, dead)[0] if dead else algo.initial_spec()
        step_s[str(dead)] = step_seconds(algo, spec, x, y, gumbel, reps)
    derived = sampled_spec(algo.space, torch.Generator().manual_seed(0))
    step_s["derived"] = step_seconds(
        algo, ArchSpec(derived.masks, algo.inputs).to_dict(), x, y, gumbel, reps
    )
    data = ClientData(
        0,
        ds.train_inputs(slice(0, n)),
        ds.train_y[:n],
        ds.train_inputs(slice(n, 2 * n)),
        ds.train_y[n : 2 * n],
        augment=ds.augment,
    ).to(device)
    first = cfg.algorithm.fedmetanas.arch_warmup_rounds if gumbel else 0  # first search round
    ctx = RoundContext(first, cfg.run.rounds, cfg.run.seed, algo.stage(first))
    gm = algo.init_global()
    sync(device)
    t = time.perf_counter()
    algo.client_update(gm, data, ctx, None)
    sync(device)
    update = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    row = {
        "config": path,
        "path": f"kernels.supernet={cfg.kernels.supernet}",
        "device": str(device),
        "batch": b,
        "images": n,
        "local_epochs": cfg.algorithm.local_epochs,
        "step_s": step_s,
        "update_s": update,
        "peak_MB": peak,
        "schedule": schedule_of(path),
    }
    print(
        f"{cfg.algorithm.name} ({path}, {device}, {row['path']}): step "
        + ", ".join(f"{k} {1e3 * v:.1f} ms" for k, v in step_s.items())
        + f"; client update of {n} images x {row['local_epochs']} epochs {update:.2f} s"
        f" = {update / step_s['0.0']:.0f} steps" + (f"; peak {peak:.0f} MB" if peak else ""),
        flush=True,
    )
    return row


def stage_times(run_dir: Path) -> dict:
    """Mean seconds per round of each stage, its parts, and the evaluations."""
    run = load_run_dir(run_dir)
    m, stages = run.metrics, list(run.stages)
    alg = run.config["algorithm"]
    warm = alg.get("fedmetanas", {}).get("arch_warmup_rounds", 0) if "fedmetanas" in alg else 0
    labels = ["warmup" if i < warm else s for i, s in enumerate(stages)]
    # the derivation round: the last of the first stage when another follows it
    derives = next((i - 1 for i in range(1, len(stages)) if stages[i] != stages[i - 1]), None)
    full = {len(stages) - 1} | ({derives} if derives is not None else set())
    evaluated = [i for i in range(len(stages)) if np.isfinite(m["global_acc"][i])]
    out: dict = {"method": run.method, "rounds": len(stages), "stages": {}}
    for label in dict.fromkeys(labels):
        idx = [i for i, lab in enumerate(labels) if lab == label]
        row = {"rounds": len(idx), "round_s": float(np.nanmean(m["round_time"][idx]))}
        row.update({p: float(np.nanmean(m[f"{p}_time"][idx])) for p in PARTS})
        out["stages"][label] = row
    sub = [m["eval_time"][i] for i in evaluated if i not in full]
    whole = [m["eval_time"][i] for i in evaluated if i in full]
    out["eval_subset_s"] = float(np.mean(sub)) if sub else 0.0
    out["eval_full_s"] = float(np.mean(whole)) if whole else 0.0
    over = m["comm_time"] + m["aggregate_time"] + np.nan_to_num(m["checkpoint_time"])
    out["overhead_s"] = float(np.mean(over[1:] if len(over) > 1 else over))  # round 1 warms up
    return out


def print_stages(res: dict) -> None:
    for method, r in res.items():
        print(f"\n{method}: seconds per round by stage ({r['rounds']} rounds; round 1 warms up)")
        print("| stage | rounds | s/round | " + " | ".join(PARTS) + " |")
        print("|---" * (3 + len(PARTS)) + "|")
        for label, s in r["stages"].items():
            parts = " | ".join(f"{s[p]:.3f}" for p in PARTS)
            print(f"| {label} | {s['rounds']} | {s['round_s']:.3f} | {parts} |")
        print(
            f"evaluation: subset {r['eval_subset_s']:.3f} s, whole set {r['eval_full_s']:.3f} s;"
            f" non-compute overhead {r['overhead_s']:.3f} s/round"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("updates")
    u.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    u.add_argument("--configs", nargs="+", default=CONFIGS)
    u.add_argument("--set", action="append", default=[], dest="sets")
    u.add_argument("--reps", type=int, default=5)
    u.add_argument("--json", type=Path)
    s = sub.add_parser("stages")
    s.add_argument("runs", nargs="+", type=Path)
    s.add_argument("--json", type=Path)
    a = ap.parse_args()
    torch.set_num_threads(1)  # as a rank runs (runtime.threads_per_rank)
    if a.cmd == "updates":
        device, res = torch.device(a.device), {"methods": {}}
        for c in a.configs:
            res["methods"][get_method(c)] = measure(c, a.sets, device, a.reps)
            if a.json:  # after each config: a step that runs out of time keeps what it has
                a.json.write_text(json.dumps(res, indent=1))
    else:
        res = {}
        for d in a.runs:
            r = stage_times(d)
            res[r["method"]] = r
        print_stages(res)
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))


def get_method(path: str) -> str:
    return load_run(ROOT / path if not Path(path).is_absolute() else path).algorithm.name


if __name__ == "__main__":
    main()
