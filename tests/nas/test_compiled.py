"""Compiled cells (``nas.compiled``, ``kernels.compile: cells``) against eager cells: the
forward and every gradient, one compile per cell and architecture and none between
changes, evaluation left eager, the config switch, and three FedMetaNAS rounds.

The compile plumbing (dynamo, AOTAutograd, the guards that decide recompiles) is tested
with the ``aot_eager`` backend, which compiles the same graphs without generating code;
inductor's generated code is compared with eager in one slow test (minutes of gcc on a
CPU)."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY_DARTS, darts_unit_config, fedmetanas_three_rounds
from torch._dynamo.utils import counters

from fednas_mpi.algorithms import DataInfo
from fednas_mpi.algorithms.fedmetanas import FedMetaNAS
from fednas_mpi.config import ConfigError, from_dict
from fednas_mpi.migrations import stored
from fednas_mpi.nas import ArchSpec, CellSpace, SearchNetwork, compiled


@pytest.fixture
def aot_eager(monkeypatch):
    monkeypatch.setattr(compiled, "BACKEND", "aot_eager")


def _net(ops_dead: int = 0, dtype=torch.float64, layers: int = 3) -> SearchNetwork:
    """TINY_DARTS's shape (3 cells: normal, reduce, reduce; ``layers=1``: one cell),
    the first ``ops_dead`` real ops of edge 0 pruned in both cell types."""
    space = CellSpace(TINY_DARTS["nodes"], TINY_DARTS["input_k"])
    ops, combos = space.full_masks()
    ops = [list(r) for r in ops]
    for k in range(1, 1 + ops_dead):
        ops[0][k] = False
    masks = {c: {"ops": ops, "combos": combos} for c in ("normal", "reduce")}
    torch.manual_seed(0)
    net = SearchNetwork(1, 10, 4, layers, space, 1, masks).to(dtype)
    with torch.no_grad():
        for p in net.arch_parameters():
            p.normal_()
    return net.train()


def _step(net: SearchNetwork, x: torch.Tensor):
    net.zero_grad(set_to_none=True)
    net.set_sampling(0.7, torch.Generator().manual_seed(3))
    out = net(x)
    (out * torch.linspace(-1, 1, out.shape[1], dtype=out.dtype)).sum().backward()
    # a one-cell network leaves the other cell type's logits unused (no gradient): the
    # two paths must agree on which parameters get one, then on their values
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    return out.detach(), grads


def _graphs() -> int:
    return int(counters["stats"]["unique_graphs"])


def _assert_same_step(net: SearchNetwork, x: torch.Tensor, rtol: float, atol: float):
    net.set_compile("off")
    ref_out, ref_grads = _step(net, x)
    net.set_compile("cells")
    out, grads = _step(net, x)
    torch.testing.assert_close(out, ref_out, rtol=rtol, atol=atol)
    assert grads.keys() == ref_grads.keys()
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=rtol, atol=atol, msg=name)
    assert float(grads["alpha_reduce"].abs().sum()) > 0


@pytest.mark.parametrize("execution", ["grouped", "reference"])
def test_compiled_cells_give_the_eager_forward_and_gradients(aot_eager, execution):
    net = _net(ops_dead=2)
    net.set_execution(execution)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    before = _graphs()
    _assert_same_step(net, x, rtol=1e-10, atol=1e-12)
    assert _graphs() - before == len(net.cells)  # it did compile, each cell in one graph


def test_one_compile_per_cell_and_architecture(aot_eager):
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    net = _net()
    net.set_compile("cells")
    start = _graphs()
    _step(net, x)
    assert _graphs() - start == 3  # one graph per cell: no graph break, no sharing
    for _ in range(2):  # more steps on new noise and new weights: no recompile
        _step(net, x)
        with torch.no_grad():
            torch.optim.SGD(net.parameters(), lr=0.1).step()
    net.set_compile("cells")  # a cached network handed out again keeps its graphs
    net.eval()
    with torch.no_grad():  # evaluation runs eager
        net(x)
    net.train()
    _step(net, x)
    assert _graphs() - start == 3
    # pruning: a new spec builds a new network, whose cells compile once each
    pruned = _net(ops_dead=3)
    pruned.set_compile("cells")
    _step(pruned, x)
    _step(pruned, x)
    assert _graphs() - start == 6
    _step(net, x)  # the old network's cells still have their own graphs
    assert _graphs() - start == 6


def test_config_switch_defaults_to_off_and_reaches_the_network(aot_eager):
    assert darts_unit_config("fedmetanas").kernels.compile == "off"
    assert from_dict(stored({"kernels": {"supernet": "grouped"}})).kernels.compile == "off"
    for value, on in (("cells", True), ("off", False)):
        cfg = from_dict({**_raw(), "kernels": {"compile": value}})
        algo = FedMetaNAS(cfg, DataInfo((1, 8, 8), 10))
        for net in (algo.build(algo.initial_spec()), algo.fresh(algo.initial_spec())):
            assert {c.compiled is not None for c in net.cells} == {on}
    with pytest.raises(ConfigError, match="kernels.compile"):
        from_dict({"kernels": {"compile": "network"}})
    with pytest.raises(ValueError, match="compile must be one of"):
        _net().set_compile("on")


def _raw() -> dict:
    return {
        "model": {"name": "darts", "darts": dict(TINY_DARTS)},
        "algorithm": {"name": "fedmetanas"},
    }


def test_three_fedmetanas_rounds_prune_and_derive_the_same_compiled(aot_eager):
    ref_specs, ref = fedmetanas_three_rounds({"supernet": "grouped"})
    before = _graphs()
    specs, gm = fedmetanas_three_rounds({"supernet": "grouped", "compile": "cells"})
    assert _graphs() > before  # the cells did run compiled
    assert not all(map(all, ArchSpec.of(ref_specs[0]).masks["normal"].ops))  # pruned
    assert specs == ref_specs  # the same masks after every round, the same genotype
    assert ArchSpec.of(specs[-1]).genotype is not None
    assert gm.state.keys() == ref.state.keys()
    for k in ref.state:
        torch.testing.assert_close(gm.state[k], ref.state[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.slow
def test_inductor_cells_agree_with_eager_to_float_rounding():
    # float32, the dtype runs use; inductor fuses and reorders the arithmetic. One cell:
    # each compiles its own graph with minutes of gcc, and one shows the generated code
    # agrees (the aot_eager tests above cover the per-cell plumbing on three).
    net = _net(ops_dead=2, dtype=torch.float32, layers=1)
    net.set_execution("grouped")
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    _assert_same_step(net, x, rtol=1e-4, atol=1e-5)
