"""FedDSNAS: the DSNAS estimator by hand on one edge, the single-path forward (only the
sampled ops run; unsampled ops get no grad and their momentum and weight decay do not
move them), the client update and the argmax child at the end."""

from __future__ import annotations

import pytest
import torch
from helpers import client_data, darts_unit_config

from fednas_mpi.algorithms import DataInfo, GlobalModel, RoundContext
from fednas_mpi.algorithms.common.subnet import PathModel
from fednas_mpi.algorithms.feddsnas import FedDSNAS, dsnas_step
from fednas_mpi.kernels import gumbel_mix, hard_index
from fednas_mpi.nas.derive import argmax_choices
from fednas_mpi.nas.mixing import gumbel_noise
from fednas_mpi.nas.single_path import path_forward, sample_choices

# ---------------------------------------------------------------- estimator by hand


def test_dsnas_gradient_on_one_edge_by_hand():
    # three ops on one edge; outputs o_k are fixed vectors, loss L = <c, Z>
    logits = torch.tensor([0.2, -0.1, 0.5], dtype=torch.float64, requires_grad=True)
    noise = torch.tensor([0.0, 2.0, 0.0], dtype=torch.float64)  # argmax(logits + noise) = 1
    outs = [
        torch.tensor([1.0, 2.0], dtype=torch.float64),
        torch.tensor([3.0, -1.0], dtype=torch.float64),
        torch.tensor([0.5, 0.5], dtype=torch.float64),
    ]
    assert hard_index(logits.detach(), noise) == 1
    only = [None, outs[1], None]  # only the sampled op is computed
    z = gumbel_mix(only, logits, 1.0, noise, None, hard=True)
    assert torch.equal(z, outs[1])  # forward: exactly the sampled op's output
    c = torch.tensor([0.5, 4.0], dtype=torch.float64)
    (z * c).sum().backward()
    # dL/dZ_s = <c, o_1> = 1.5 - 4 = -2.5; grad = -2.5 * (onehot(1) - softmax(logits))
    p = torch.softmax(logits.detach(), 0)
    want = -2.5 * (torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64) - p)
    torch.testing.assert_close(logits.grad, want, rtol=1e-12, atol=1e-12)


