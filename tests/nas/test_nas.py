"""The NAS search space against hand-written references: primitives, Gumbel-softmax mixing
(eq. 1), input combinations (eq. 8), the search network, soft pruning, the derived genotype
and the temperature schedule."""

from __future__ import annotations

import itertools
import math
import typing

import pytest
import torch
from torch import nn

from fednas_mpi.config import Primitive
from fednas_mpi.nas import (
    OPS,
    PRIMITIVES,
    CellSpace,
    SearchNetwork,
    finalize,
    genotype_str,
    gumbel_noise,
    logit_signal,
    mixing,
    prune,
    relaxed_weights,
    sample_genotype,
    temperature_at,
    weighted_sum,
)
from fednas_mpi.nas.operations import DilConv, FactorizedReduce, Pool, SepConv

CELLS = ("normal", "reduce")
REAL_OPS = [name for name in PRIMITIVES if name != "none"]


def _full_masks(space: CellSpace) -> dict:
    ops, combos = space.full_masks()
    return {c: {"ops": [list(r) for r in ops], "combos": list(combos)} for c in CELLS}


def _net(
    space: CellSpace,
    masks: dict | None = None,
    layers: int = 3,
    seed: int = 0,
    random_arch: bool = True,
) -> SearchNetwork:
    torch.manual_seed(seed)
    net = SearchNetwork(3, 5, 4, layers, space, 1, masks or _full_masks(space))
    if random_arch:
        with torch.no_grad():
            for p in net.arch_parameters():
                p.normal_()
    return net


def _x(seed: int = 1) -> torch.Tensor:
    return torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def _edge_index(j: int, i: int) -> int:
    # node t reads t + 2 states: offset of node j = sum_{t<j} (t + 2) = j (j + 3) / 2
    return j * (j + 3) // 2 + i


def _softmax(values: list[float]) -> list[float]:
    m = max(values)
    ex = [math.exp(v - m) for v in values]
    return [v / sum(ex) for v in ex]


# ---------------------------------------------------------------- primitives


def test_primitives_are_the_darts_eight_of_the_config():
    assert PRIMITIVES == typing.get_args(Primitive)
    assert len(PRIMITIVES) == 8 and tuple(OPS) == PRIMITIVES
    assert OPS["none"] is None
    assert all(OPS[name] is not None for name in REAL_OPS)


@pytest.mark.parametrize("name", REAL_OPS)
@pytest.mark.parametrize("hw", [(8, 8), (7, 7), (7, 8)])
def test_every_op_keeps_or_halves_the_shape(name, hw):
    h, w = hw
    x = torch.randn(4, 6, h, w)
    for stride in (1, 2):
        op = OPS[name](6, stride)
        out = op(x)
        want = (4, 6, h, w) if stride == 1 else (4, 6, math.ceil(h / 2), math.ceil(w / 2))
        assert tuple(out.shape) == want, (name, stride)
        assert torch.isfinite(out).all()
        # search-space normalisation carries no affine parameters (DARTS)
        for m in op.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert not m.affine


def test_skip_connect_is_identity_at_stride_one_and_factorized_reduce_at_two():
    x = torch.randn(4, 6, 7, 7)
    assert torch.equal(OPS["skip_connect"](6, 1)(x), x)
    assert isinstance(OPS["skip_connect"](6, 2), FactorizedReduce)


@pytest.mark.parametrize("h", [8, 7])
def test_factorized_reduce_shape_and_odd_channels(h):
    fr = FactorizedReduce(3, 6)
    assert tuple(fr(torch.randn(4, 3, h, h)).shape) == (4, 6, math.ceil(h / 2), math.ceil(h / 2))
    with pytest.raises(ValueError):
        FactorizedReduce(4, 5)


# ---------------------------------------------------------------- Gumbel noise


def test_gumbel_noise_is_finite_and_has_the_gumbel_moments():
    g = torch.Generator().manual_seed(0)
    s = gumbel_noise((1_000_000,), g, torch.float32)
    assert s.dtype == torch.float32 and s.shape == (1_000_000,)
    assert torch.isfinite(s).all()
    s64 = s.double()
    euler_gamma = 0.5772156649015329
    assert abs(float(s64.mean()) - euler_gamma) < 0.01
    assert abs(float(s64.var()) - math.pi**2 / 6) < 0.02


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gumbel_noise_clamps_exact_zero_and_one(monkeypatch, dtype):
    def fake_rand(shape, generator=None, dtype=torch.float32, device="cpu"):
        out = torch.zeros(shape, dtype=dtype, device=device)
        out[1::2] = 1.0
        return out

    monkeypatch.setattr(mixing.torch, "rand", fake_rand)
    s = gumbel_noise((6,), None, dtype)
    assert s.dtype == dtype and torch.isfinite(s).all()
    info = torch.finfo(dtype)
    lo = -math.log(-math.log(info.tiny))  # U = 0 clamps to the smallest normal
    hi = -math.log(-math.log(1.0 - info.eps))  # U = 1 clamps to 1 - eps
    torch.testing.assert_close(
        s[0::2].double(), torch.full((3,), lo, dtype=torch.float64), rtol=1e-5, atol=0
    )
    torch.testing.assert_close(
        s[1::2].double(), torch.full((3,), hi, dtype=torch.float64), rtol=1e-5, atol=0
    )
    assert float(s[0]) < 0 < float(s[1])


