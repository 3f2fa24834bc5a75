"""FedML 0.9.6's MPI FedNAS search, driven for R rounds and timed (issue 17, item 5).

Runs in the peers virtual environment (bench/peers/setup.sh), under mpirun:

    mpirun -n 3 /work/peers-venv/bin/python bench/peers/fedml_fednas.py \\
        --data-root DATA --rounds 2 --batch-size 16 --out fedml.json

Rank 0 is FedML's server, ranks 1..N-1 its clients (one client per rank, as FedML's
MPI FedNAS requires). The data are the CIFAR-10 python pickles under DATA (real or
synthetic, see compare.py), loaded and split by FedML's own loader
(``load_partition_data_cifar10``, partition ``homo``: equal random shares). The model
is FedML's DARTS supernet (``fedml.model.cv.darts.model_search.Network``).

FedML has no timers of its own worth reading (its logs print whole seconds), so this
harness wraps its objects, without editing the installed package:

* server (rank 0): a round runs from the server's first message of the round (the
  initial config, then each model sync) to the end of ``FedNASAggregator.aggregate``;
  the server's test-set inference and statistics after it are timed apart;
* clients: ``FedNASTrainer.local_search`` (one local epoch of search steps) is timed,
  and while it runs every forward of the supernet (images, and - by a hook on its
  output - every backward pass that goes through that forward's graph) and every
  optimiser step (SGD on the weights, Adam on the alphas) is counted.

Patches applied at run time (README.md says why):

1. torchvision's CIFAR-10 md5 check is bypassed , so the
   synthetic files of the benchmark are accepted (torchvision's ``CIFAR10`` checks
   the md5 of every file against the official ones, and FedML's loader asks for
   ``download=True``, which would try to fetch the real files otherwise):
   ``torchvision.datasets.cifar.check_integrity`` answers True;
2. each client's sample count n_k is corrected: FedML's ``init_client`` hands the
   number of *test batches* to every ``FedNASTrainer`` as its local sample number
   (the weights of the server's average); the trainer's ``local_sample_number`` is
   set to the size of its own training split instead.

Writes one JSON file (``--out``) with the server's per-round times and the clients'
per-round search times and counts.
"""

from __future__ import annotations

