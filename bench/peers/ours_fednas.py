"""fednas-mpi's FedNAS with the same counters as bench/peers/fedml_fednas.py (issue 17).

    mpirun -n 3 python bench/peers/ours_fednas.py --counts OUT.json -- CFG.yaml --set ...

Everything after ``--`` goes to ``fednas-mpi`` unchanged (``fednas_mpi.cli.main``). The
run's own per-round metrics (``method_time``, ``compute_time``, ...) are in its run
directory (``fednas-mpi inspect --json RUN_DIR``); this wrapper adds what the run does
not record, measured the same way as on FedML's side: each client's search
(``FedNAS._search``, all local epochs of MiLeNAS steps) is timed, and while it runs every
forward of the supernet (images, and - by a hook on its output - every backward pass
through that forward's graph) and every optimiser step (SGD on the weights, Adam on the
alphas) is counted. Each rank writes OUT.rankN.json.
"""

from __future__ import annotations

import argparse
import atexit
import json
import sys
import time
from pathlib import Path


def main() -> int:
    argv = sys.argv[1:]
    if "--" not in argv:
        raise SystemExit("usage: ours_fednas.py --counts OUT.json -- CFG.yaml [fednas-mpi args]")
    cut = argv.index("--")
    p = argparse.ArgumentParser()
    p.add_argument("--counts", required=True, help="OUT.json: each rank writes OUT.rankN.json")
    a = p.parse_args(argv[:cut])

    import torch
    from mpi4py import MPI

    from fednas_mpi import cli
    from fednas_mpi.algorithms.fednas import FedNAS

    rank = MPI.COMM_WORLD.Get_rank()
    counts = {"active": False, "forwards": 0, "images_forward": 0, "backward_passes": 0}
    counts.update(weight_steps=0, arch_steps=0)
    searches: list[dict] = []

    def count_backward(grad):
        counts["backward_passes"] += 1

    def forward_hook(module, inputs, output):
        if counts["active"]:
            counts["forwards"] += 1
            counts["images_forward"] += int(inputs[0].shape[0])
            if isinstance(output, torch.Tensor) and output.requires_grad:
                output.register_hook(count_backward)

    def counting(cls, key):
        orig = cls.step

        def step(self, *args, **kwargs):
            if counts["active"]:
                counts[key] += 1
            return orig(self, *args, **kwargs)

        cls.step = step

    counting(torch.optim.SGD, "weight_steps")
    counting(torch.optim.Adam, "arch_steps")
    keys = ("forwards", "images_forward", "backward_passes", "weight_steps", "arch_steps")
    orig_search = FedNAS._search

    def search(self, net, data, ctx, g):
        handle = net.register_forward_hook(forward_hook)
        before = {k: counts[k] for k in keys}
        counts["active"] = True
        t = time.perf_counter()
        try:
            return orig_search(self, net, data, ctx, g)
        finally:
            dt = time.perf_counter() - t
            counts["active"] = False
            handle.remove()
            row = {k: counts[k] - before[k] for k in keys}
            row.update(search_s=dt, round=ctx.round, client=data.client_id)
            row["train_images"] = int(data.num_train)
            searches.append(row)

    FedNAS._search = search
    out = Path(a.counts)

    def write() -> None:
        path = out.with_name(f"{out.stem}.rank{rank}{out.suffix}")
        path.write_text(
            json.dumps({"framework": "fednas-mpi", "rank": rank, "searches": searches}, indent=1)
        )

    atexit.register(write)
    return cli.main(argv[cut + 1 :])


if __name__ == "__main__":
    sys.exit(main())