def test_gumbel_noise_is_a_function_of_the_generator_seed():
    a = gumbel_noise((5, 8), torch.Generator().manual_seed(3))
    b = gumbel_noise((5, 8), torch.Generator().manual_seed(3))
    c = gumbel_noise((5, 8), torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # the same as the plain formula on the generator's uniform draws
    u = torch.rand((5, 8), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, -torch.log(-torch.log(u)))


# ---------------------------------------------------------------- eq. 1 weights


def test_relaxed_weights_is_the_tempered_softmax_of_logits_plus_noise():
    logits = [0.3, -1.2, 2.0, 0.0, 0.7]
    noise = [0.5, 1.5, -0.4, 0.9, 0.1]
    for temp in (1.0, 0.5, 0.03):
        want = _softmax([(lg + n) / temp for lg, n in zip(logits, noise)])
        got = relaxed_weights(
            torch.tensor(logits, dtype=torch.float64),
            temp,
            torch.tensor(noise, dtype=torch.float64),
        )
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
        # no noise: the deterministic softmax(logits / T)
        want0 = _softmax([lg / temp for lg in logits])
        got0 = relaxed_weights(torch.tensor(logits, dtype=torch.float64), temp)
        torch.testing.assert_close(got0, torch.tensor(want0, dtype=torch.float64))
        assert torch.equal(got0, relaxed_weights(torch.tensor(logits, dtype=torch.float64), temp))


def test_relaxed_weights_masked_entries_are_exactly_zero():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 8, generator=g, dtype=torch.float64)
    noise = gumbel_noise((6, 8), g, torch.float64)
    mask = torch.rand(6, 8, generator=g) < 0.6
    mask[:, 3] = True  # every row keeps something
    w = relaxed_weights(logits, 0.7, noise, mask)
    assert torch.equal(w[~mask], torch.zeros(int((~mask).sum()), dtype=torch.float64))
    torch.testing.assert_close(w.sum(-1), torch.ones(6, dtype=torch.float64))
    for r in range(6):
        keep = [k for k in range(8) if mask[r, k]]
        want = _softmax([(float(logits[r, k]) + float(noise[r, k])) / 0.7 for k in keep])
        torch.testing.assert_close(w[r, keep], torch.tensor(want, dtype=torch.float64))


@pytest.mark.parametrize("temp", [0.5, 0.01])
def test_gumbel_max_argmax_frequencies_match_softmax_of_logits(temp):
    n = 20_000
    logits = torch.tensor([1.0, 0.0, -1.0, 0.5, -2.0])
    noise = gumbel_noise((n, 5), torch.Generator().manual_seed(11))
    w = relaxed_weights(logits.expand(n, 5), temp, noise)
    assert torch.isfinite(w).all()
    freq = torch.bincount(w.argmax(-1), minlength=5).double() / n
    torch.testing.assert_close(freq, torch.softmax(logits.double(), -1), atol=0.015, rtol=0)
    if temp == 0.01:
        # near the floor the relaxed sample is almost always (close to) one-hot
        assert float(w.max(-1).values.mean()) > 0.97


def test_floor_temperature_with_large_logits_is_finite_and_one_hot():
    logits = torch.tensor([40.0, -35.0, 10.0, 39.0, 0.0]) * 10
    noise = gumbel_noise((1000, 5), torch.Generator().manual_seed(2))
    w = relaxed_weights(logits.expand(1000, 5), 0.01, noise)
    assert torch.isfinite(w).all()
    assert torch.equal(w.argmax(-1), torch.zeros(1000, dtype=torch.long))
    assert float(w.max(-1).values.min()) == 1.0
    torch.testing.assert_close(w.sum(-1), torch.ones(1000))


# ---------------------------------------------------------------- weighted sum


def test_weighted_sum_skips_none_and_equals_the_explicit_sum():
    g = torch.Generator().manual_seed(0)
    outs = [
        None,
        torch.randn(2, 3, generator=g),
        None,
        torch.randn(2, 3, generator=g),
        torch.randn(2, 3, generator=g),
    ]
    w = torch.tensor([float("nan"), 0.2, float("nan"), -1.5, 3.0])  # None entries never read
    got = weighted_sum(outs, w)
    torch.testing.assert_close(got, 0.2 * outs[1] - 1.5 * outs[3] + 3.0 * outs[4])
    with pytest.raises(ValueError):
        weighted_sum([None, None], torch.ones(2))


# ---------------------------------------------------------------- cell space