import argparse
import atexit
import json
import sys
import time
import types
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True, help="folder holding cifar-10-batches-py/")
    p.add_argument("--rounds", type=int, default=3, help="search rounds (comm_round), >= 2")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=2, help="local epochs per round")
    p.add_argument("--init-channels", type=int, default=8)
    p.add_argument("--layers", type=int, default=5)
    p.add_argument("--nodes", type=int, default=4, help="intermediate nodes (DARTS steps)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="JSON file for the measurements")
    p.add_argument(
        "--no-fix-nk",
        action="store_true",
        help="keep FedML's n_k (the number of test batches for every client)",
    )
    a = p.parse_args(argv)
    if a.rounds < 2:
        # With comm_round = 1 FedML's clients never call finish() (only the model-sync
        # handler does), so the job hangs after the server finalises MPI.
        p.error("--rounds must be >= 2 (FedML's MPI clients hang with a single round)")
    return a


def fedml_args(a: argparse.Namespace, rank: int, size: int) -> types.SimpleNamespace:
    """The attributes FedML's FedNAS MPI path reads (FedNASAPI, -Trainer, -Aggregator,
    -Server/ClientManager, Architect), set to DARTS/FedNAS defaults but for the workload
    the benchmark chooses."""
    return types.SimpleNamespace(
        stage="search",
        comm_round=a.rounds,
        epochs=a.epochs,
        batch_size=a.batch_size,
        client_num_in_total=size - 1,
        client_num_per_round=size - 1,
        learning_rate=0.025,
        learning_rate_min=0.001,
        momentum=0.9,
        weight_decay=3e-4,
        arch_learning_rate=3e-4,
        arch_weight_decay=1e-3,
        lambda_train_regularizer=1.0,
        lambda_valid_regularizer=1.0,
        grad_clip=5.0,
        report_freq=10**9,  # no per-step logging
        frequency_of_the_test=10**9,  # server inference in the last round only
        auxiliary=False,
        auxiliary_weight=0.4,
        tau_max=10.0,
        tau_min=1.0,
        enable_wandb=False,
        run_id="0",
        rank=rank,
        round_idx=0,
        backend="MPI",
    )


class Counts:
    """What one client does inside ``local_search``."""

    def __init__(self) -> None:
        self.active = False
        self.forwards = self.images = self.backwards = 0
        self.sgd_steps = self.adam_steps = 0

    def snapshot(self) -> dict[str, int]:
        return {
            "forwards": self.forwards,
            "images_forward": self.images,
            "backward_passes": self.backwards,
            "weight_steps": self.sgd_steps,
            "arch_steps": self.adam_steps,
        }


def main(argv=None) -> None:
    a = parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)

    # Patch 1: accept synthetic CIFAR-10 files (no md5 check, so no download attempt).
    import torchvision.datasets.cifar

    torchvision.datasets.cifar.check_integrity = lambda *args, **kwargs: True

    import fedml  # noqa: F401  (FedML's package init: logging, env)
    import numpy as np
    from fedml.data.cifar10.data_loader import load_partition_data_cifar10
    from fedml.model.cv.darts.model_search import Network
    from fedml.simulation.mpi.fednas import FedNASAPI
    from fedml.simulation.mpi.fednas.FedNASServerManager import FedNASServerManager
    from fedml.simulation.mpi.fednas.FedNASTrainer import FedNASTrainer
    from mpi4py import MPI

    np.random.seed(a.seed)
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if size < 2:
        raise SystemExit("FedML's MPI FedNAS needs mpirun -n >= 2 (a server and a client)")
    args = fedml_args(a, rank, size)
    clients = size - 1

    t0 = time.perf_counter()
    dataset = load_partition_data_cifar10(
        "cifar10", a.data_root, "homo", 0.5, clients, a.batch_size
    )
    load_s = time.perf_counter() - t0
    criterion = torch.nn.CrossEntropyLoss()
    model = Network(a.init_channels, dataset[7], a.layers, criterion, steps=a.nodes)
    params = sum(p.numel() for p in model.parameters())

    result: dict = {
        "framework": "fedml",
        "rank": rank,
        "size": size,
        "load_s": load_s,
        "model_params": params,
        "config": vars(a),
        "fedml_n_k_passed": dataset[1],
    }

    # ------------------------------------------------------------------ server timers
    rounds: list[dict] = []
    state = {"start": None}
    orig_send = FedNASServerManager.send_message

    def send_message(self, message):
        if state["start"] is None:
            state["start"] = time.perf_counter()
        return orig_send(self, message)

    FedNASServerManager.send_message = send_message

    from fedml.simulation.mpi.fednas.FedNASAggregator import FedNASAggregator

    def timed(name, fn):
        def wrapper(self, *args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(self, *args, **kwargs)
            finally:
                end = time.perf_counter()
                if name == "aggregate":
                    rounds.append({"round_s": end - state["start"], "aggregate_s": end - t})
                    state["start"] = None
                elif rounds:
                    rounds[-1][f"{name}_s"] = rounds[-1].get(f"{name}_s", 0.0) + end - t

        return wrapper

    for name in ("aggregate", "infer", "statistics", "record_model_global_architecture"):
        setattr(FedNASAggregator, name, timed(name, getattr(FedNASAggregator, name)))

    # ------------------------------------------------------------------ client counters
    counts = Counts()
    searches: list[dict] = []

    def count_backward(grad):
        counts.backwards += 1

    def forward_hook(module, inputs, output):
        if counts.active:
            counts.forwards += 1
            counts.images += int(inputs[0].shape[0])
            if isinstance(output, torch.Tensor) and output.requires_grad:
                output.register_hook(count_backward)

    model.register_forward_hook(forward_hook)

    def counting(cls, attr):
        orig = cls.step

        def step(self, *args, **kwargs):
            if counts.active:
                setattr(counts, attr, getattr(counts, attr) + 1)
            return orig(self, *args, **kwargs)

        cls.step = step

    counting(torch.optim.SGD, "sgd_steps")
    counting(torch.optim.Adam, "adam_steps")

    orig_local_search = FedNASTrainer.local_search

    def local_search(self, *args, **kwargs):
        before = counts.snapshot()
        counts.active = True
        t = time.perf_counter()
        try:
            return orig_local_search(self, *args, **kwargs)
        finally:
            dt = time.perf_counter() - t
            counts.active = False
            after = counts.snapshot()
            row = {k: after[k] - before[k] for k in after}
            row["search_s"] = dt
            row["round"] = getattr(self.args, "round_idx", None)
            searches.append(row)

    FedNASTrainer.local_search = local_search

    # Patch 2: n_k = the client's own training-set size (FedML passes the number of
    # test batches to every client).
    orig_init = FedNASTrainer.__init__
    nk: dict = {}

    def trainer_init(self, *args, **kwargs):
        orig_init(self, *args, **kwargs)
        nk["fedml"] = self.local_sample_number
        if not a.no_fix_nk:
            self.local_sample_number = len(self.train_local.dataset)
        nk["used"] = self.local_sample_number
        nk["train_batches"] = len(self.train_local)

    FedNASTrainer.__init__ = trainer_init

    out = Path(a.out)

    def write() -> None:
        result["rounds"] = rounds
        result["searches"] = searches
        result["n_k"] = nk
        path = out if rank == 0 else out.with_name(f"{out.stem}.rank{rank}{out.suffix}")
        path.write_text(json.dumps(result, indent=1))
        for i, r in enumerate(rounds):
            print(f"fedml server: round {i}: {r['round_s']:.2f} s", flush=True)
        for r in searches:
            steps = max(1, r["weight_steps"])
            print(
                f"fedml client rank {rank}: round {r['round']} epoch: {r['search_s']:.2f} s, "
                f"{r['weight_steps']} steps, {r['search_s'] / steps:.3f} s/step",
                flush=True,
            )

    # FedML's finish() calls MPI.Finalize(); write the results however the run ends.
    atexit.register(write)
    device = torch.device("cpu")
    FedNASAPI.FedML_FedNAS_distributed(args, rank, size, comm, device, dataset, model)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
