"""The grouped supernet forward (``nas.grouped``, ``kernels.supernet``) against the op-by-op
reference: outputs and every gradient, pruned networks, both input modes, the depthwise
conv's own backward, the config switch, and a short FedMetaNAS run."""

from __future__ import annotations

import pytest
import torch
from helpers import client_data, darts_unit_config, fedmetanas_three_rounds
from torch import nn

from fednas_mpi.algorithms import DataInfo, RoundContext
from fednas_mpi.algorithms.fedmetanas import FedMetaNAS
from fednas_mpi.algorithms.fednas import FedNAS
from fednas_mpi.config import ConfigError, from_dict
from fednas_mpi.kernels import mix
from fednas_mpi.nas import PRIMITIVES, ArchSpec, CellSpace, SearchNetwork
from fednas_mpi.nas.depthwise import _Depthwise, depthwise_conv2d
from fednas_mpi.nas.network import SearchCell

CELLS = ("normal", "reduce")


def _masks(space: CellSpace, pruned: bool) -> dict:
    """Everything alive, or a mix of pruning: ops dead per edge in a pattern that leaves
    every kind alive somewhere (and edges whose every real op died), dead combinations."""
    ops, combos = space.full_masks()
    if pruned:
        k = len(space.primitives)
        ops = [[(e * 3 + q) % 4 != 0 or q == 3 for q in range(k)] for e in range(len(ops))]
        ops[2] = [name in ("none", "sep_conv_5x5") for name in space.primitives]
        ops[5] = [name == "none" for name in space.primitives]  # an edge with no module
        # node 1 keeps (0,1), node 2 (0,1), (0,3), (1,3): edges 1_2 and 2_2 are dead, and
        # with every op masked (a softmax over nothing: NaN weights no one may read)
        combos = [True, True, False, False, True, False, True, False, True, False]
        ops[4] = ops[7] = [False] * k
    return {c: {"ops": [list(r) for r in ops], "combos": list(combos)} for c in CELLS}


def _net(inputs: str, pruned: bool, nodes: int = 3, dtype=torch.float64) -> SearchNetwork:
    space = CellSpace(nodes, 2)
    torch.manual_seed(0)
    net = SearchNetwork(2, 5, 4, 3, space, 2, _masks(space, pruned), inputs).to(dtype)
    with torch.no_grad():
        for p in net.arch_parameters():
            p.normal_()
    return net


def _step(net: SearchNetwork, execution: str, x: torch.Tensor, training: bool):
    net.set_execution(execution)
    net.zero_grad(set_to_none=True)
    net.train(training)
    net.set_sampling(0.6, torch.Generator().manual_seed(4) if training else None)
    out = net(x)
    (out * torch.linspace(-1, 1, out.shape[1], dtype=out.dtype)).sum().backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    return out.detach(), grads


@pytest.mark.parametrize("inputs", ["combinations", "sum"])
@pytest.mark.parametrize("pruned", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_grouped_forward_and_every_gradient_equal_the_reference(inputs, pruned, training):
    net = _net(inputs, pruned)
    # 9x9: odd sizes through both reductions (9 -> 5 -> 3)
    x = torch.randn(3, 2, 9, 9, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref_out, ref_grads = _step(net, "reference", x, training)
    out, grads = _step(net, "grouped", x, training)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-12)
    assert grads.keys() == ref_grads.keys()
    names = {n for n, _ in net.named_parameters()}
    assert names == set(grads)  # every weight and every architecture parameter
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-9, atol=1e-11, msg=name)
    assert any(n.startswith("cells.1.") for n in grads)  # a reduction cell was covered
    if inputs == "combinations":
        assert float(ref_grads["beta_reduce"].abs().sum()) > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("pruned", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_grouped_equals_the_reference_on_the_gpu(pruned, training):
    """The same equality on a CUDA device (float64; BatchNorm in training mode, no Gumbel
    noise, so no generator crosses devices), and the GPU result equals the CPU's."""
    net = _net("combinations", pruned)
    x = torch.randn(3, 2, 9, 9, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    net.set_sampling(0.6, None)
    cpu_out, _ = _step_noiseless(net, "reference", x, training)
    net = net.cuda()
    ref_out, ref_grads = _step_noiseless(net, "reference", x.cuda(), training)
    out, grads = _step_noiseless(net, "grouped", x.cuda(), training)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ref_out.cpu(), cpu_out, rtol=1e-9, atol=1e-11)
    assert grads.keys() == ref_grads.keys() == {n for n, _ in net.named_parameters()}
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-9, atol=1e-11, msg=name)


