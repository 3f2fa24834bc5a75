"""FedNAS (He et al. 2021): the MiLeNAS mixed-level gradient and the cosine schedule by hand,
DARTS's genotype derivation on hand-made alphas, the "sum" supernet, and FedNAS's client
update (search and retrain) and stage switch on a tiny search space."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import client_data, darts_unit_config
from torch import nn
from torch.nn import functional as F

from fednas_mpi.algorithms import ClientData, DataInfo, GlobalModel, RoundContext
from fednas_mpi.algorithms.common.schedules import cosine_lr
from fednas_mpi.algorithms.fednas import FedNAS, milenas_grads
from fednas_mpi.nas import PRIMITIVES, CellSpace, SearchNetwork, derive_darts, genotype_str
from fednas_mpi.seeding import torch_rng

CELLS = ("normal", "reduce")
ARCH = ("alpha_normal", "alpha_reduce")  # FedNAS sums node inputs: no betas

# ---------------------------------------------------------------- MiLeNAS gradient by hand


class Quad(nn.Module):
    """f(x) = w * x + a * x^2: ``w`` plays a weight, ``a`` an architecture parameter; the
    ``spare_*`` parameters take no part in the forward."""

    def __init__(self, w: float, a: float):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))
        self.a = nn.Parameter(torch.tensor(a, dtype=torch.float64))
        self.spare_w = nn.Parameter(torch.ones(2, dtype=torch.float64))
        self.spare_a = nn.Parameter(torch.ones(3, dtype=torch.float64))

    def forward(self, x):
        return self.w * x + self.a * x * x


def _mse(model, xs, ys):
    return (
        (model(torch.tensor(xs, dtype=torch.float64)) - torch.tensor(ys, dtype=torch.float64)) ** 2
    ).mean()


TRAIN = ([1.0, -2.0, 0.5], [2.0, -1.0, 0.3])
VAL = ([3.0, -0.5], [1.5, 0.2])


@pytest.mark.parametrize("lam", [0.0, 1.0, 0.5])
def test_milenas_grads_match_a_hand_computation(lam):
    w, a = 0.7, -0.4
    model = Quad(w, a)
    loss_t, loss_v = _mse(model, *TRAIN), _mse(model, *VAL)
    gw, ga = milenas_grads(loss_t, loss_v, [model.w, model.spare_w], [model.a, model.spare_a], lam)

    # L = mean (w x + a x^2 - y)^2:  dL/dw = mean 2 r x,  dL/da = mean 2 r x^2,  r = residual
    (x1, x2, x3), (y1, y2, y3) = TRAIN
    r1, r2, r3 = w * x1 + a * x1**2 - y1, w * x2 + a * x2**2 - y2, w * x3 + a * x3**2 - y3
    dt_dw = (2 * r1 * x1 + 2 * r2 * x2 + 2 * r3 * x3) / 3
    dt_da = (2 * r1 * x1**2 + 2 * r2 * x2**2 + 2 * r3 * x3**2) / 3
    (v1, v2), (z1, z2) = VAL
    q1, q2 = w * v1 + a * v1**2 - z1, w * v2 + a * v2**2 - z2
    dv_dw = (2 * q1 * v1 + 2 * q2 * v2) / 2
    dv_da = (2 * q1 * v1**2 + 2 * q2 * v2**2) / 2

    # weights: the training loss only; alpha: grad L_val + lam * grad L_train
    assert gw[0].item() == pytest.approx(dt_dw, rel=1e-12)
    assert gw[0].item() != pytest.approx(dt_dw + dv_dw, rel=1e-6)
    assert ga[0].item() == pytest.approx(dv_da + lam * dt_da, rel=1e-12)
    # parameters outside the graph get zeros of their own shape
    assert torch.equal(gw[1], torch.zeros(2, dtype=torch.float64))
    assert torch.equal(ga[1], torch.zeros(3, dtype=torch.float64))
    # gradients are returned, never accumulated into .grad
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------- cosine schedule


def test_cosine_lr_endpoints_midpoint_and_single_step():
    lr, lo = 0.1, 0.004
    assert cosine_lr(0, 9, lr, lo) == pytest.approx(lr, rel=1e-15)
    assert cosine_lr(8, 9, lr, lo) == pytest.approx(lo, rel=1e-12)
    assert cosine_lr(4, 9, lr, lo) == pytest.approx((lr + lo) / 2, rel=1e-12)
    assert cosine_lr(2, 9, lr, lo) == pytest.approx(
        lo + 0.5 * (lr - lo) * (1 + math.cos(math.pi / 4)), rel=1e-12
    )
    values = [cosine_lr(s, 9, lr, lo) for s in range(9)]
    assert all(a > b for a, b in zip(values, values[1:]))  # strictly decreasing
    # a stage of one round (or none) runs at the full rate
    assert cosine_lr(0, 1, lr, lo) == lr
    assert cosine_lr(0, 0, lr, lo) == lr
    # two steps: start and end
    assert [cosine_lr(s, 2, lr, lo) for s in (0, 1)] == pytest.approx([lr, lo], rel=1e-12)


# ---------------------------------------------------------------- DARTS derivation


def _softmax(row: list[float], keep: list[bool]) -> list[float]:
    z = sum(math.exp(v) for v, k in zip(row, keep) if k)
    return [math.exp(v) / z if k else 0.0 for v, k in zip(row, keep)]


def _op(name: str) -> int:
    return PRIMITIVES.index(name)


def test_derive_darts_on_hand_made_alphas():
    space = CellSpace(nodes=3, k=2)
    assert space.num_edges == 9 and len(PRIMITIVES) == 8 and PRIMITIVES[0] == "none"
    alpha = torch.zeros(9, 8)
    ops, combos = space.full_masks()
    # node 0 (edges 0, 1; both chosen since k = 2): `none` is the largest on edge 0
    alpha[0, _op("none")], alpha[0, _op("sep_conv_3x3")] = 5.0, 2.0
    alpha[1, _op("skip_connect")] = 1.0
    # node 1 (edges 2, 3, 4 = inputs 0, 1, 2): input 0's `none` dominates, its real ops are
    # tiny: counting `none` would pick input 0; excluding it picks inputs 1 and 2
    alpha[2, _op("none")], alpha[2, _op("max_pool_3x3")] = 10.0, 1.0
    alpha[3, _op("dil_conv_3x3")] = 1.0
    alpha[4, _op("avg_pool_3x3")] = 2.0
    # node 2 (edges 5..8 = inputs 0..3): input 0 strongest, but its largest logit belongs to a
    # masked op; inputs 1 and 3 tie exactly (lower index wins); input 2 weakest
    alpha[5, _op("sep_conv_5x5")], alpha[5, _op("dil_conv_5x5")] = 9.0, 3.0
    ops[5][_op("sep_conv_5x5")] = False
    ops[5][_op("max_pool_3x3")] = False
    alpha[6, _op("sep_conv_3x3")] = 1.5
    alpha[8, _op("sep_conv_3x3")] = 1.5
    alpha[7, _op("skip_connect")] = 0.5
    # edges 6 and 8 also share a masked op (with a winning logit only on edge 6): masked
    # logits take no part in the softmax, so the two edges still tie exactly
    alpha[6, _op("avg_pool_3x3")] = 4.0
    ops[6][_op("avg_pool_3x3")] = False
    ops[8][_op("avg_pool_3x3")] = False
    assert torch.equal(alpha[6].masked_fill(~torch.tensor(ops[6]), 0), alpha[8])

    genotype, new_ops, new_combos = derive_darts(space, alpha, ops)

    # strengths by hand: softmax over the edge's unmasked ops, strongest real op per edge
    rows = alpha.tolist()
    p = [_softmax(rows[e], ops[e]) for e in range(9)]
    strength = [max(p[e][1:]) for e in range(9)]
    assert strength[2] < strength[3] and strength[2] < strength[4]
    assert p[2][0] > max(p[3]) and p[2][0] > max(p[4])  # `none` would have won
    assert strength[6] == strength[8] and strength[5] > strength[6] > strength[7]

    want = [
        [(0, "sep_conv_3x3", 0), (1, "skip_connect", 1)],
        [(1, "dil_conv_3x3", 3), (2, "avg_pool_3x3", 4)],
        [(0, "dil_conv_5x5", 5), (1, "sep_conv_3x3", 6)],
    ]
    assert genotype["concat"] == [2, 3, 4]
    assert len(genotype["nodes"]) == 3
    for node, picks in zip(genotype["nodes"], want):
        got = [(x["input"], x["op"]) for x in node["inputs"]]
        assert got == [(i, op) for i, op, _ in picks]
        for x, (_, op, e) in zip(node["inputs"], picks):
            assert x["p_op"] == pytest.approx(round(p[e][_op(op)], 4), abs=1e-12)
    assert all(x["op"] != "none" for n in genotype["nodes"] for x in n["inputs"])

    # masks: exactly the chosen op on each chosen edge, nothing on the others
    chosen = {e: _op(op) for picks in want for _, op, e in picks}
    for e in range(9):
        row = new_ops[e]
        if e in chosen:
            assert sum(row) == 1 and row[chosen[e]], e
            assert ops[e][chosen[e]]  # never an op masked before
        else:
            assert not any(row), e
    # exactly the chosen combination per node
    for j, picks in enumerate(want):
        lo = space.combo_offsets[j]
        seg = new_combos[lo : lo + len(space.combos[j])]
        assert sum(seg) == 1
        assert space.combos[j][seg.index(True)] == tuple(i for i, _, _ in picks)
    assert space.live_edges(new_combos) == [{0, 1}, {1, 2}, {0, 1}]
    assert genotype_str({"normal": genotype}).startswith(
        "normal: s2 = sep_conv_3x3(s0) + skip_connect(s1); s3 = dil_conv_3x3(s1)"
    )


def test_derive_darts_ties_between_ops_and_edges_go_to_the_lower_index():
    space = CellSpace(nodes=2, k=2)
    alpha = torch.zeros(space.num_edges, 8)  # every real op of every edge ties
    genotype, new_ops, _ = derive_darts(space, alpha, space.full_masks()[0])
    # node 1 has three equally strong inputs: 0 and 1; each edge's first real op
    assert [[x["input"] for x in n["inputs"]] for n in genotype["nodes"]] == [[0, 1], [0, 1]]
    assert {x["op"] for n in genotype["nodes"] for x in n["inputs"]} == {PRIMITIVES[1]}
    assert all(
        x["p_op"] == pytest.approx(round(1 / 8, 4)) for n in genotype["nodes"] for x in n["inputs"]
    )
    assert sum(map(sum, new_ops)) == 4


# ---------------------------------------------------------------- DARTS "sum" supernet


def _net(space: CellSpace, masks: dict, inputs: str = "sum") -> SearchNetwork:
    torch.manual_seed(0)
    return SearchNetwork(1, 10, 4, 3, space, 1, masks, inputs)


def test_sum_network_adds_its_live_edges_with_coefficient_one():
    space = CellSpace(nodes=3, k=2)
    ops, combos = space.full_masks()
    net = _net(space, {c: {"ops": ops, "combos": combos} for c in CELLS})
    with torch.no_grad():
        for p in net.arch_parameters():
            p.normal_(0.0, 1.0)
    for cell in CELLS:
        op_w, coefs = net.mixing_weights(cell)
        torch.testing.assert_close(op_w, torch.softmax(getattr(net, f"alpha_{cell}"), -1))
        # every input of every node counts once, whatever beta is
        assert [c.tolist() for c in coefs] == [[1.0] * 2, [1.0] * 3, [1.0] * 4]
    # the "combinations" mode weighs node 1's three inputs by beta: not all ones
    comb = _net(space, {c: {"ops": ops, "combos": combos} for c in CELLS}, "combinations")
    missing, _ = comb.load_state_dict(net.state_dict(), strict=False)
    assert sorted(missing) == ["beta_normal", "beta_reduce"]  # "sum" has no betas at all
    with torch.no_grad():
        comb.beta_normal.normal_(0.0, 1.0)
    assert not torch.equal(comb.mixing_weights("normal")[1][1], torch.ones(3))

    # a pruned combination mask: live inputs 1, dead 0 (and no modules for dead edges)
    alpha = torch.randn(space.num_edges, 8, generator=torch.Generator().manual_seed(3))
    _, new_ops, new_combos = derive_darts(space, alpha, ops)
    masks = {c: {"ops": new_ops, "combos": new_combos} for c in CELLS}
    pruned = _net(space, masks)
    live = space.live_edges(new_combos)
    _, coefs = pruned.mixing_weights("normal")
    for j, c in enumerate(coefs):
        assert c.tolist() == [1.0 if i in live[j] else 0.0 for i in range(j + 2)]
    assert set(pruned.cells[0].edges) == {f"{j}_{i}" for j in range(3) for i in live[j]}


def test_sum_cell_output_is_the_plain_sum_of_the_mixed_edges():
    space = CellSpace(
        nodes=2, k=2, primitives=("none", "skip_connect", "avg_pool_3x3", "sep_conv_3x3")
    )
    ops, combos = space.full_masks()
    ops[3][2] = False  # one op of node 1's edge from input 1 pruned
    net = _net(space, {c: {"ops": ops, "combos": combos} for c in CELLS})
    with torch.no_grad():
        for p in net.arch_parameters():
            p.normal_(0.0, 1.0)
    net.eval()
    cell = net.cells[0]
    assert not cell.reduction
    s = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    op_w, coefs = net.mixing_weights("normal")
    with torch.no_grad():
        out = cell(s, s, op_w, coefs)
        states = [cell.pre0(s), cell.pre1(s)]
        for j in range(2):
            node = torch.zeros_like(states[0])
            for i in range(j + 2):
                e = space.edge(j, i)
                for k, name in enumerate(space.primitives):
                    if name == "none" or not ops[e][k]:
                        continue
                    node = node + op_w[e, k] * cell.edges[f"{j}_{i}"][name](states[i])
            states.append(node)
    torch.testing.assert_close(out, torch.cat(states[2:], 1), rtol=1e-5, atol=1e-6)
    assert op_w[3, 2] == 0.0


def test_search_network_rejects_an_unknown_input_mode():
    space = CellSpace(nodes=2, k=2)
    ops, combos = space.full_masks()
    with pytest.raises(ValueError, match="inputs"):
        _net(space, {c: {"ops": ops, "combos": combos} for c in CELLS}, "mean")


# ---------------------------------------------------------------- FedNAS


def _cfg(rounds: int = 4, search_rounds: int = 2, **fn):
    return darts_unit_config("fednas", rounds, fednas={"search_rounds": search_rounds, **fn})


def _algo(cfg) -> FedNAS:
    return FedNAS(cfg, DataInfo((1, 8, 8), 10))


def _ctx(algo: FedNAS, round_: int) -> RoundContext:
    cfg = algo.cfg
    return RoundContext(round_, cfg.run.rounds, cfg.run.seed, algo.stage(round_))


def test_stages_and_learning_rate_per_stage():
    algo = _algo(_cfg(rounds=4, search_rounds=2))
    assert algo.search_rounds == 2
    assert [algo.stage(r) for r in range(4)] == ["search", "search", "retrain", "retrain"]
    f = algo.cfg.algorithm.fednas
    assert [algo.lr(r) for r in range(4)] == pytest.approx(
        [f.lr, f.lr_min, f.lr, f.lr_min], rel=1e-12
    )
    # default search_rounds 0: half of run.rounds
    assert _algo(_cfg(rounds=4, search_rounds=0)).search_rounds == 2
    five = _algo(_cfg(rounds=5, search_rounds=0))
    assert [five.stage(r) for r in range(5)] == ["search"] * 2 + ["retrain"] * 3

    seven = _algo(_cfg(rounds=7, search_rounds=3, lr=0.1, lr_min=0.002))
    assert [seven.stage(r) for r in range(7)] == ["search"] * 3 + ["retrain"] * 4
    want = [
        0.1,
        (0.1 + 0.002) / 2,
        0.002,  # search: 3 rounds of cosine
        0.1,
        0.002 + 0.75 * 0.098,
        0.002 + 0.25 * 0.098,
        0.002,
    ]  # restart for retraining
    assert [seven.lr(r) for r in range(7)] == pytest.approx(want, rel=1e-12)


def test_init_global_is_a_softmax_supernet_without_genotype():
    algo = _algo(_cfg())
    gm = algo.init_global()
    assert gm.spec["inputs"] == "sum" and gm.spec["genotype"] is None
    space = algo.space
    ops, combos = space.full_masks()
    for c in CELLS:
        assert gm.spec["masks"][c] == {"ops": ops, "combos": combos}
        assert gm.state[f"alpha_{c}"].shape == (space.num_edges, len(PRIMITIVES))
        assert gm.state[f"alpha_{c}"].abs().max() < 1e-2  # DARTS's 1e-3 * N(0, 1)
    assert gm.server_state == {}
    again = _algo(_cfg()).init_global()
    assert list(again.state) == list(gm.state)
    assert all(torch.equal(again.state[k], gm.state[k]) for k in gm.state)
    assert algo.client_metrics == ("train_loss", "val_loss", "local_acc")


def _clip(grads: list[torch.Tensor], max_norm: float) -> list[torch.Tensor]:
    norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
    scale = max_norm / (norm + 1e-6)
    return [g * scale for g in grads] if max_norm > 0 and scale < 1.0 else list(grads)


def _reference_search(
    algo: FedNAS,
    gm: GlobalModel,
    data: ClientData,
    ctx: RoundContext,
    arch_sgd_lr: float | None = None,
):
    """One client's MiLeNAS search written out: train/val halves of the client's own train
    split, SGD with momentum and weight decay on clipped weight gradients, Adam with L2
    weight decay on grad L_val + lambda * grad L_train for the alphas (``arch_sgd_lr``:
    plain SGD of that step size with the same L2 term instead)."""
    cfg = algo.cfg
    f, d, b = cfg.algorithm.fednas, cfg.model.darts, cfg.algorithm.batch_size
    space = CellSpace(d.nodes, d.input_k, tuple(d.primitives))
    net = SearchNetwork(
        1, 10, d.init_channels, d.layers, space, d.stem_multiplier, gm.spec["masks"], "sum"
    )
    net.load_state_dict({k: v.clone() for k, v in gm.state.items()})
    net.train()
    weights, arch = net.weight_parameters(), net.arch_parameters()
    lr = cosine_lr(ctx.round, algo.search_rounds, f.lr, f.lr_min)
    b1, b2 = f.arch_betas
    buf = [torch.zeros_like(p) for p in weights]
    m = [torch.zeros_like(p) for p in arch]
    v = [torch.zeros_like(p) for p in arch]
    g = torch_rng(ctx.seed, ctx.round, data.client_id, "fednas.batches")
    n = data.num_train
    perm = torch.randperm(n, generator=g)
    tr, va = perm[: n // 2], perm[n // 2 :]
    t_losses, v_losses, t = [], [], 0
    for _ in range(cfg.algorithm.local_epochs):
        vb = torch.randperm(len(va), generator=g).split(b)
        for i, bt in enumerate(torch.randperm(len(tr), generator=g).split(b)):
            it, iv = tr[bt], va[vb[i % len(vb)]]
            lt = F.cross_entropy(net(data.train_x[it]), data.train_y[it])
            lv = F.cross_entropy(net(data.train_x[iv]), data.train_y[iv])
            gw = torch.autograd.grad(lt, weights, retain_graph=True)
            ga_t = torch.autograd.grad(lt, arch, retain_graph=True, allow_unused=True)
            ga_v = torch.autograd.grad(lv, arch, allow_unused=True)
            gw = _clip(list(gw), f.grad_clip)
            t += 1
            with torch.no_grad():
                for k, (p, gr) in enumerate(zip(weights, gw)):
                    buf[k] = (
                        f.momentum * buf[k] + gr + f.weight_decay * p
                        if t > 1
                        else gr + f.weight_decay * p
                    )
                    p -= lr * buf[k]
                for k, p in enumerate(arch):
                    gv = torch.zeros_like(p) if ga_v[k] is None else ga_v[k]
                    gt = torch.zeros_like(p) if ga_t[k] is None else ga_t[k]
                    gr = gv + f.milenas_lambda * gt + f.arch_weight_decay * p
                    if arch_sgd_lr is not None:
                        p -= arch_sgd_lr * gr
                        continue
                    m[k] = b1 * m[k] + (1 - b1) * gr
                    v[k] = b2 * v[k] + (1 - b2) * gr * gr
                    m_hat, v_hat = m[k] / (1 - b1**t), v[k] / (1 - b2**t)
                    p -= f.arch_lr * m_hat / (v_hat.sqrt() + 1e-8)
            t_losses.append(lt.item())
            v_losses.append(lv.item())
    return net.state_dict(), sum(t_losses) / len(t_losses), sum(v_losses) / len(v_losses)


def test_search_client_update_matches_a_written_out_milenas_reference():
    algo = _algo(
        _cfg(grad_clip=0.5, milenas_lambda=0.5, weight_decay=0.01, arch_weight_decay=0.002)
    )
    algo.cfg.algorithm.local_epochs = 2
    gm = algo.init_global()
    before = {k: v.clone() for k, v in gm.state.items()}
    data, ctx = client_data(n=14), _ctx(algo, 1)
    assert ctx.stage == "search"
    res = algo.client_update(gm, data, ctx, None)
    assert set(res.state) == set(gm.state)
    assert res.weight == 14.0 and res.client_state is None
    assert set(res.metrics) == {"train_loss", "val_loss", "local_acc"}
    assert 0.0 <= res.metrics["local_acc"] <= 1.0
    for k in before:  # the global model is left alone
        assert torch.equal(gm.state[k], before[k]), k
    for name in ("alpha_normal", "alpha_reduce"):
        assert not torch.equal(res.state[name], before[name]), name
    assert not torch.equal(res.state["classifier.weight"], before["classifier.weight"])
    ref, t_mean, v_mean = _reference_search(algo, gm, data, ctx)
    assert set(ref) == set(res.state)
    for k, v in ref.items():
        torch.testing.assert_close(res.state[k], v, rtol=1e-4, atol=1e-5, msg=k)
    assert res.metrics["train_loss"] == pytest.approx(t_mean, rel=1e-5)
    assert res.metrics["val_loss"] == pytest.approx(v_mean, rel=1e-5)


def test_server_mode_search_takes_plain_sgd_steps_on_the_alphas():
    algo = _algo(
        _cfg(arch_update="server", client_arch_lr=0.4, grad_clip=0.5, arch_weight_decay=0.002)
    )
    gm = algo.init_global()
    assert sorted(gm.server_state) == sorted(
        ["arch_opt.t"] + [f"arch_opt.{mv}.{k}" for k in ARCH for mv in ("m", "v")]
    )
    data, ctx = client_data(n=14), _ctx(algo, 1)
    res = algo.client_update(gm, data, ctx, None)
    ref, _, _ = _reference_search(algo, gm, data, ctx, arch_sgd_lr=0.4)
    for k, v in ref.items():
        torch.testing.assert_close(res.state[k], v, rtol=1e-4, atol=1e-5, msg=k)
    adam, _, _ = _reference_search(algo, gm, data, ctx)
    for k in ARCH:
        assert not torch.allclose(res.state[k], adam[k], rtol=0, atol=1e-4), k


def test_server_mode_server_step_moves_the_alphas_and_derives_from_the_moved_ones():
    algo = _algo(_cfg(arch_update="server", server_arch_optimizer="yogi", server_arch_lr=0.5))
    f = algo.cfg.algorithm.fednas
    gm = algo.init_global()
    averaged = _hand_alphas(algo, gm)
    metrics: dict[str, float] = {}
    mid = algo.server_step(gm, averaged, metrics, _ctx(algo, 0))
    assert mid.spec == gm.spec and float(mid.server_state["arch_opt.t"]) == 1.0
    for k in mid.state:
        if k not in ARCH:
            assert mid.state[k] is averaged[k], k
    for k in ARCH:  # round 1, bias-corrected: lr * delta / (|delta| + tau)
        d = averaged[k].double() - gm.state[k].double()
        want = gm.state[k].double() + f.server_arch_lr * d / (d.abs() + f.server_arch_tau)
        torch.testing.assert_close(mid.state[k].double(), want, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(mid.server_state[f"arch_opt.v.{k}"], 0.01 * d * d)
    assert metrics["server_arch_step"] > 0
    # the last search round: the genotype is derived from the server-stepped alphas
    again = {k: v.clone() for k, v in mid.state.items()}
    again["alpha_normal"] = again["alpha_normal"] - 2.0 * (
        mid.state["alpha_normal"] - gm.state["alpha_normal"]
    )
    new = algo.server_step(mid, again, {}, _ctx(algo, 1))
    assert float(new.server_state["arch_opt.t"]) == 2.0
    m, v = mid.server_state, new.server_state
    d2 = again["alpha_normal"].double() - mid.state["alpha_normal"].double()
    b1, b2 = f.server_arch_betas
    m2 = b1 * m["arch_opt.m.alpha_normal"] + (1 - b1) * d2
    v1 = m["arch_opt.v.alpha_normal"]
    v2 = v1 - (1 - b2) * d2 * d2 * torch.sign(v1 - d2 * d2)  # Yogi
    torch.testing.assert_close(v["arch_opt.m.alpha_normal"], m2)
    torch.testing.assert_close(v["arch_opt.v.alpha_normal"], v2)
    stepped = mid.state["alpha_normal"].double() + f.server_arch_lr * (m2 / (1 - b1**2)) / (
        (v2 / (1 - b2**2)).sqrt() + f.server_arch_tau
    )
    genotype, _, _ = derive_darts(algo.space, stepped.float(), gm.spec["masks"]["normal"]["ops"])
    assert new.spec["genotype"]["normal"] == genotype
    from_averaged, _, _ = derive_darts(
        algo.space, again["alpha_normal"], gm.spec["masks"]["normal"]["ops"]
    )
    assert from_averaged != genotype
    # retraining keeps the moments (fixed keys) and steps nothing
    kept = algo.server_step(new, new.state, {}, _ctx(algo, 2))
    assert kept.state is new.state and kept.server_state is new.server_state


def test_search_is_deterministic_softmax_and_never_reads_the_eval_split():
    algo = _algo(_cfg())
    gm = algo.init_global()
    ctx = _ctx(algo, 0)
    a = algo.client_update(gm, client_data(), ctx, None)
    b = algo.client_update(gm, client_data(), ctx, None)
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)
    assert a.metrics == b.metrics
    # no Gumbel noise: the training-mode mixing is softmax(alpha) exactly
    net = algo.build(gm.spec)
    assert net.generator is None and net.temperature == 1.0
    net.load_state_dict(a.state)
    net.train()
    for c in CELLS:
        op_w, coefs = net.mixing_weights(c, noisy=True)
        assert torch.equal(op_w, torch.softmax(a.state[f"alpha_{c}"], -1))
        assert all(torch.equal(x, torch.ones_like(x)) for x in coefs)
    # the validation half comes from the client's train split: poisoned or missing eval
    # data leave the search unchanged (it only feeds local_acc)
    poisoned = algo.client_update(gm, client_data(eval_fill=float("nan")), ctx, None)
    empty = algo.client_update(gm, client_data(n_eval=0), ctx, None)
    for res in (poisoned, empty):
        for k in a.state:
            assert torch.isfinite(res.state[k]).all(), k
            assert torch.equal(res.state[k], a.state[k]), k
        assert res.metrics["train_loss"] == a.metrics["train_loss"]
        assert res.metrics["val_loss"] == a.metrics["val_loss"]
    assert math.isnan(empty.metrics["local_acc"])
    # another round draws other batches
    other = algo.client_update(gm, client_data(), _ctx(algo, 1), None)
    assert not torch.equal(other.state["alpha_normal"], a.state["alpha_normal"])


def _hand_alphas(algo: FedNAS, gm: GlobalModel) -> dict:
    averaged = {k: v.clone() for k, v in gm.state.items()}
    g = torch.Generator().manual_seed(11)
    for c in CELLS:
        averaged[f"alpha_{c}"] = torch.randn(averaged[f"alpha_{c}"].shape, generator=g)
    return averaged


def test_server_step_derives_the_genotype_and_reinitialises_at_the_last_search_round():
    algo = _algo(_cfg())
    gm = algo.init_global()
    averaged = _hand_alphas(algo, gm)

    # an ordinary search round keeps the averaged model as it is
    metrics: dict[str, float] = {}
    same = algo.server_step(gm, averaged, metrics, _ctx(algo, 0))
    assert same.spec == gm.spec and same.state is averaged
    assert metrics["lr"] == algo.lr(0) and metrics["ops_alive"] == 2 * 5 * 8
    assert "combos_alive" not in metrics and "arch_entropy_inputs" not in metrics

    metrics = {}
    new = algo.server_step(gm, averaged, metrics, _ctx(algo, 1))
    space, spec = algo.space, new.spec
    assert spec["inputs"] == "sum" and gm.spec["genotype"] is None
    for c in CELLS:
        genotype, ops, combos = derive_darts(
            space, averaged[f"alpha_{c}"], gm.spec["masks"][c]["ops"]
        )
        assert spec["genotype"][c] == genotype
        assert spec["masks"][c] == {"ops": ops, "combos": combos}
        assert all(len(n["inputs"]) == 2 for n in genotype["nodes"])
    assert spec["genotype"]["text"] == genotype_str(spec["genotype"])
    assert metrics["lr"] == algo.lr(1)
    assert metrics["ops_alive"] == 2 * 2 * 2  # 2 cell types x 2 nodes x 2 inputs
    assert metrics["arch_entropy_ops"] == pytest.approx(0.0, abs=1e-12)

    # the discrete network: per node exactly the genotype's two (input, op) pairs
    def edge_keys(state):
        return [k for k in state if ".edges." in k]

    assert 0 < len(edge_keys(new.state)) < len(edge_keys(averaged))
    assert set(new.state) <= set(averaged)
    net = algo.build(spec)
    net.load_state_dict(new.state)
    for cell in net.cells:
        kind = "reduce" if cell.reduction else "normal"
        want = {
            f"{j}_{x['input']}": [x["op"]]
            for j, n in enumerate(spec["genotype"][kind]["nodes"])
            for x in n["inputs"]
        }
        assert {e: list(ops) for e, ops in cell.edges.items()} == want
    for c in CELLS:
        op_w, coefs = net.mixing_weights(c, noisy=True)
        for j, n in enumerate(spec["genotype"][c]["nodes"]):
            chosen = {x["input"] for x in n["inputs"]}
            assert coefs[j].tolist() == [1.0 if i in chosen else 0.0 for i in range(j + 2)]
            for x in n["inputs"]:
                row = op_w[space.edge(j, x["input"])]
                assert row[PRIMITIVES.index(x["op"])] == 1.0 and row.sum() == 1.0

    # retraining starts from a fresh (not the supernet's) initialisation ...
    convs = [k for k in new.state if k not in ARCH and new.state[k].dim() >= 2]
    assert convs and "classifier.weight" in convs and "stem.0.weight" in convs
    for k in convs:
        assert new.state[k].shape == averaged[k].shape
        assert not torch.equal(new.state[k], averaged[k]), k
    # ... that is seeded: another instance with the same config gives the same network
    algo2 = _algo(_cfg())
    again = algo2.server_step(algo2.init_global(), _hand_alphas(algo2, gm), {}, _ctx(algo2, 1))
    assert again.spec == new.spec
    assert list(again.state) == list(new.state)
    assert all(torch.equal(again.state[k], new.state[k]) for k in new.state)

    # retrain rounds keep the derived architecture
    metrics = {}
    kept = algo.server_step(new, new.state, metrics, _ctx(algo, 2))
    assert kept.spec == new.spec and kept.state is new.state
    assert metrics["lr"] == algo.cfg.algorithm.fednas.lr  # the schedule restarts


def test_retrain_client_update_is_plain_sgd_on_the_discrete_network():
    algo = _algo(_cfg(grad_clip=1e-3))  # clipping applies to the search only
    gm = algo.init_global()
    new = algo.server_step(gm, _hand_alphas(algo, gm), {}, _ctx(algo, 1))
    data, ctx = client_data(cid=1, n=12), _ctx(algo, 2)
    assert ctx.stage == "retrain"
    res = algo.client_update(new, data, ctx, None)
    assert set(res.state) == set(new.state) and res.weight == 12.0
    for name in ARCH:  # architecture parameters are untouched while retraining
        assert torch.equal(res.state[name], new.state[name]), name
    assert not torch.equal(res.state["classifier.weight"], new.state["classifier.weight"])
    assert math.isnan(res.metrics["val_loss"]) and math.isfinite(res.metrics["train_loss"])

    # reference: SGD (momentum, weight decay, no clipping) over seeded minibatches
    f, d, b = algo.cfg.algorithm.fednas, algo.cfg.model.darts, algo.cfg.algorithm.batch_size
    space = algo.space
    net = SearchNetwork(
        1, 10, d.init_channels, d.layers, space, d.stem_multiplier, new.spec["masks"], "sum"
    )
    net.load_state_dict({k: v.clone() for k, v in new.state.items()})
    net.train()
    opt = torch.optim.SGD(
        net.weight_parameters(), lr=f.lr, momentum=f.momentum, weight_decay=f.weight_decay
    )
    g = torch_rng(ctx.seed, ctx.round, data.client_id, "fednas.batches")
    total = 0.0
    for idx in torch.randperm(12, generator=g).split(b):
        opt.zero_grad()
        loss = F.cross_entropy(net(data.train_x[idx]), data.train_y[idx])
        loss.backward()
        # the discrete network's mixing weights are exactly 1: alphas get no gradient
        for p in net.arch_parameters():
            assert p.grad is None or not p.grad.any()
        opt.step()
        total += loss.item() * len(idx)
    for k, v in net.state_dict().items():
        torch.testing.assert_close(res.state[k], v, rtol=1e-4, atol=1e-5, msg=k)
    assert res.metrics["train_loss"] == pytest.approx(total / 12, rel=1e-5)


def test_evaluate_uses_the_deterministic_softmax_network():
    algo = _algo(_cfg())
    gm = algo.init_global()
    data = client_data(n=8)
    loss1, acc1 = algo.evaluate(gm, data.train_x, data.train_y)
    loss2, acc2 = algo.evaluate(gm, data.train_x, data.train_y)
    assert (loss1, acc1) == (loss2, acc2) and math.isfinite(loss1) and 0.0 <= acc1 <= 1.0
    net = SearchNetwork(1, 10, 4, 3, algo.space, 1, gm.spec["masks"], "sum")
    net.load_state_dict(gm.state)
    net.eval()
    with torch.no_grad():
        want = F.cross_entropy(net(data.train_x), data.train_y).item()
    assert loss1 == pytest.approx(want, rel=1e-5)
