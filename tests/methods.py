"""Every registered method with the small config it runs on: the GPU tests run each on the
GPU, the export and TensorBoard tests export and log each. The list is the registry's."""

from __future__ import annotations

import json

from fednas_mpi.algorithms import registry

DARTS = {"name": "darts", "darts": {"init_channels": 4, "layers": 3, "nodes": 2}}
SMALL = {
    "scheme": "dirichlet",
    "alpha": 0.5,
    "num_clients": 5,
    "min_train": 8,
    "train_size": 40,
    "eval_size": 16,
}
MOBILENET = {"model": {"name": "mobilenet_v3_small", "mobilenet": {"width_mult": 0.25}}}
# beside the defaults (the CNN, or DARTS for NAS methods): what a method needs on a GPU
EXTRA = {
    "perfedavg": MOBILENET,
    "fedrep": MOBILENET,
    "fedbabu": MOBILENET,
    "fedmetanas": {
        "model": DARTS,
        "algorithm": {
            "fedmetanas": {
                "temperature_start": 1.0,
                "temperature_end": 0.5,
                "arch_warmup_rounds": 0,
                "prune_start": 1,
                "prune_gap": 0.05,
            }
        },
    },
    "fednas": {"model": DARTS, "algorithm": {"fednas": {"search_rounds": 1}}},
}
#: every registered method
METHODS = {m.name: EXTRA.get(m.name, {"model": DARTS} if m.nas else {}) for m in registry.METHODS}


def run_config(path, method):
    """A 2-round run of ``method`` at ``path`` (JSON), on digits, 5 small clients."""
    extra = METHODS[method]
    cfg = {
        "run": {"name": method, "seed": 5, "rounds": 2, "personal_eval_every": 2},
        "data": {"name": "digits"},
        "partition": dict(SMALL),
        "federation": {"clients_per_round": 3},
        "model": extra.get("model", {"channels": [8, 16], "hidden": 32}),
        "algorithm": {
            "name": method,
            "local_epochs": 1,
            "batch_size": 16,
            **extra.get("algorithm", {}),
        },
    }
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path