def _step_noiseless(net: SearchNetwork, execution: str, x: torch.Tensor, training: bool):
    net.set_execution(execution)
    net.zero_grad(set_to_none=True)
    net.train(training)
    net.set_sampling(0.6, None)
    out = net(x)
    (out * torch.linspace(-1, 1, out.shape[1], dtype=out.dtype, device=out.device)).sum().backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    return out.detach(), grads


def test_float32_grouped_forward_agrees_to_rounding():
    net = _net("combinations", False, dtype=torch.float32)
    x = torch.randn(4, 2, 14, 14, generator=torch.Generator().manual_seed(2))
    ref_out, ref_grads = _step(net, "reference", x, True)
    out, grads = _step(net, "grouped", x, True)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-5)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-3, atol=1e-5, msg=name)


def _per_op_forward(cell, s0, s1, op_w, coefs):
    """The reference cell forward as it was before issue 27: one product per op weight."""
    states = [cell.pre0(s0), cell.pre1(s1)]
    for j in range(cell.space.nodes):
        outs, ws = [], []
        for i in range(cell.space.inputs_of(j)):
            ops = cell.edges[f"{j}_{i}"] if f"{j}_{i}" in cell.edges else None
            if ops is None:
                continue
            e = cell.space.edge(j, i)
            for k, name in enumerate(cell.space.primitives):
                if name in ops:
                    outs.append(ops[name](states[i]))
                    ws.append(coefs[j][i] * op_w[e, k])
        states.append(mix(outs, torch.stack(ws)))
    return torch.cat(states[2:], dim=1)


@pytest.mark.parametrize("backend", ["reference", "fused"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("inputs", ["combinations", "sum"])
@pytest.mark.parametrize("pruned", [False, True])
def test_reference_mixing_weights_in_one_product_equal_one_product_per_op(
    inputs, pruned, dtype, backend, monkeypatch, request
):
    """Issue 27: the reference forward forms its mixing weights in one gather and one
    product: the same products as one per op, so the forward and the weights' gradients
    are bit-equal; the logits' gradients sum the same terms in another order."""
    if backend == "fused":
        request.getfixturevalue("fused")
    net = _net(inputs, pruned, dtype=dtype)
    x = torch.randn(3, 2, 9, 9, generator=torch.Generator().manual_seed(1), dtype=dtype)
    out, grads = _step(net, "reference", x, True)
    monkeypatch.setattr(SearchCell, "forward", _per_op_forward)
    old_out, old_grads = _step(net, "reference", x, True)
    assert torch.equal(out, old_out)
    assert grads.keys() == old_grads.keys() == {n for n, _ in net.named_parameters()}
    arch = {n for n, p in net.named_parameters() if any(p is a for a in net.arch_parameters())}
    tol = {"rtol": 1e-12, "atol": 1e-18} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-9}
    for name in grads:
        if name in arch:
            torch.testing.assert_close(grads[name], old_grads[name], **tol, msg=name)
        else:
            assert torch.equal(grads[name], old_grads[name]), name


def test_personalised_mixing_hook_runs_grouped_too():
    net = _net("combinations", True)
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    alpha = torch.randn_like(net.alpha_normal)
    mixing = {c: net.mixing_weights(c, alpha=alpha, beta=net.beta_normal) for c in CELLS}
    outs = []
    for execution in ("reference", "grouped"):
        net.set_execution(execution)
        outs.append(net(x, lambda layer, kind: mixing[kind]))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-10, atol=1e-12)


def test_grouped_forward_runs_no_op_module_and_plans_only_live_ops():
    net = _net("combinations", True)
    ran = []
    for cell in net.cells:
        for ops in cell.edges.values():
            for mod in ops.values():
                mod.register_forward_hook(lambda m, i, o: ran.append(m))
    net.set_execution("grouped")
    net(torch.randn(2, 2, 8, 8, dtype=torch.float64))
    assert ran == []  # the op modules' parameters are read, their forwards not run
    for cell in net.cells:
        plan, _ = cell.grouped_plan(torch.device("cpu"))
        planned = [c.mod for L in plan for c in L.convs] + [m for L in plan for m, _, _ in L.frs]
        convs = [
            m
            for ops in cell.edges.values()
            for name, m in ops.items()
            if name.startswith(("sep", "dil")) or not isinstance(m, (nn.Identity, nn.Sequential))
        ]
        assert sorted(map(id, planned)) == sorted(map(id, convs))


