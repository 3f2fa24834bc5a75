"""Shared helpers: tiny configs and launching ``mpirun -n K fednas-mpi`` with a hard timeout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from fednas_mpi.harness import mpirun

TINY = {
    "run": {"name": "tiny", "seed": 7, "rounds": 4},
    "data": {"name": "digits"},
    "partition": {"scheme": "dirichlet", "alpha": 0.5, "num_clients": 8, "min_train": 8},
    "federation": {"clients_per_round": 3},
    "model": {"channels": [8, 16], "hidden": 32},
    "algorithm": {"name": "fedavg", "local_epochs": 1, "batch_size": 16, "lr": 0.05},
}


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


def launch(
    n: int,
    args: list[str],
    timeout: float = 120,
    cwd: Path | None = None,
    script: list[str] | None = None,
) -> Result:
    """Run ``mpirun -n n <script or fednas-mpi> args``; kill the whole group on timeout."""
    prog = script or [sys.executable, "-m", "fednas_mpi"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [mpirun(), "-n", str(n), *prog, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"mpirun -n {n} {args} hung for {timeout}s\n{out}\n{err}") from None
    return Result(proc.returncode, out, err)


def run_per_rank_count(
    root: Path, base: dict, ranks=(1, 3), timeout: float = 240, **sections
) -> dict[int, Path]:
    """Run one config once per rank count; returns {ranks: run directory}."""
    cfg = write_config(root / "cfg.yaml", base=base, **sections)
    out = {}
    for n in ranks:
        res = launch(n, [str(cfg), "--out", str(root / f"n{n}")], timeout=timeout)
        assert res.returncode == 0, res.stderr
        out[n] = root / f"n{n}"
    return out


# ------------------------------------------------------------------ method unit tests

#: The smallest DARTS space the method unit tests build a supernet on.
TINY_DARTS = {"init_channels": 4, "layers": 3, "nodes": 2, "input_k": 2, "stem_multiplier": 1}


def darts_unit_config(method: str, rounds: int = 3, **algorithm):
    """The config the NAS methods' unit tests build their method on: TINY_DARTS, 4 clients
    (2 a round), batch 4, one local epoch, seed 5; ``algorithm``: further keys of the
    algorithm section, e.g. ``fednas={"search_rounds": 2}``."""
    from fednas_mpi.config import from_dict

    return from_dict(
        {
            "run": {"seed": 5, "rounds": rounds},
            "model": {"name": "darts", "darts": dict(TINY_DARTS)},
            "algorithm": {"name": method, "local_epochs": 1, "batch_size": 4, **algorithm},
            "partition": {"num_clients": 4},
            "federation": {"clients_per_round": 2},
        }
    )


#: The section a method's own keys go in, where it is not the method's name (the meta
#: variants read FedMetaNAS's).
SECTION = {"meta_fedpnas": "fedmetanas", "meta_perfedrlnas": "fedmetanas"}
#: The methods on a fixed model (the small CNN) rather than a supernet.
FIXED_METHODS = ("fedavg", "fedbabu", "fedrep", "perfedavg")


def unit_config(method: str, rounds: int = 3, **keys):
    """Any method's unit-test config: ``darts_unit_config`` for a supernet method; for a
    fixed-model method a tiny CNN, batch 4, SGD (lr 0.1, momentum 0.9, weight decay 1e-3),
    seed 5. ``keys``: the method's own section (``SECTION``)."""
    if method not in FIXED_METHODS:
        return darts_unit_config(method, rounds, **({SECTION.get(method, method): keys}))
    from fednas_mpi.config import from_dict

    return from_dict(
        {
            "run": {"seed": 5, "rounds": rounds},
            "model": {"channels": [4, 6], "hidden": 10},
            "algorithm": {
                "name": method,
                "local_epochs": 1,
                "batch_size": 4,
                "lr": 0.1,
                "momentum": 0.9,
                "weight_decay": 1e-3,
                **({method: keys} if keys else {}),
            },
        }
    )


def client_data(cid: int = 2, n: int = 16, n_eval: int = 8, eval_fill: float | None = None):
    """Random 8x8 one-channel client data with 10 classes, drawn from a generator seeded by
    the client id (100 + cid), so two calls with the same id give the same client;
    ``eval_fill``: a constant eval split instead (for tests that must tell it apart)."""
    import torch

    from fednas_mpi.algorithms import ClientData

    g = torch.Generator().manual_seed(100 + cid)
    x, y = torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)
    ex = torch.randn(n_eval, 1, 8, 8, generator=g)
    ey = torch.randint(0, 10, (n_eval,), generator=g)
    if eval_fill is not None:
        ex = torch.full_like(ex, eval_fill)
    return ClientData(cid, x, y, ex, ey)


def darts_e2e_config(
    name: str, rounds: int, method: str, section: dict, section_name: str | None = None
) -> dict:
    """The small DARTS run of the end-to-end tests of a NAS method's options: digits over
    6 clients of 48 + 16 images (3 a round), C=4, 2 cells of 2 nodes, seed 3, batch 8;
    ``section``: the keys under test, of ``algorithm.<section_name>`` (default: the
    method's own section; e.g. fedmetanas for meta_fedpnas)."""
    return {
        "run": {"name": name, "seed": 3, "rounds": rounds, "eval_subset": 100},
        "data": {"name": "digits"},
        "partition": {
            "scheme": "dirichlet",
            "alpha": 0.5,
            "num_clients": 6,
            "min_train": 8,
            "train_size": 48,
            "eval_size": 16,
        },
        "federation": {"clients_per_round": 3},
        "model": {"name": "darts", "darts": {"init_channels": 4, "layers": 2, "nodes": 2}},
        "algorithm": {
            "name": method,
            "local_epochs": 1,
            "batch_size": 8,
            section_name or method: section,
        },
    }


def fedmetanas_three_rounds(kernels: dict):
    """Three in-process rounds of FedMetaNAS on ``darts_unit_config``'s network and two
    ``client_data`` clients, pruning after rounds 1 and 2 and deriving after 3, with the
    ``kernels`` section given: (the spec after each round, the final global model)."""
    from fednas_mpi.algorithms import DataInfo, RoundContext
    from fednas_mpi.algorithms.fedmetanas import FedMetaNAS
    from fednas_mpi.config import from_dict

    fedmetanas = {
        "inner_steps": 1,
        "prune_start": 1,
        "prune_gap": 0.01,
        "combo_prune_gap": 0.01,
        "meta_lr_alpha": 0.3,
        "final_round": 3,
        "settle_rounds": 0,
    }
    cfg = from_dict(
        {
            "run": {"seed": 5, "rounds": 3},
            "model": {"name": "darts", "darts": dict(TINY_DARTS)},
            "algorithm": {
                "name": "fedmetanas",
                "local_epochs": 1,
                "batch_size": 4,
                "fedmetanas": fedmetanas,
            },
            "partition": {"num_clients": 4},
            "federation": {"clients_per_round": 2},
            "kernels": kernels,
        }
    )
    algo = FedMetaNAS(cfg, DataInfo((1, 8, 8), 10))
    gm, specs = algo.init_global(), []
    for r in range(3):
        ctx = RoundContext(r, 3, cfg.run.seed, algo.stage(r))
        results = [algo.client_update(gm, client_data(c), ctx, None) for c in (0, 3)]
        total = sum(res.weight for res in results)
        avg = {
            k: sum(res.state[k].double() * res.weight for res in results).div(total).to(v.dtype)
            for k, v in results[0].state.items()
        }
        gm = algo.server_step(gm, avg, {}, ctx)
        specs.append(gm.spec)
    return specs, gm
