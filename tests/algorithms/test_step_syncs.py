"""Issue 27: inside the step loop of a client update nothing waits on the device and nothing
is drawn or copied from the host (``syncguard``): every method's client update (FedNAS's
search and retraining stages), with augmentation, on both supernet forwards where a
method runs the mixture. The loop is what the method marks with
``steploop.step_loop``: staging before it and one read of the losses after it are allowed.
FedDSNAS must know its sampled path on the host: one declared read per step, no more.
On a GPU the same loops also run under ``torch.cuda.set_sync_debug_mode("error")``."""

from __future__ import annotations

import pytest
import torch
from helpers import FIXED_METHODS, client_data, unit_config
from syncguard import SyncGuard

from fednas_mpi.algorithms import DataInfo, RoundContext, get_algorithm
from fednas_mpi.algorithms.common.steploop import watching
from fednas_mpi.data.augment import CropFlip

METHODS = {
    # name: (method, its section's keys, round, marked loops): FedMetaNAS after its
    # warm-up (Gumbel noise on) with clipping that bites, FedNAS in its search stage and
    # (search_rounds 1, round 1) in its retraining, FedRep's head and body loops
    "fedmetanas": ("fedmetanas", {"grad_clip": 0.05, "inner_steps": 2}, 1, 1),
    "fednas": ("fednas", {"search_rounds": 2, "grad_clip": 0.05}, 0, 1),
    "fednas-retrain": ("fednas", {"search_rounds": 1}, 1, 1),
    "feddsnas": ("feddsnas", {"grad_clip": 0.05}, 0, 1),
    "fedavg": ("fedavg", {}, 0, 1),
    "fedbabu": ("fedbabu", {}, 0, 1),
    "fedrep": ("fedrep", {}, 0, 2),
    "perfedavg": ("perfedavg", {"variant": "hessian_free"}, 0, 1),
    "random_nas": ("random_nas", {}, 0, 1),
    "fedrlnas": ("fedrlnas", {"grad_clip": 0.05}, 0, 1),
    "perfedrlnas": ("perfedrlnas", {"grad_clip": 0.05}, 0, 1),
    "meta_perfedrlnas": ("meta_perfedrlnas", {"grad_clip": 0.05, "inner_steps": 2}, 0, 1),
    "fedpnas": ("fedpnas", {"grad_clip": 0.05, "inner_steps": 2}, 0, 1),
    "meta_fedpnas": ("meta_fedpnas", {"grad_clip": 0.05, "inner_steps": 2}, 1, 1),
}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
#: the methods that run only single paths (whatever kernels.supernet says) or no supernet
ONE_FORWARD = {"feddsnas", "fedrlnas", "perfedrlnas", "meta_perfedrlnas", *FIXED_METHODS}


def _run(name: str, supernet: str, device: str):
    method, keys, round_, _ = METHODS[name]
    cfg = unit_config(method, 3, **keys)
    cfg.kernels.supernet = supernet
    algo = get_algorithm(method)(cfg, DataInfo((1, 8, 8), 10))
    algo.device = torch.device(device)
    model = algo.init_global()
    if name == "fednas-retrain":  # the derived network, as the server makes it
        model = algo.server_step(
            model, model.state, {"client_weight": 1.0}, RoundContext(0, 3, 5, "search")
        )
    data = client_data(n=20)
    data = type(data)(**{**data.__dict__, "augment": CropFlip(1, (0.0,))}).to(device)
    ctx = RoundContext(round_, 3, 5, algo.stage(round_))
    with watching(SyncGuard()) as guard:
        result = algo.client_update(model, data, ctx, None)
    return guard, result


# one case of the methods whose forward does not depend on kernels.supernet
CASES = [
    (m, s)
    for m in sorted(METHODS)
    for s in ("grouped", "reference")
    if not (METHODS[m][0] in ONE_FORWARD and s == "grouped")
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("method", "supernet"), CASES)
def test_step_loop_has_no_host_syncs(method, supernet, device):
    guard, result = _run(method, supernet, device)
    assert guard.loops == METHODS[method][3]  # the method marked its loops
    assert not guard.violations, "\n".join(
        f"{n} x {kind} {op} at {where}" for (kind, op, where), n in guard.summary().items()
    )
    steps = 20 // 4  # batch 4, one local epoch (DSNAS: one read per step)
    if method == "feddsnas":
        assert dict(guard.allowed_reads) == {"single path ops": steps}
    else:
        assert not guard.allowed_reads
    assert all(torch.isfinite(v).all() for v in result.state.values())