def test_a_pruned_network_plans_fewer_convolutions():
    full, pruned = _net("combinations", False), _net("combinations", True)

    def planned(net):
        return sum(len(L.convs) for cell in net.cells for L in cell.grouped_plan("cpu")[0])

    assert 0 < planned(pruned) < planned(full)


def test_execution_modes():
    net = _net("sum", False)
    net.set_execution("auto")
    x = torch.zeros(1, 2, 4, 4)
    assert all(c.uses_grouped(x) for c in net.cells)  # auto: grouped on the CPU
    net.set_execution("reference")
    assert not any(c.uses_grouped(x) for c in net.cells)
    with pytest.raises(ValueError, match="execution must be one of"):
        net.set_execution("fast")


@pytest.mark.parametrize(
    "k,stride,pad,dil,size", [(3, 1, 1, 1, 7), (5, 2, 2, 1, 7), (3, 2, 2, 2, 8), (5, 1, 4, 2, 9)]
)
def test_depthwise_backward_is_autograds(k, stride, pad, dil, size):
    g = torch.Generator().manual_seed(k * size)
    x = torch.randn(2, 3, size, size, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(3, 1, k, k, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: _Depthwise.apply(x, w, stride, pad, dil), (x, w))
    y = depthwise_conv2d(x, w, stride, pad, dil)
    torch.testing.assert_close(y, nn.functional.conv2d(x, w, None, stride, pad, dil, 3))


# ------------------------------------------------------------------ config and methods


def test_config_switch_defaults_to_auto_and_reaches_the_network():
    cfg = darts_unit_config("fedmetanas")
    assert cfg.kernels.supernet == "auto"
    for value in ("grouped", "reference"):
        cfg = _cfg("fedmetanas", value)
        algo = FedMetaNAS(cfg, DataInfo((1, 8, 8), 10))
        net = algo.build(algo.initial_spec())
        assert {c.execution for c in net.cells} == {value}
        assert {c.execution for c in algo.fresh(algo.initial_spec()).cells} == {value}
    with pytest.raises(ConfigError, match="kernels.supernet"):
        from_dict({"kernels": {"supernet": "fast"}})


def _cfg(method: str, supernet: str, rounds: int = 3, **algorithm):
    from helpers import TINY_DARTS

    return from_dict(
        {
            "run": {"seed": 5, "rounds": rounds},
            "model": {"name": "darts", "darts": dict(TINY_DARTS)},
            "algorithm": {"name": method, "local_epochs": 1, "batch_size": 4, **algorithm},
            "partition": {"num_clients": 4},
            "federation": {"clients_per_round": 2},
            "kernels": {"supernet": supernet},
        }
    )


def _fedavg(results) -> dict:
    total = sum(r.weight for r in results)
    return {
        k: sum(r.state[k].double() * r.weight for r in results).div(total).to(v.dtype)
        for k, v in results[0].state.items()
    }


def test_three_fedmetanas_rounds_prune_and_derive_the_same_on_both_paths():
    ref_specs, ref = fedmetanas_three_rounds({"supernet": "reference"})
    specs, gm = fedmetanas_three_rounds({"supernet": "grouped"})
    first = ArchSpec.of(ref_specs[0]).masks["normal"].ops
    assert sum(map(sum, first)) < 9 * len(PRIMITIVES) - 9  # the first pruning removed ops
    assert specs == ref_specs  # same masks after every round, same genotype
    assert ArchSpec.of(specs[-1]).genotype is not None
    assert gm.state.keys() == ref.state.keys()
    for k in ref.state:
        torch.testing.assert_close(gm.state[k], ref.state[k], rtol=1e-4, atol=1e-5, msg=k)


def test_fednas_softmax_client_update_is_the_same_on_both_paths():
    out = {}
    for supernet in ("reference", "grouped"):
        algo = FedNAS(_cfg("fednas", supernet), DataInfo((1, 8, 8), 10))
        ctx = RoundContext(0, 3, 5, algo.stage(0))
        out[supernet] = algo.client_update(algo.init_global(), client_data(1), ctx, None)
    for k, v in out["reference"].state.items():
        torch.testing.assert_close(out["grouped"].state[k], v, rtol=1e-4, atol=1e-5, msg=k)