def test_cell_space_edges_and_combinations():
    space = CellSpace(nodes=4, k=2)
    assert space.num_edges == 14
    assert [space.inputs_of(j) for j in range(4)] == [2, 3, 4, 5]
    seen = [space.edge(j, i) for j in range(4) for i in range(j + 2)]
    assert seen == list(range(14))
    for j in range(4):
        for i in range(j + 2):
            assert space.edge(j, i) == _edge_index(j, i)
    assert [len(c) for c in space.combos] == [1, 3, 6, 10]
    assert space.num_combos == 20
    assert space.combos[1] == [(0, 1), (0, 2), (1, 2)]
    assert space.combos[2] == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    for j in range(4):
        assert space.combos[j] == sorted(itertools.combinations(range(j + 2), 2))
    assert space.combo_offsets == [0, 1, 4, 10]
    ops, combos = space.full_masks()
    assert len(ops) == 14 and all(len(r) == 8 and all(r) for r in ops)
    assert combos == [True] * 20


def test_k_larger_than_the_inputs_is_clamped():
    space = CellSpace(nodes=3, k=3)
    assert [space.k_of(j) for j in range(3)] == [2, 3, 3]
    assert space.combos == [[(0, 1)], [(0, 1, 2)], [(0, 1, 2), (0, 1, 3), (0, 2, 3), (1, 2, 3)]]
    one = CellSpace(nodes=2, k=1)
    assert one.combos == [[(0,), (1,)], [(0,), (1,), (2,)]]


def test_incidence_matrix():
    space = CellSpace(nodes=3, k=2)
    inc = space.incidence(1)
    assert torch.equal(inc, torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]))
    inc2 = space.incidence(2)
    assert inc2.shape == (4, 6)
    for c, combo in enumerate(space.combos[2]):
        assert [i for i in range(4) if inc2[i, c] == 1] == list(combo)
    assert torch.equal(inc2.sum(0), torch.full((6,), 2.0))


@pytest.mark.parametrize("noisy", [False, True])
def test_input_coefficients_implement_the_combination_sum(noisy):
    space = CellSpace(nodes=4, k=2)
    g = torch.Generator().manual_seed(5)
    beta = torch.randn(space.num_combos, generator=g, dtype=torch.float64)
    noise = gumbel_noise(beta.shape, g, torch.float64) if noisy else None
    cmask = torch.ones(space.num_combos, dtype=torch.bool)
    cmask[[2, 5, 6, 12, 18]] = False  # node 1: combo 1; node 2: combos 1, 2; node 3: 2, 8
    temp = 0.6
    coefs = space.input_coefficients(beta, temp, noise, cmask)
    assert len(coefs) == 4
    for j, combos in enumerate(space.combos):
        lo = space.combo_offsets[j]
        live = [c for c in range(len(combos)) if cmask[lo + c]]
        z_live = _softmax(
            [(float(beta[lo + c]) + (float(noise[lo + c]) if noisy else 0.0)) / temp for c in live]
        )
        z = [0.0] * len(combos)
        for c, v in zip(live, z_live):
            z[c] = v
        edges = torch.randn(j + 2, 7, generator=g, dtype=torch.float64)
        left = sum(z[c] * sum(edges[i] for i in combo) for c, combo in enumerate(combos))
        right = sum(coefs[j][i] * edges[i] for i in range(j + 2))
        torch.testing.assert_close(right, left)
        # the coefficient of an input is the total weight of the combinations holding it
        want = [sum(z[c] for c, combo in enumerate(combos) if i in combo) for i in range(j + 2)]
        torch.testing.assert_close(coefs[j], torch.tensor(want, dtype=torch.float64))
        assert abs(float(coefs[j].sum()) - space.k_of(j)) < 1e-9


def test_masked_combinations_get_zero_weight_and_live_edges():
    space = CellSpace(nodes=3, k=2)
    # node 0: (0,1); node 1: (0,1) (0,2) (1,2); node 2: (0,1) (0,2) (0,3) (1,2) (1,3) (2,3)
    cmask = [True, True, False, False, False, False, True, False, True, False]
    coefs = space.input_coefficients(
        torch.randn(10, dtype=torch.float64), 1.0, None, torch.tensor(cmask)
    )
    torch.testing.assert_close(coefs[1], torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64))
    assert float(coefs[2][2]) == 0.0  # input 2 of node 2 is in no surviving combination
    assert abs(float(coefs[2][3]) - 1.0) < 1e-12  # in both survivors (0,3) and (1,3)
    assert space.live_edges(cmask) == [{0, 1}, {0, 1}, {0, 1, 3}]
    assert space.live_edges([True] * 10) == [{0, 1}, {0, 1, 2}, {0, 1, 2, 3}]


# ---------------------------------------------------------------- network


def test_search_network_parameters_state_and_layout():
    space = CellSpace(nodes=2, k=2)
    net = _net(space, layers=3)
    out = net(_x())
    assert tuple(out.shape) == (4, 5)
    arch = net.arch_parameters()
    assert arch[0] is net.alpha_normal and arch[1] is net.alpha_reduce
    assert arch[2] is net.beta_normal and arch[3] is net.beta_reduce
    assert net.alpha_normal.shape == (5, 8) and net.beta_reduce.shape == (4,)
    named = dict(net.named_parameters())
    assert {"alpha_normal", "alpha_reduce", "beta_normal", "beta_reduce"} <= set(named)
    state = net.state_dict()
    for name in ("alpha_normal", "alpha_reduce", "beta_normal", "beta_reduce"):
        assert torch.equal(state[name], getattr(net, name))
    assert not any("mask" in k for k in state)  # masks belong to the spec, not the state
    ids_w = {id(p) for p in net.weight_parameters()}
    ids_a = {id(p) for p in arch}
    assert not ids_w & ids_a
    assert ids_w | ids_a == {id(p) for p in net.parameters()}
    assert len(ids_w) == len(list(net.parameters())) - 4


