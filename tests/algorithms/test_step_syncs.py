"""Issue 27: inside the step loop of a client update nothing waits on the device and nothing
is drawn or copied from the host (``syncguard``): FedMetaNAS, FedNAS (search) and FedDSNAS,
with augmentation, on both supernet forwards. The loop is what the method marks with
``steploop.step_loop``: staging before it and one read of the losses after it are allowed.
FedDSNAS must know its sampled path on the host: one declared read per step, no more.
On a GPU the same loops also run under ``torch.cuda.set_sync_debug_mode("error")``."""

from __future__ import annotations

import pytest
import torch
from helpers import client_data, darts_unit_config
from syncguard import SyncGuard

from fednas_mpi.algorithms import DataInfo, RoundContext
from fednas_mpi.algorithms.common.steploop import watching
from fednas_mpi.algorithms.feddsnas import FedDSNAS
from fednas_mpi.algorithms.fedmetanas import FedMetaNAS
from fednas_mpi.algorithms.fednas import FedNAS
from fednas_mpi.data.augment import CropFlip

METHODS = {
    # (class, algorithm keys, round): FedMetaNAS after its warm-up (Gumbel noise on) with
    # clipping that bites, FedNAS in its search stage
    "fedmetanas": (FedMetaNAS, {"fedmetanas": {"grad_clip": 0.05, "inner_steps": 2}}, 1),
    "fednas": (FedNAS, {"fednas": {"search_rounds": 2, "grad_clip": 0.05}}, 0),
    "feddsnas": (FedDSNAS, {"feddsnas": {"grad_clip": 0.05}}, 0),
}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _run(method: str, supernet: str, device: str):
    cls, keys, round_ = METHODS[method]
    cfg = darts_unit_config(method, 3, **keys)
    cfg.kernels.supernet = supernet
    algo = cls(cfg, DataInfo((1, 8, 8), 10))
    algo.device = torch.device(device)
    model = algo.init_global()
    data = client_data(n=20)
    data = type(data)(**{**data.__dict__, "augment": CropFlip(1, (0.0,))}).to(device)
    ctx = RoundContext(round_, 3, 5, algo.stage(round_))
    with watching(SyncGuard()) as guard:
        result = algo.client_update(model, data, ctx, None)
    return guard, result


# FedDSNAS runs the single-path forward whatever kernels.supernet says: one case of it
CASES = [
    (m, s)
    for m in sorted(METHODS)
    for s in ("grouped", "reference")
    if (m, s) != ("feddsnas", "grouped")
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("method", "supernet"), CASES)
def test_step_loop_has_no_host_syncs(method, supernet, device):
    guard, result = _run(method, supernet, device)
    assert guard.loops == 1  # the method marked its loop
    assert not guard.violations, "\n".join(
        f"{n} x {kind} {op} at {where}" for (kind, op, where), n in guard.summary().items()
    )
    steps = 20 // 4  # batch 4, one local epoch
    if method == "feddsnas":
        assert dict(guard.allowed_reads) == {"single path ops": steps}
    else:
        assert not guard.allowed_reads
    assert all(torch.isfinite(v).all() for v in result.state.values())
