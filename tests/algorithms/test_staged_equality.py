"""Issue 27: the staged, sync-free client loops (streams drawn before the loop, losses summed
on the device, clipping without a read, foreach updates) end bit for bit where the loops
before them ended (``prestaged``, the old loops kept as a test-only reference): the same
state dict, metrics, client state and auxiliary values, on both supernet forwards, with
augmentation, clipping that bites, several epochs and task permutations, and both arch
optimisers; for every method's client update."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import client_data, unit_config
from prestaged import REFERENCES

import fednas_mpi.algorithms.common.streams as streams
from fednas_mpi.algorithms import DataInfo, RoundContext, get_algorithm
from fednas_mpi.algorithms.base import ClientResult
from fednas_mpi.data.augment import CropFlip

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
    # the fixed-model methods (the small CNN) and the recipe's SGD loop
    "fedavg": ("fedavg", {}, 1, 2, True),
    "fedavg-plain": ("fedavg", {}, 0, 1, False),
    "fedbabu": ("fedbabu", {}, 1, 2, True),
    "fedrep": ("fedrep", {"head_epochs": 2}, 1, 1, True),
    "perfedavg-first-order": ("perfedavg", {}, 1, 2, True),
    "perfedavg-hessian-free": ("perfedavg", {"variant": "hessian_free"}, 1, 1, False),
    "random-nas": ("random_nas", {"genotype_seed": 3}, 1, 2, True),
    "nas-retrain": ("fednas", {"search_rounds": 1}, 2, 2, True),
    # the single-path subnet methods (an architecture sampled before the loop)
    "rlnas": ("fedrlnas", {"grad_clip": 0.05}, 0, 2, True),
    "rlnas-noclip": ("fedrlnas", {"grad_clip": 0.0, "epsilon": 0.5}, 1, 1, False),
    "perfedrlnas": ("perfedrlnas", {"grad_clip": 0.05}, 0, 2, True),
    "perfedrlnas-last": ("perfedrlnas", {}, 2, 1, False),  # the client's own subnet
    "meta-perfedrlnas": (
        "meta_perfedrlnas",
        {"grad_clip": 0.05, "inner_steps": 2, "tasks_per_epoch": 3},
        1,
        2,
        True,
    ),
    # FedPNAS and its meta variant (split forward: global and personalised logits)
    "pnas": ("fedpnas", {"grad_clip": 0.05, "inner_steps": 2}, 1, 2, True),
    "pnas-server-arch": (
        "fedpnas",
        {"arch_update": "server", "tasks_per_epoch": 3, "grad_clip": 0.0},
        0,
        1,
        False,
    ),
    "meta-pnas": ("meta_fedpnas", {"grad_clip": 0.05, "inner_steps": 2}, 1, 2, True),
    "meta-pnas-warmup": ("meta_fedpnas", {"arch_warmup_rounds": 1}, 0, 1, False),
}


def _setup(case: str, supernet: str = "grouped"):
    method, keys, round_, epochs, augment = CASES[case]
    cfg = unit_config(method, 3, **keys)
    cfg.algorithm.local_epochs = epochs
    cfg.kernels.supernet = supernet
    algo = get_algorithm(method)(cfg, DataInfo((1, 8, 8), 10))
    model = algo.init_global()
    data = client_data(n=22)  # batches of 4 and a short last one
    if augment:
        data = type(data)(**{**data.__dict__, "augment": CropFlip(1, (0.25,))})
    if case == "nas-retrain":  # the derived network of the search, as the server makes it
        metrics = {"client_weight": 1.0}
        model = algo.server_step(model, model.state, metrics, RoundContext(0, 3, 5, "search"))
    ref = "fednas-retrain" if case == "nas-retrain" else method
    return ref, algo, model, data, RoundContext(round_, 3, 5, algo.stage(round_))


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def _assert_states_equal(new: dict, old: dict, what: str = "tensors") -> None:
    assert new.keys() == old.keys(), (what, sorted(new.keys() ^ old.keys())[:4])
    different = [k for k in old if not torch.equal(new[k], old[k])]
    assert not different, f"{len(different)} of {len(old)} {what} differ: {different[:4]}"


def _assert_bit_equal(method, algo, model, data, ctx):
    new = algo.client_update(model, data, ctx, None)
    old = REFERENCES[method](algo, model, data, ctx)
    if isinstance(old, ClientResult):
        _assert_states_equal(new.client_state or {}, old.client_state or {}, "client tensors")
        _assert_states_equal(new.aux, old.aux, "aux tensors")
        _assert_states_equal(new.client_aux, old.client_aux, "client aux tensors")
        old = old.state, old.metrics
    state, metrics = old
    _assert_states_equal(new.state, state)
    for k, v in metrics.items():
        assert _same(new.metrics[k], v), (k, new.metrics[k], v)


@pytest.mark.parametrize("case", sorted(CASES))
def test_staged_loop_equals_the_loop_before_it(case):
    _assert_bit_equal(*_setup(case))


@pytest.mark.parametrize("case", ["metanas-search", "nas-adam", "nas-retrain", "pnas"])
def test_staged_loop_equals_the_loop_before_it_on_the_reference_forward(case):
    _assert_bit_equal(*_setup(case, "reference"))


@pytest.mark.parametrize("case", ["metanas-search", "dsnas-adam", "pnas"])
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


@pytest.mark.parametrize(
    "case", ["fedavg", "perfedavg-first-order", "rlnas", "pnas", "meta-perfedrlnas"]
)
def test_a_shifted_batch_stream_is_caught(case, monkeypatch):
    """The same for the minibatch streams: one extra draw before the first batch's
    augmentation is recorded shifts every crop after it."""
    real = streams.BatchStream.add

    def add(self, idx, generator=None):
        if not len(self) and generator is not None:
            torch.rand((), generator=generator)
        return real(self, idx, generator)

    monkeypatch.setattr(streams.BatchStream, "add", add)
    with pytest.raises(AssertionError, match="tensors differ"):
        _assert_bit_equal(*_setup(case))
