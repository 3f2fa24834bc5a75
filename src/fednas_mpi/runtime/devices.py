"""Which device each rank computes on: one GPU per worker rank, chosen by node-local rank.

The ranks of a node are found with ``Split_type(COMM_TYPE_SHARED)`` (as for the kernel
build). On each node the worker ranks (every rank but world rank 0) are numbered 0, 1, ...
in rank order; worker i takes ``gpus[i % len(gpus)]`` (``runtime.gpus``, default every GPU
torch sees), so the clients a rank simulates share its GPU and more workers than GPUs share
them round-robin. Rank 0 stays on the CPU unless ``runtime.server_device`` is ``gpu`` or
``auto`` and the node has a GPU; alone (``-n 1``) it is also the worker, so it takes the
first GPU. With no GPU (or ``runtime.device: cpu``) every rank computes on the CPU.
"""

from __future__ import annotations

import json
import socket
from dataclasses import asdict, dataclass

import torch
from mpi4py import MPI

from ..config import RuntimeConfig
from .comm import agree, node_local


class DeviceError(ValueError):
    """A device request the node cannot honour (reported once, exit status 2)."""


@dataclass(frozen=True)
class Placement:
    rank: int
    host: str
    local_rank: int
    device: str  # "cpu" or "cuda:N"


def choose(rank: int, worker_index: int, visible: int, rt: RuntimeConfig) -> str:
    """The device of world rank ``rank``, the ``worker_index``-th worker on its node (-1:
    rank 0 only serves), on a node where torch sees ``visible`` GPUs. Pure: the unit tests
    call it with made-up nodes."""
    if rt.device == "cpu":
        return "cpu"
    if visible == 0:
        if rt.device == "cuda":
            raise DeviceError(
                "runtime.device = cuda, but torch sees no GPU on this node "
                "(check CUDA_VISIBLE_DEVICES and the job's GPU request), or "
                "use runtime.device: auto / cpu"
            )
        return "cpu"
    ids = list(rt.gpus) or list(range(visible))
    missing = [g for g in ids if g >= visible]
    if missing:
        raise DeviceError(
            f"runtime.gpus = {list(rt.gpus)}: GPU(s) {missing} not visible (torch sees {visible})"
        )
    if worker_index < 0:
        # a GPU is visible here, so auto and gpu agree: the first of the chosen GPUs
        return f"cuda:{ids[0]}" if rt.server_device in ("gpu", "auto") else "cpu"
    return f"cuda:{ids[worker_index % len(ids)]}"


def place(comm: MPI.Comm, rt: RuntimeConfig) -> tuple[Placement | None, list[Placement], str]:
    """Collective: (this rank's placement, every rank's in rank order, error).

    The error is the same on every rank (empty when all could be placed); on success the
    rank's CUDA device is made current, so later ``torch.device("cuda")`` means its GPU."""
    with node_local(comm) as local:
        world_ranks = local.allgather(comm.Get_rank())
        local_rank = local.Get_rank()
    workers = [r for r in world_ranks if r != 0]
    me = comm.Get_rank()
    # rank 0 computes clients only when it is alone
    index = workers.index(me) if me != 0 else (0 if comm.Get_size() == 1 else -1)
    error, placement = "", None
    try:
        visible = torch.cuda.device_count() if rt.device != "cpu" else 0
        placement = Placement(me, socket.gethostname(), local_rank, choose(me, index, visible, rt))
    except DeviceError as e:
        error = f"[rank {me}] {e}"
    # Process-wide choices, made on every rank (harmless where there is no GPU).
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = rt.tf32
    error = agree(comm, error or None) or ""
    everyone = comm.allgather(placement)
    if not error and placement.device.startswith("cuda"):
        torch.cuda.set_device(torch.device(placement.device))  # only reached with a GPU
        # same config and seed, same results: cuDNN picks fixed, deterministic algorithms
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return placement, everyone, error


def describe(placements: list[Placement]) -> str:
    """One line: 'rank 0 cpu; ranks 1-2 cuda:0; ...' grouped per host."""
    by_host: dict[str, list[Placement]] = {}
    for p in placements:
        by_host.setdefault(p.host, []).append(p)
    parts = []
    for host, ps in by_host.items():
        runs: list[tuple[int, int, str]] = []
        for p in sorted(ps, key=lambda p: p.rank):
            if runs and runs[-1][2] == p.device and runs[-1][1] == p.rank - 1:
                runs[-1] = (runs[-1][0], p.rank, p.device)
            else:
                runs.append((p.rank, p.rank, p.device))
        text = ", ".join(f"rank {a} {d}" if a == b else f"ranks {a}-{b} {d}" for a, b, d in runs)
        parts.append(f"{host}: {text}")
    return "; ".join(parts)


def to_json(placements: list[Placement]) -> str:
    return json.dumps([asdict(p) for p in placements])