def test_dsnas_gradient_respects_the_mask():
    logits = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([True, False, True])
    noise = torch.zeros(3, dtype=torch.float64)
    o = torch.tensor([2.0], dtype=torch.float64)
    z = gumbel_mix([o, None, None], logits, 1.0, noise, mask, hard=True)
    z.sum().backward()
    p = torch.softmax(torch.tensor([1.0, -1.0], dtype=torch.float64), 0)
    want = 2.0 * torch.tensor([1.0 - p[0], 0.0, -p[1]], dtype=torch.float64)
    torch.testing.assert_close(logits.grad, want, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- tiny method


def _cfg(rounds: int = 3, **f):
    return darts_unit_config("feddsnas", rounds, feddsnas=f)


def _algo(**f) -> FedDSNAS:
    return FedDSNAS(_cfg(**f), DataInfo((1, 8, 8), 10))


def test_only_sampled_ops_get_gradients_and_move():
    algo = _algo(weight_decay=0.1, momentum=0.9)
    model = algo.init_global()
    net = algo._net(model)
    net.train()
    w_opt = torch.optim.SGD(net.weight_parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    a_opt = torch.optim.Adam(net.arch_parameters(), lr=0.01)
    d = client_data()
    g = torch.Generator().manual_seed(3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    # replay the step's noise to know which ops it sampled
    g_copy = torch.Generator().manual_seed(3)
    noise = {
        c: gumbel_noise(getattr(net, f"alpha_{c}").shape, g_copy) for c in ("normal", "reduce")
    }
    choices = sample_choices(net, noise)
    dsnas_step(net, d.train_x[:4], d.train_y[:4], w_opt, a_opt, g, 0.0)
    space = algo.space
    moved_ops, kept_ops = 0, 0
    for li, cell in enumerate(net.cells):
        kind = "reduce" if cell.reduction else "normal"
        for key, ops in cell.edges.items():
            j, i = map(int, key.split("_"))
            chosen = space.primitives[choices[kind][space.edge(j, i)]]
            for name, op in ops.items():
                params = list(op.named_parameters())
                for pname, p in params:
                    full = f"cells.{li}.edges.{key}.{name}.{pname}"
                    if name == chosen:
                        assert p.grad is not None
                    else:
                        # no grad, so neither momentum nor weight decay touches it
                        assert p.grad is None, full
                        assert torch.equal(p.detach(), before[full]), full
                        kept_ops += 1
                if name == chosen and params:
                    moved_ops += 1
    assert moved_ops > 0 and kept_ops > 0
    # all logits get the estimator's gradient (onehot - softmax is dense)
    assert net.alpha_normal.grad is not None and net.alpha_normal.grad.abs().sum() > 0
    # shared parts (stem, preprocessing, classifier) always train
    assert not torch.equal(net.stem[0].weight.detach(), before["stem.0.weight"])


def test_path_forward_runs_only_the_chosen_ops():
    algo = _algo()
    net = algo._net(algo.init_global())
    calls = []
    hooks = [
        op.register_forward_hook(lambda m, i, o, n=name: calls.append(n))
        for cell in net.cells
        for ops in cell.edges.values()
        for name, op in ops.items()
    ]
    try:
        choices = {
            c: [algo.space.primitives.index("skip_connect")] * algo.space.num_edges
            for c in ("normal", "reduce")
        }
        out = path_forward(net, torch.randn(2, 1, 8, 8), choices)
    finally:
        for h in hooks:
            h.remove()
    assert out.shape == (2, 10)
    assert set(calls) == {"skip_connect"} and len(calls) == 3 * algo.space.num_edges
    # an all-'none' child still runs (nodes are zero)
    zeros = {c: [0] * algo.space.num_edges for c in ("normal", "reduce")}
    assert path_forward(net, torch.randn(2, 1, 8, 8), zeros).shape == (2, 10)


def test_client_update_is_deterministic_and_changes_alpha():
    algo = _algo()
    model = algo.init_global()
    ctx = RoundContext(0, 3, 5, "search")
    r1 = algo.client_update(model, client_data(), ctx, None)
    r2 = algo.client_update(model, client_data(), ctx, None)
    for k in r1.state:
        assert torch.equal(r1.state[k], r2.state[k]), k
    assert not torch.equal(r1.state["alpha_normal"], model.state["alpha_normal"])
    assert r1.weight == 16.0 and set(r1.metrics) == {"train_loss", "local_acc"}


def test_last_round_keeps_the_argmax_child_with_its_weights():
    algo = _algo()
    model = algo.init_global()
    state = dict(model.state)
    alpha = torch.zeros_like(state["alpha_normal"])
    alpha[:, algo.space.primitives.index("sep_conv_3x3")] = 1.0
    alpha[0, :] = 0.0
    alpha[0, 0] = 5.0  # edge 0: 'none' wins -> dropped from the genotype
    state["alpha_normal"] = alpha
    metrics: dict[str, float] = {}
    mid = algo.server_step(
        GlobalModel(model.spec, state), state, metrics, RoundContext(1, 3, 5, "search")
    )
    assert mid.spec["genotype"] is None
    end = algo.server_step(mid, state, metrics, RoundContext(2, 3, 5, "search"))
    g = end.spec["genotype"]
    assert g is not None and "text" in g
    assert [x["op"] for x in g["normal"]["nodes"][0]["inputs"]] == ["sep_conv_3x3"]
    assert all(x["op"] == "sep_conv_3x3" for n in g["normal"]["nodes"] for x in n["inputs"])
    # the child inherits the searched weights (no retraining): a subset of the state
    assert set(end.state) < set(state)
    for k in end.state:
        assert torch.equal(end.state[k], state[k])
    assert metrics["ops_alive"] == 2 * algo.space.num_edges
    # the child's accuracy equals the supernet's argmax path
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    before = algo.evaluate(GlobalModel(model.spec, state), x, y)
    after = algo.evaluate(end, x, y)
    assert before == pytest.approx(after, abs=1e-6)
    net = algo._net(GlobalModel(model.spec, state))
    assert argmax_choices(net)["normal"][0] == 0
    assert PathModel(net, argmax_choices(net))(x).shape == (8, 10)


def test_server_mode_clients_take_sgd_steps_and_the_server_keeps_the_moments():
    from fednas_mpi.algorithms.common.training import minibatches
    from fednas_mpi.seeding import torch_rng

    algo = _algo(arch_update="server", client_arch_lr=0.3, arch_weight_decay=0.01)
    f = algo.conf
    model = algo.init_global()
    assert float(model.server_state["arch_opt.t"]) == 0.0
    data, ctx = client_data(), RoundContext(0, 3, 5, "search")
    res = algo.client_update(model, data, ctx, None)
    # the client's loop by hand with plain SGD (and its L2 term) on the alphas
    net = algo._net(model)
    net.train()
    w_opt = torch.optim.SGD(
        net.weight_parameters(), lr=algo.lr(0), momentum=f.momentum, weight_decay=f.weight_decay
    )
    a_opt = torch.optim.SGD(net.arch_parameters(), lr=0.3, weight_decay=0.01)
    g = torch_rng(5, 0, data.client_id, "feddsnas.batches")
    g_noise = torch_rng(5, 0, data.client_id, "feddsnas.gumbel")
    for idx in minibatches(data.num_train, algo.cfg.algorithm.batch_size, g):
        dsnas_step(net, data.train_x[idx], data.train_y[idx], w_opt, a_opt, g_noise, f.grad_clip)
    for k, v in net.state_dict().items():
        if k in res.state:
            torch.testing.assert_close(res.state[k], v, rtol=1e-5, atol=1e-6, msg=k)
    # the server: round 1 of bias-corrected Adam, lr * delta / (|delta| + tau)
    new = algo.server_step(model, res.state, {}, ctx)
    for k in ("alpha_normal", "alpha_reduce"):
        d = res.state[k].double() - model.state[k].double()
        want = model.state[k].double() + f.server_arch_lr * d / (d.abs() + f.server_arch_tau)
        torch.testing.assert_close(new.state[k].double(), want, rtol=1e-6, atol=1e-6)
    assert new.state["stem.0.weight"] is res.state["stem.0.weight"]
    assert float(new.server_state["arch_opt.t"]) == 1.0
    assert set(new.server_state) == set(model.server_state)
