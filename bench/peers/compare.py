"""FedNAS search on FedML 0.9.6 (MPI) and on fednas-mpi, one after the other, same workload
(issue 17, item 5).

    python bench/peers/compare.py [--rounds 3] [--images 192] [--clients 2]
        [--batch-size 16] [--epochs 2] [--init-channels 8] [--layers 5] [--nodes 4]
        [--paths grouped reference] [--workdir DIR] [--peers-venv /work/peers-venv]

Run it from our virtual environment after ``bash bench/peers/setup.sh``. It writes
synthetic CIFAR-10-shaped data (32x32x3, 10 classes) in the real on-disk format (the
python pickles of cifar-10-batches-py/) with clients x images training images, so that
both frameworks read the same files through their own loaders; then runs

1. FedML's MPI FedNAS (bench/peers/fedml_fednas.py in the peers venv) for ``--rounds``
   search rounds, ``mpirun -n clients+1``;
2. ours, ``configs/cpu/fashion_mnist/fednas.yaml`` with ``--set`` overrides to the same
   data, supernet, clients, batch size and local epochs (bench/peers/ours_fednas.py,
   ``mpirun -n clients+1``), once per ``kernels.supernet`` path; ``--rounds`` search
   rounds plus the one retraining round FedNAS needs (not measured).

It prints a Markdown table - seconds per search round, per client step, steps per round,
the work of one step (images forwarded, forward and backward passes, optimiser steps),
ours/FedML ratios - and the exact commands it ran, and writes everything to
WORKDIR/compare.json. Round = the server's view: from sending the round's model to the
end of aggregation (FedML; ours: the run's ``method_time``), evaluation apart. Step = a
client's search time over its number of weight updates. The first ``--warmup`` rounds are
left out of the means (first-call costs); with fewer rounds nothing is left out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from fednas_mpi.harness.datafiles import write_cifar10

ROOT = Path(__file__).resolve().parents[2]

HERE = Path(__file__).resolve().parent
BASE_CONFIG = "configs/cpu/fashion_mnist/fednas.yaml"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="search rounds measured (>= 2)")
    p.add_argument("--images", type=int, default=192, help="training images per client")
    p.add_argument("--clients", type=int, default=2, help="clients = MPI ranks - 1")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=2, help="local epochs per round")
    p.add_argument("--init-channels", type=int, default=8)
    p.add_argument("--layers", type=int, default=5, help="cells of the supernet")
    p.add_argument("--nodes", type=int, default=4, help="intermediate nodes per cell")
    p.add_argument(
        "--test-images",
        type=int,
        default=0,
        help="server test set (default: the batch size); evaluated only outside the timed part",
    )
    p.add_argument(
        "--paths",
        nargs="+",
        default=["grouped", "reference"],
        choices=["grouped", "reference"],
        help="our kernels.supernet values",
    )
    p.add_argument("--warmup", type=int, default=1, help="first rounds left out of the means")
    p.add_argument("--workdir", default="runs/peers", help="data, runs and JSON go here")
    p.add_argument("--peers-venv", default=os.environ.get("PEERS_VENV", "/work/peers-venv"))
    p.add_argument("--timeout", type=float, default=7200, help="seconds per framework run")
    a = p.parse_args(argv)
    if a.rounds < 2:
        p.error("--rounds must be >= 2 (FedML's MPI FedNAS hangs with one round)")
    if a.images < a.batch_size:
        p.error("--images must be >= --batch-size (FedML drops the last partial batch)")
    a.test_images = a.test_images or a.batch_size
    return a


def write_data(root: Path, n_train: int, n_test: int) -> None:
    """cifar-10-batches-py/ with n_train images over the five training batches (the
    tests' writer, in the real pickle format)."""
    sizes = [len(s) for s in np.array_split(np.arange(n_train), 5)]
    write_cifar10(root, sizes, n_test)


def run(cmd: list[str], log: Path, env: dict, timeout: float) -> float:
    print(f"$ {shlex.join(cmd)}\n  (log: {log})", flush=True)
    t = time.perf_counter()
    with open(log, "w") as f:
        r = subprocess.run(
            cmd, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=timeout, cwd=ROOT
        )
    dt = time.perf_counter() - t
    if r.returncode != 0:
        tail = log.read_text().splitlines()[-25:]
        raise SystemExit(f"exit {r.returncode} after {dt:.0f} s:\n" + "\n".join(tail))
    print(f"  done in {dt:.0f} s", flush=True)
    return dt


def client_rows(paths: list[Path], rounds: range) -> list[dict]:
    """Per (client, round) sums of the search counters (FedML times each local epoch)."""
    rows: dict = {}
    for path in paths:
        data = json.loads(path.read_text())
        for s in data["searches"]:
            if s["round"] not in rounds:
                continue
            key = (data["rank"], s.get("client"), s["round"])
            acc = rows.setdefault(key, {})
            for k, v in s.items():
                if isinstance(v, (int, float)) and k not in ("round", "client"):
                    acc[k] = acc.get(k, 0) + v
    return list(rows.values())


def summary(name: str, round_s: list[float], clients: list[dict], wall: float) -> dict:
    steps = statistics.mean(c["weight_steps"] for c in clients)

    def per_step(key: str) -> float:
        return sum(c[key] for c in clients) / sum(c["weight_steps"] for c in clients)

    return {
        "name": name,
        "rounds_measured": len(round_s),
        "round_s": statistics.mean(round_s),
        "round_s_all": round_s,
        "step_s": statistics.mean(c["search_s"] / c["weight_steps"] for c in clients),
        "steps_per_round": steps,
        "images_per_step": per_step("images_forward"),
        "forwards_per_step": per_step("forwards"),
        "backwards_per_step": per_step("backward_passes"),
        "weight_steps_per_step": 1.0,
        "arch_steps_per_step": per_step("arch_steps"),
        "wall_s": wall,
    }


def table(rows: list[dict], ref: dict) -> str:
    head = (
        "| run | s / search round | s / step | steps / round (per client) | images / step "
        "| forwards / step | backward passes / step | arch steps / step "
        "| ours/FedML round | ours/FedML step | wall s |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        ratio_r = "-" if r is ref else f"{r['round_s'] / ref['round_s']:.2f}x"
        ratio_s = "-" if r is ref else f"{r['step_s'] / ref['step_s']:.2f}x"
        lines.append(
            f"| {r['name']} | {r['round_s']:.2f} | {r['step_s']:.3f} | "
            f"{r['steps_per_round']:g} | {r['images_per_step']:.1f} | "
            f"{r['forwards_per_step']:.2f} | {r['backwards_per_step']:.2f} | "
            f"{r['arch_steps_per_step']:.2f} | {ratio_r} | {ratio_s} | {r['wall_s']:.0f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    a = parse_args(argv)
    work = (ROOT / a.workdir).resolve() if not Path(a.workdir).is_absolute() else Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    n_train = a.clients * a.images
    write_data(data, n_train, a.test_images)
    ranks = str(a.clients + 1)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "src")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    measured = range(a.warmup if a.rounds > a.warmup else 0, a.rounds)
    commands, rows = [], []
    t_all = time.perf_counter()

    # ---------------------------------------------------------------- FedML
    peers = Path(a.peers_venv) / "bin"
    if not (peers / "python").exists():
        raise SystemExit(f"{peers}/python missing: run bash bench/peers/setup.sh first")
    fed_out = work / "fedml.json"
    for old in work.glob("fedml*.json"):
        old.unlink()
    fed_env = dict(env)
    fed_env.pop("PYTHONPATH")  # FedML's venv must not see our package
    cmd = [
        str(peers / "mpirun"),
        "-n",
        ranks,
        str(peers / "python"),
        str(HERE / "fedml_fednas.py"),
        "--data-root",
        str(data),
        "--rounds",
        str(a.rounds),
        "--batch-size",
        str(a.batch_size),
        "--epochs",
        str(a.epochs),
        "--init-channels",
        str(a.init_channels),
        "--layers",
        str(a.layers),
        "--nodes",
        str(a.nodes),
        "--out",
        str(fed_out),
    ]
    commands.append(cmd)
    wall = run(cmd, work / "fedml.log", fed_env, a.timeout)
    server = json.loads(fed_out.read_text())
    fed_rounds = [server["rounds"][i]["round_s"] for i in measured]
    fed_clients = client_rows(sorted(work.glob("fedml.rank*.json")), measured)
    fedml = summary("FedML 0.9.6 FedNAS", fed_rounds, fed_clients, wall)
    fedml["n_k"] = [json.loads(p.read_text())["n_k"] for p in sorted(work.glob("fedml.rank*"))]
    rows.append(fedml)

    # ---------------------------------------------------------------- ours
    sets = {
        "data.name": "cifar10",
        "data.root": str(data),
        "data.resize": 0,
        "data.augment": "true",
        "data.download": "false",
        "partition.scheme": "iid",
        "partition.num_clients": a.clients,
        "partition.train_size": a.images,
        "partition.eval_size": a.batch_size,
        "partition.overlap": "true",
        "federation.clients_per_round": a.clients,
        "run.rounds": a.rounds + 1,
        "algorithm.fednas.search_rounds": a.rounds,
        "algorithm.batch_size": a.batch_size,
        "algorithm.local_epochs": a.epochs,
        "model.darts.init_channels": a.init_channels,
        "model.darts.layers": a.layers,
        "model.darts.nodes": a.nodes,
        "run.eval_every": 10**6,
        "run.val_every": 0,
        "algorithm.fednas.local_eval_every": 10**6,
        "runtime.threads_per_rank": 1,
    }
    mpirun = str(Path(sys.executable).parent / "mpirun")
    for path in a.paths:
        run_dir, counts = work / f"ours-{path}", work / f"ours-{path}.json"
        for old in work.glob(f"ours-{path}.rank*.json"):
            old.unlink()
        cmd = [
            mpirun,
            "-n",
            ranks,
            sys.executable,
            str(HERE / "ours_fednas.py"),
            "--counts",
            str(counts),
            "--",
            BASE_CONFIG,
            "--out",
            str(run_dir),
            "--overwrite",
        ]
        for k, v in {**sets, "kernels.supernet": path}.items():
            cmd += ["--set", f"{k}={v}"]
        commands.append(cmd)
        wall = run(cmd, work / f"ours-{path}.log", env, a.timeout)
        info = subprocess.run(
            [sys.executable, "-m", "fednas_mpi", "inspect", "--json", str(run_dir)],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            check=True,
        )
        per_round = {r["round"]: r for r in json.loads(info.stdout)["rounds"]}
        ours_rounds = [per_round[i + 1]["method_time"] for i in measured]  # 1-based
        ours_clients = client_rows(sorted(work.glob(f"ours-{path}.rank*.json")), measured)
        rows.append(summary(f"fednas-mpi ({path})", ours_rounds, ours_clients, wall))

    cfg = (
        f"{a.clients} clients x {a.images} train images (32x32x3, 10 classes, synthetic "
        f"CIFAR-10 files), batch {a.batch_size}, {a.epochs} local epochs, DARTS supernet "
        f"C={a.init_channels}, {a.layers} cells, {a.nodes} nodes, mpirun -n {ranks}, "
        f"1 thread per rank; {a.rounds} search rounds, means over rounds "
        f"{measured.start + 1}-{measured.stop}"
    )
    print(f"\n{cfg}\n")
    print(table(rows, fedml))
    print("\nCommands (from the repository root):\n")
    for c in commands:
        print("    " + shlex.join(c))
    (work / "compare.json").write_text(
        json.dumps(
            {
                "config": vars(a),
                "workload": cfg,
                "rows": rows,
                "commands": [shlex.join(c) for c in commands],
            },
            indent=1,
        )
    )
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s; JSON: {work / 'compare.json'}")
    return 0 if all(math.isfinite(r["round_s"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
