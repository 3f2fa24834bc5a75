"""Issue 27: the staged, sync-free client loops (streams drawn before the loop, losses summed
on the device, clipping without a read, foreach updates) end bit for bit where the loops
before them ended (``prestaged``, the old loops kept as a test-only reference): the same
state dict and the same metrics, on both supernet forwards, with augmentation, clipping
that bites, several epochs and task permutations, and both arch optimisers."""

from __future__ import annotations

import pytest
import torch
from helpers import client_data, darts_unit_config
from prestaged import REFERENCES

import fednas_mpi.algorithms.common.streams as streams
from fednas_mpi.algorithms import DataInfo, RoundContext
from fednas_mpi.algorithms.feddsnas import FedDSNAS
from fednas_mpi.algorithms.fedmetanas import FedMetaNAS
from fednas_mpi.algorithms.fednas import FedNAS
from fednas_mpi.data.augment import CropFlip

CLASSES = {"fedmetanas": FedMetaNAS, "fednas": FedNAS, "feddsnas": FedDSNAS}
CASES = {
    # name: (method, algorithm-section keys, round, local epochs, augment)
    "metanas-search": ("fedmetanas", {"grad_clip": 0.05, "tasks_per_epoch": 3}, 1, 2, True),
    "metanas-warmup": ("fedmetanas", {"arch_warmup_rounds": 1, "grad_clip": 5.0}, 0, 1, False),
    "metanas-adam-noclip": (
        "fedmetanas",
        {"meta_optimizer": "adam", "grad_clip": 0.0, "arch_optimizer": "sgd"},
        1,
        1,
        True,
    ),
    "metanas-server-arch": (
        "fedmetanas",
        {"arch_update": "server", "inner_steps": 3, "grad_clip": 0.2},
        1,
        1,
        False,
    ),
    "nas-adam": ("fednas", {"search_rounds": 2, "grad_clip": 0.05}, 0, 2, True),
    "nas-server-arch": ("fednas", {"search_rounds": 2, "arch_update": "server"}, 1, 1, False),
    "dsnas-adam": ("feddsnas", {"grad_clip": 0.05}, 0, 2, True),
    "dsnas-server-arch": ("feddsnas", {"arch_update": "server", "grad_clip": 5.0}, 1, 1, False),
}


def _setup(case: str, supernet: str = "grouped"):
    method, keys, round_, epochs, augment = CASES[case]
    cfg = darts_unit_config(method, 3, **{method: keys})
    cfg.algorithm.local_epochs = epochs
    cfg.kernels.supernet = supernet
    algo = CLASSES[method](cfg, DataInfo((1, 8, 8), 10))
    model = algo.init_global()
    data = client_data(n=22)  # batches of 4 and a short last one
    if augment:
        data = type(data)(**{**data.__dict__, "augment": CropFlip(1, (0.25,))})
    return method, algo, model, data, RoundContext(round_, 3, 5, algo.stage(round_))


def _assert_bit_equal(method, algo, model, data, ctx):
    new = algo.client_update(model, data, ctx, None)
    state, metrics = REFERENCES[method](algo, model, data, ctx)
    different = [k for k in state if not torch.equal(new.state[k], state[k])]
    assert not different, f"{len(different)} of {len(state)} tensors differ: {different[:4]}"
    for k, v in metrics.items():
        assert new.metrics[k] == v, (k, new.metrics[k], v)


@pytest.mark.parametrize("case", sorted(CASES))
def test_staged_loop_equals_the_loop_before_it(case):
    _assert_bit_equal(*_setup(case))


@pytest.mark.parametrize("case", ["metanas-search", "nas-adam"])
def test_staged_loop_equals_the_loop_before_it_on_the_reference_forward(case):
    _assert_bit_equal(*_setup(case, "reference"))


@pytest.mark.parametrize("case", ["metanas-search", "dsnas-adam"])
def test_a_shifted_stream_is_caught(case, monkeypatch):
    """The comparison is sensitive to the streams' order: one extra draw before the Gumbel
    noise is staged shifts every sample after it, and the states part."""
    real = streams.gumbel_noise
    shifted = []

    def gumbel_noise(shape, generator, *args, **kwargs):
        if not shifted:
            shifted.append(torch.rand((), generator=generator))
        return real(shape, generator, *args, **kwargs)

    monkeypatch.setattr(streams, "gumbel_noise", gumbel_noise)
    with pytest.raises(AssertionError, match="tensors differ"):
        _assert_bit_equal(*_setup(case))