@pytest.mark.parametrize(
    "layers,reductions,channels",
    [
        (3, [1, 2], [4, 8, 16]),
        (5, [1, 3], [4, 8, 8, 16, 16]),
        (6, [2, 4], [4, 4, 8, 8, 16, 16]),
    ],
)
def test_reduction_cells_sit_at_a_third_and_two_thirds(layers, reductions, channels):
    space = CellSpace(nodes=2, k=2)
    net = _net(space, layers=layers, random_arch=False)
    assert [i for i, c in enumerate(net.cells) if c.reduction] == reductions
    assert [c.pre1[1].out_channels for c in net.cells] == channels
    shapes = []
    hooks = [
        c.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape))) for c in net.cells
    ]
    net(_x())
    for h in hooks:
        h.remove()
    side = 8
    for layer, c in enumerate(channels):
        if layer in reductions:
            side = math.ceil(side / 2)
        assert shapes[layer] == (4, 2 * c, side, side)  # nodes * C channels
    # the cell after a reduction reads its older input through a FactorizedReduce
    for layer in range(1, layers):
        assert isinstance(net.cells[layer].pre0, FactorizedReduce) == (layer - 1 in reductions)
    assert net.classifier.in_features == 2 * channels[-1]


def test_forward_determinism_and_gumbel_sampling():
    space = CellSpace(nodes=2, k=2)
    net = _net(space, layers=3)
    x = _x()
    net.eval()
    net.set_sampling(0.5, torch.Generator().manual_seed(0))
    a = net(x)
    net.set_sampling(0.5, torch.Generator().manual_seed(1))
    assert torch.equal(a, net(x))  # eval mode: no noise whatever the generator
    net.train()
    net.set_sampling(0.5, None)
    b1, b2 = net(x), net(x)
    assert torch.equal(b1, b2)  # no generator: deterministic mixing
    net.set_sampling(0.5, torch.Generator().manual_seed(7))
    c1 = net(x)
    net.set_sampling(0.5, torch.Generator().manual_seed(7))
    c2 = net(x)
    net.set_sampling(0.5, torch.Generator().manual_seed(8))
    c3 = net(x)
    assert torch.equal(c1, c2)
    assert not torch.allclose(c1, c3)
    assert not torch.allclose(c1, b1)


def test_noisy_mixing_weights_are_eq_1_with_the_generators_draws():
    space = CellSpace(nodes=2, k=2)
    net = _net(space, layers=3)
    net.set_sampling(0.4, torch.Generator().manual_seed(3))
    op_w, coefs = net.mixing_weights("normal", noisy=True)
    g = torch.Generator().manual_seed(3)
    g_ops = gumbel_noise(net.alpha_normal.shape, g)
    g_beta = gumbel_noise(net.beta_normal.shape, g)
    want = torch.softmax((net.alpha_normal.detach() + g_ops) / 0.4, -1)
    torch.testing.assert_close(op_w.detach(), want)
    z1 = torch.softmax((net.beta_normal.detach()[1:] + g_beta[1:]) / 0.4, -1)
    torch.testing.assert_close(coefs[0].detach(), torch.ones(2))
    torch.testing.assert_close(
        coefs[1].detach(), torch.stack([z1[0] + z1[1], z1[0] + z1[2], z1[1] + z1[2]])
    )


def test_gradients_reach_alphas_and_betas():
    space = CellSpace(nodes=2, k=2)
    net = _net(space, layers=3)
    net.train()
    net.set_sampling(0.7, torch.Generator().manual_seed(0))
    loss = nn.functional.cross_entropy(net(_x()), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for p in net.arch_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
        assert float(p.grad.abs().sum()) > 0
    # the single combination of node 0 has no alternative: its logit gets no gradient
    assert float(net.beta_normal.grad[0]) == 0.0


def _pruned_masks(space: CellSpace) -> dict:
    keep = {"skip_connect", "sep_conv_3x3"}
    ops = [[name in keep for name in PRIMITIVES] for _ in range(space.num_edges)]
    # node 1 keeps only (0,1): edge 1_2 is dead; node 2 keeps (0,3) and (1,3): 2_2 is dead
    combos = [True, True, False, False, False, False, True, False, True, False]
    return {c: {"ops": [list(r) for r in ops], "combos": list(combos)} for c in CELLS}


def test_pruned_ops_and_dead_edges_have_no_module_and_never_run(monkeypatch):
    space = CellSpace(nodes=3, k=2)
    net = _net(space, _pruned_masks(space), layers=3)
    live = {"0_0", "0_1", "1_0", "1_1", "2_0", "2_1", "2_3"}
    for cell in net.cells:
        assert set(cell.edges.keys()) == live
        for name, ops in cell.edges.items():
            assert set(ops.keys()) == {"skip_connect", "sep_conv_3x3"}
            stride2 = cell.reduction and int(name.split("_")[1]) < 2
            assert isinstance(ops["skip_connect"], FactorizedReduce if stride2 else nn.Identity)
    state = net.state_dict()
    for bad in ("max_pool", "avg_pool", "sep_conv_5x5", "dil_conv", "edges.1_2", "edges.2_2"):
        assert not any(bad in k for k in state), bad
    assert net.alpha_normal.shape == (9, 8)  # the logits keep the full layout

    calls: dict[str, int] = {}

    def counting(cls, key):
        base = nn.Sequential.forward

        def forward(self, x):
            calls[key] = calls.get(key, 0) + 1
            if key == "sep":
                assert self[1].kernel_size == (3, 3)
            return base(self, x)

        monkeypatch.setattr(cls, "forward", forward)

    counting(Pool, "pool")
    counting(DilConv, "dil")
    counting(SepConv, "sep")
    ran: list[str] = []
    for cell in net.cells:
        for edge, ops in cell.edges.items():
            for name, mod in ops.items():
                mod.register_forward_hook(lambda m, i, o, tag=f"{edge}/{name}": ran.append(tag))
    net.train()
    net.set_sampling(1.0, torch.Generator().manual_seed(0))
    net.set_execution("reference")  # op module by op module (test_grouped: the grouped plan)
    out = net(_x())
    assert torch.isfinite(out).all()
    assert calls.get("pool", 0) == 0 and calls.get("dil", 0) == 0
    assert calls["sep"] == 3 * len(live)  # one 3x3 separable conv per live edge and cell
    assert sorted(set(ran)) == sorted(
        f"{e}/{o}" for e in live for o in ("skip_connect", "sep_conv_3x3")
    )
    assert len(ran) == 3 * 2 * len(live)


def _hand_forward(net: SearchNetwork, masks: dict, x: torch.Tensor) -> torch.Tensor:
    """The discrete cell by hand: each node sums its chosen ops on its chosen inputs."""
    space = net.space
    s0 = s1 = net.stem(x)
    for cell in net.cells:
        kind = "reduce" if cell.reduction else "normal"
        ops, combos = masks[kind]["ops"], masks[kind]["combos"]
        states = [cell.pre0(s0), cell.pre1(s1)]
        lo = 0
        for j in range(space.nodes):
            node_combos = list(itertools.combinations(range(j + 2), 2))
            (chosen,) = [c for c in range(len(node_combos)) if combos[lo + c]]
            lo += len(node_combos)
            total = None
            for i in node_combos[chosen]:
                (k,) = [k for k in range(8) if ops[_edge_index(j, i)][k]]
                y = cell.edges[f"{j}_{i}"][PRIMITIVES[k]](states[i])
                total = y if total is None else total + y
            states.append(total)
        s0, s1 = s1, torch.cat(states[2:], dim=1)
    return net.classifier(net.pool(s1).flatten(1))


def test_discrete_network_is_the_hand_built_cell_and_inherits_the_supernet():
    space = CellSpace(nodes=3, k=2)
    sup = _net(space, layers=3, seed=3)
    x = _x(2)
    sup.train()
    sup.set_sampling(1.0, torch.Generator().manual_seed(0))
    with torch.no_grad():
        for _ in range(3):  # (BN statistics, if tracked, move away from their init)
            sup(x)
    full_ops, full_combos = space.full_masks()
    masks = {}
    for c in CELLS:
        _, ops, combos = finalize(
            space, getattr(sup, f"alpha_{c}"), getattr(sup, f"beta_{c}"), full_ops, full_combos
        )
        masks[c] = {"ops": ops, "combos": combos}
    disc = _net(space, masks, layers=3, seed=9)
    # the mixing weights of the survivors are exactly one, everything else zero
    for c in CELLS:
        op_w, coefs = disc.mixing_weights(c)
        op_w, coefs = op_w.detach(), [z.detach() for z in coefs]
        live = space.live_edges(masks[c]["combos"])
        for j in range(space.nodes):
            assert len(live[j]) == 2
            for i in range(j + 2):
                assert float(coefs[j][i]) == (1.0 if i in live[j] else 0.0)
            for i in live[j]:
                e = space.edge(j, i)
                row = op_w[e].tolist()
                assert row == [1.0 if masks[c]["ops"][e][k] else 0.0 for k in range(8)]
    # inherit the supernet's weights, unchanged
    sup_state = sup.state_dict()
    keys = set(disc.state_dict())
    assert keys < set(sup_state)
    disc.load_state_dict({k: sup_state[k] for k in keys})
    disc.eval()
    with torch.no_grad():
        out = disc(x)
        torch.testing.assert_close(out, _hand_forward(disc, masks, x), rtol=1e-6, atol=1e-6)
        # the supernet with the same selection computes the same function (its dead edges
        # keep a full op row: their combination coefficient is 0)
        for c in CELLS:
            live = space.live_edges(masks[c]["combos"])
            ops = [list(r) for r in masks[c]["ops"]]
            for j in range(space.nodes):
                for i in range(j + 2):
                    if i not in live[j]:
                        ops[space.edge(j, i)] = [True] * 8
            getattr(sup, f"op_mask_{c}").copy_(torch.tensor(ops))
            getattr(sup, f"combo_mask_{c}").copy_(torch.tensor(masks[c]["combos"]))
        sup.eval()
        torch.testing.assert_close(sup(x), out, rtol=1e-6, atol=1e-6)
        # train mode: Gumbel noise cannot change a one-hot selection
        disc.train()
        disc.set_sampling(0.3, torch.Generator().manual_seed(5))
        torch.testing.assert_close(disc(x), _hand_forward(disc, masks, x), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- pruning


def _log(p: list[float]) -> list[float]:
    return [math.log(v) for v in p]


def _prune_setup():
    space = CellSpace(nodes=2, k=2)  # 5 edges; combos: node 0 (0,1); node 1 three
    alpha = torch.tensor(
        [
            _log([0.30, 0.25, 0.20, 0.10, 0.06, 0.04, 0.03, 0.02]),  # none kept, tail pruned
            _log([0.86, 0.03, 0.02, 0.04, 0.01, 0.01, 0.02, 0.01]),  # all real ops below 0.05
            _log([0.01, 0.50, 0.30, 0.10, 0.03, 0.02, 0.02, 0.02]),  # none itself pruned
            [0.0] * 8,  # uniform 0.125: everything stays
            _log([0.02, 0.90, 0.02, 0.02, 0.01, 0.01, 0.01, 0.01]),  # max_pool already pruned
        ]
    )
    beta = torch.tensor(_log([0.5]) + _log([0.70, 0.26, 0.04]))
    ops, combos = space.full_masks()
    ops[4][1] = False
    return space, alpha, beta, ops, combos


def test_prune_by_logit_gap_hand_made():
    space, alpha, beta, ops, combos = _prune_setup()
    ops_before = [list(r) for r in ops]
    # gap log(4): drop an op whose probability is below a quarter of its edge's best live op
    r = prune(space, alpha, beta, ops, combos, math.log(4.0), math.log(4.0))
    T, F = True, False
    assert r.ops == [
        [T, T, T, T, F, F, F, F],  # 0.06 < 0.30 / 4 = 0.075 goes, 0.10 stays
        [T, F, F, T, F, F, F, F],  # everything is far below none; the best real op stays
        [F, T, T, F, F, F, F, F],  # 0.10 < 0.50 / 4: gone; none (0.01) gone too
        [T] * 8,  # uniform: no gap
        # max_pool (0.90) is already pruned and takes no part: the survivors lie within
        # log 2 of their best (0.02), so nothing more goes
        [T, F, T, T, T, T, T, T],
    ]
    assert r.combos == [T, T, T, F]  # 0.26 > 0.70 / 4 stays, 0.04 goes
    assert ops == ops_before  # the caller's masks are not modified
    # the removals, each with the gap that condemned it, all beyond the threshold
    assert {(e, k) for e, k, _ in r.removed_ops} == {
        (0, 4),
        (0, 5),
        (0, 6),
        (0, 7),
        (1, 1),
        (1, 2),
        (1, 4),
        (1, 5),
        (1, 6),
        (1, 7),
        (2, 0),
        (2, 3),
        (2, 4),
        (2, 5),
        (2, 6),
        (2, 7),
    }
    gaps = {(e, k): g for e, k, g in r.removed_ops}
    assert gaps[(0, 4)] == pytest.approx(math.log(0.30 / 0.06))
    assert gaps[(2, 0)] == pytest.approx(math.log(0.50 / 0.01))
    assert all(g > math.log(4.0) for _, _, g in r.removed_ops)
    assert r.removed_combos == [(1, 2, pytest.approx(math.log(0.70 / 0.04)))]
    # a zero gap prunes nothing
    none = prune(space, alpha, beta, ops, combos, 0.0, 0.0)
    assert none.ops == ops and none.combos == combos and not none.removed_ops


def test_prune_tiny_gap_keeps_only_the_best_and_the_strongest_real_op():
    space, alpha, beta, ops, combos = _prune_setup()
    r = prune(space, alpha, beta, ops, combos, 1e-6, 1e-6)
    assert r.combos == [True, True, False, False]
    T, F = True, False
    assert r.ops == [
        [T, T, F, F, F, F, F, F],  # none is the best; max_pool the strongest real op
        [T, F, F, T, F, F, F, F],  # none the best; skip the strongest real op
        [F, T, F, F, F, F, F, F],  # max_pool is both
        [T] * 8,  # exact ties: no op lies below another
        [T, F, T, T, F, F, F, F],  # the three tied at the top stay
    ]


def test_prune_ignores_the_temperature_and_shifts_of_the_logits():
    """The rule reads the learned logits only: the same alphas prune the same ops whatever
    the schedule, and adding a constant to an edge's logits changes nothing."""
    space = CellSpace(nodes=2, k=2)
    g = torch.Generator().manual_seed(0)
    alpha = torch.randn(5, 8, generator=g) * 2
    beta = torch.randn(4, generator=g) * 2
    ops, combos = space.full_masks()
    r = prune(space, alpha, beta, ops, combos, 1.5, 1.0)
    shifted = prune(space, alpha + torch.arange(5.0)[:, None], beta + 3.0, ops, combos, 1.5, 1.0)
    assert (r.ops, r.combos) == (shifted.ops, shifted.combos)
    for e in range(5):  # by hand
        top = max(float(v) for v in alpha[e])
        best_real = max(range(1, 8), key=lambda k, e=e: float(alpha[e, k]))
        assert r.ops[e] == [top - float(alpha[e, k]) <= 1.5 or k == best_real for k in range(8)]
    top = max(float(v) for v in beta[1:])
    assert r.combos[1:] == [top - float(b) <= 1.0 for b in beta[1:]]


def test_prune_keeps_pruned_entries_pruned_and_measures_gaps_over_the_survivors():
    space = CellSpace(nodes=2, k=2)
    alpha = torch.zeros(5, 8)
    beta = torch.tensor(_log([1.0]) + _log([0.2, 0.7, 0.1]))
    ops, _ = space.full_masks()
    # node 1's strongest combination (0.7) is already pruned: over the survivors the
    # best is 0.2, and 0.1 lies log 2 below it
    r = prune(space, alpha, beta, ops, [True, True, False, True], 0.0, 0.5)
    assert r.combos == [True, True, False, False]
    assert r.removed_combos == [(1, 2, pytest.approx(math.log(2.0)))]
    assert r.ops == ops


def test_logit_signal_by_hand_and_agreement_is_the_gumbel_max_probability():
    logits = torch.tensor([[2.0, 0.0, -1.0, 5.0], [0.0, 0.0, 0.0, 0.0], [1.0, 3.0, 9.0, 0.0]])
    mask = torch.tensor([[True, True, True, False], [True] * 4, [True, True, False, False]])
    s = logit_signal(logits, mask)
    assert s["range"] == pytest.approx((3.0 + 0.0 + 2.0) / 3)
    assert s["gap"] == pytest.approx((2.0 + 0.0 + 2.0) / 3)
    p0 = math.exp(2) / (math.exp(2) + 1 + math.exp(-1))
    p2 = math.exp(3) / (math.exp(3) + math.e)
    assert s["agreement"] == pytest.approx((p0 + 0.25 + p2) / 3)
    # Monte Carlo: the argmax of Gumbel-perturbed logits at a low temperature matches
    # the deterministic argmax that often (independent reference)
    g = torch.Generator().manual_seed(3)
    hits = []
    for row, m in zip(logits, mask):
        z = row.masked_fill(~m, float("-inf"))
        noise = gumbel_noise((20000, 4), g, torch.float64)
        sample = relaxed_weights(z.double(), 0.05, noise).argmax(-1)
        hits.append(float((sample == z.argmax()).double().mean()))
    assert sum(hits) / 3 == pytest.approx(s["agreement"], abs=0.01)


def test_sample_genotype_is_valid_seeded_and_covers_every_op():
    space = CellSpace(nodes=3, k=2)
    seen_ops, seen_combos = set(), set()
    for seed in range(60):
        genotype, ops, combos = sample_genotype(space, torch.Generator().manual_seed(seed))
        again = sample_genotype(space, torch.Generator().manual_seed(seed))
        assert again == (genotype, ops, combos)
        assert len(genotype["nodes"]) == 3
        for j, node in enumerate(genotype["nodes"]):
            seg = combos[space.combo_offsets[j] : space.combo_offsets[j] + len(space.combos[j])]
            assert sum(seg) == 1  # one combination per node
            inputs = tuple(x["input"] for x in node["inputs"])
            assert inputs == space.combos[j][seg.index(True)]
            seen_combos.add((j, inputs))
            for x in node["inputs"]:
                row = ops[space.edge(j, x["input"])]
                assert sum(row) == 1 and row[space.primitives.index(x["op"])]
                assert x["op"] != "none"
                seen_ops.add(x["op"])
        live = {
            space.edge(j, x["input"]) for j, n in enumerate(genotype["nodes"]) for x in n["inputs"]
        }
        assert all(not any(ops[e]) for e in range(space.num_edges) if e not in live)
        # it builds the discrete network: one module per chosen edge
        net = SearchNetwork(
            1,
            3,
            4,
            1,
            space,
            1,
            {"normal": {"ops": ops, "combos": combos}, "reduce": {"ops": ops, "combos": combos}},
        )
        assert sum(len(m) for m in net.cells[0].edges.values()) == 6
    assert seen_ops == set(space.primitives) - {"none"}
    assert seen_combos == {(j, c) for j in range(3) for c in space.combos[j]}
    a = sample_genotype(space, torch.Generator().manual_seed(0))[0]
    b = sample_genotype(space, torch.Generator().manual_seed(1))[0]
    assert a != b


# ---------------------------------------------------------------- finalize


def test_finalize_picks_the_strongest_surviving_combination_and_real_op():
    space = CellSpace(nodes=2, k=2)
    alpha = torch.zeros(5, 8)
    alpha[:, 0] = 5.0  # none is the largest everywhere and must never be chosen
    alpha[0, 4] = 2.0  # edge (0,0): sep_conv_3x3
    alpha[1, 6] = 1.0  # edge (0,1): dil_conv_3x3
    alpha[2, 2], alpha[2, 7] = 3.0, 2.0  # edge (1,0): avg_pool pruned below -> dil_conv_5x5
    alpha[4, 3] = 0.5  # edge (1,2): skip_connect
    alpha[3, 5] = 4.0  # edge (1,1): unused, the chosen combination is (0, 2)
    beta = torch.tensor([0.0, 1.0, 3.0, 2.0])
    beta[1] = 9.0  # combination (0,1) of node 1 is strongest but already pruned
    ops, _ = space.full_masks()
    ops[2][2] = False
    genotype, new_ops, new_combos = finalize(space, alpha, beta, ops, [True, False, True, True])
    assert new_combos == [True, False, True, False]
    chosen = {0: "sep_conv_3x3", 1: "dil_conv_3x3", 2: "dil_conv_5x5", 4: "skip_connect"}
    for e in range(5):
        want = [PRIMITIVES[k] == chosen.get(e) for k in range(8)]
        assert new_ops[e] == want, e
    assert [[(x["op"], x["input"]) for x in n["inputs"]] for n in genotype["nodes"]] == [
        [("sep_conv_3x3", 0), ("dil_conv_3x3", 1)],
        [("dil_conv_5x5", 0), ("skip_connect", 2)],
    ]
    assert genotype["concat"] == [2, 3]
    # exactly one op per chosen edge and one combination per node
    for j, combos in enumerate(space.combos):
        lo = space.combo_offsets[j]
        assert sum(new_combos[lo : lo + len(combos)]) == 1
    assert sorted(sum(r) for r in new_ops) == [0, 1, 1, 1, 1]
    text = genotype_str({"normal": genotype, "reduce": genotype})
    assert text.splitlines() == [
        "normal: s2 = sep_conv_3x3(s0) + dil_conv_3x3(s1); s3 = dil_conv_5x5(s0) + "
        "skip_connect(s2)",
        "reduce: s2 = sep_conv_3x3(s0) + dil_conv_3x3(s1); s3 = dil_conv_5x5(s0) + "
        "skip_connect(s2)",
    ]


def test_finalized_masks_build_a_network_with_one_op_per_chosen_edge():
    space = CellSpace(nodes=3, k=2)
    g = torch.Generator().manual_seed(4)
    ops, combos = space.full_masks()
    masks = {}
    for c in CELLS:
        _, o, cb = finalize(
            space, torch.randn(9, 8, generator=g), torch.randn(10, generator=g), ops, combos
        )
        masks[c] = {"ops": o, "combos": cb}
    net = _net(space, masks, layers=3)
    for cell in net.cells:
        kind = "reduce" if cell.reduction else "normal"
        assert len(cell.edges) == 2 * space.nodes
        for edge, mods in cell.edges.items():
            j, i = map(int, edge.split("_"))
            (name,) = mods.keys()
            assert name != "none" and masks[kind]["ops"][space.edge(j, i)] == [
                n == name for n in PRIMITIVES
            ]
    assert tuple(net(_x()).shape) == (4, 5)


# ---------------------------------------------------------------- temperature


def test_temperature_schedules():
    rounds = 11
    lin = [temperature_at(r, rounds, 1.0, 0.1, "linear", 0.01) for r in range(rounds)]
    exp = [temperature_at(r, rounds, 1.0, 0.1, "exponential", 0.01) for r in range(rounds)]
    assert lin[0] == 1.0 and abs(lin[-1] - 0.1) < 1e-12
    assert abs(lin[5] - 0.55) < 1e-12
    assert exp[0] == 1.0 and abs(exp[-1] - 0.1) < 1e-12
    assert abs(exp[5] - math.sqrt(0.1)) < 1e-12
    for r in range(rounds):
        assert abs(exp[r] - 0.1 ** (r / 10)) < 1e-12
    assert all(a > b for a, b in zip(lin, lin[1:]))
    assert all(a > b for a, b in zip(exp, exp[1:]))
    assert all(e <= v + 1e-12 for e, v in zip(exp, lin))  # geometric below the chord
    # rounds past the end stay at the end; a single round is the start
    assert abs(temperature_at(50, rounds, 1.0, 0.1, "linear", 0.01) - 0.1) < 1e-12
    assert temperature_at(0, 1, 1.0, 0.1, "exponential", 0.01) == 1.0
    # the floor
    floored = [temperature_at(r, rounds, 1.0, 0.001, "exponential", 0.02) for r in range(rounds)]
    assert min(floored) == 0.02 and floored[-1] == 0.02 and floored[0] == 1.0
    assert all(a >= b for a, b in zip(floored, floored[1:]))
    assert temperature_at(3, rounds, 0.005, 0.005, "linear", 0.01) == 0.01
    assert [temperature_at(r, rounds, 0.7, 0.1, "constant", 0.01) for r in (0, 5, 10)] == [0.7] * 3
    with pytest.raises(ValueError):
        temperature_at(0, rounds, 1.0, 0.1, "cosine", 0.01)
