"""``derive_rule: perturbation`` (DARTS-PT): removing an op in the scoring forward equals the
supernet whose spec prunes it (renormalised mixture); on a toy with a planted best op per
edge, clients' scores pooled through the aux channel's weighted means find it where the
logits point elsewhere; FedMetaNAS and FedNAS declare, send and use the scores only in
their derivation round; the default rule changes nothing; bad values are refused."""

from __future__ import annotations

import pytest
import torch
from helpers import client_data, darts_unit_config

from fednas_mpi.algorithms import DataInfo, RoundContext
from fednas_mpi.algorithms.common.aggregate import weighted_average
from fednas_mpi.algorithms.common.perturbation import (
    PREFIX,
    DeriveRuleConfig,
    PerturbationScoring,
    input_removals,
    op_removals,
    score,
)
from fednas_mpi.algorithms.fedmetanas import FedMetaNAS
from fednas_mpi.algorithms.fednas import FedNAS
from fednas_mpi.config import ConfigError, from_dict
from fednas_mpi.nas import CELL_TYPES, ArchSpec, CellMasks, CellSpace
from fednas_mpi.nas.mixing import relaxed_weights

INFO = DataInfo((1, 8, 8), 10)


def _ctx(cfg, round_: int, stage: str = "search") -> RoundContext:
    return RoundContext(round=round_, rounds=cfg.run.rounds, seed=cfg.run.seed, stage=stage)


# ---------------------------------------------------------------- the masking


@pytest.mark.parametrize("method", ["fedmetanas", "fednas"])
def test_removing_an_op_or_input_equals_the_supernet_whose_spec_prunes_it(method):
    cfg = darts_unit_config(method, **{method: {"derive_rule": "perturbation"}})
    algo = (FedMetaNAS if method == "fedmetanas" else FedNAS)(cfg, INFO)
    gm = algo.init_global()
    torch.manual_seed(0)
    state = {
        k: v + 0.5 * torch.randn_like(v) if k.startswith(("alpha", "beta")) else v
        for k, v in gm.state.items()
    }
    net = algo._net(type(gm)(gm.spec, state))
    net.set_sampling(0.7, None)
    d = client_data(1, n_eval=12)
    removals = {(e, k): m for e, k, m in op_removals(net, "reduce")}
    assert len(removals) == algo.space.num_edges * 7  # every live op but none
    e, k = 3, 5
    spec = ArchSpec.of(gm.spec)
    ops = [list(r) for r in spec.masks["reduce"].ops]
    ops[e][k] = False
    pruned = spec.derived(
        {**spec.masks, "reduce": CellMasks(ops, spec.masks["reduce"].combos)}, None
    )
    other = algo.build(pruned)
    other.load_state_dict(algo.restrict(pruned, state))
    other.set_sampling(0.7, None)
    got = score(net, d.eval_x, d.eval_y, {"reduce": removals[(e, k)]})
    want = score(other, d.eval_x, d.eval_y, {})
    assert got[:2] == want[:2] and got[2] == pytest.approx(want[2], rel=1e-5)
    # the edge's row: the softmax over the remaining live ops
    row = removals[(e, k)][0][e]
    mask = torch.ones(8, dtype=torch.bool)
    mask[k] = False
    torch.testing.assert_close(row, relaxed_weights(state["alpha_reduce"][e], 0.7, None, mask))
    # the input entries: combinations of nodes with more than one, or every edge of a sum
    entries = [i for i, _ in input_removals(net, "normal", spec.inputs)]
    if method == "fedmetanas":
        assert entries == [1, 2, 3]  # node 1's three combinations (node 0 has one)
    else:
        assert entries == list(range(algo.space.num_edges))


# ---------------------------------------------------------------- a planted toy


class ToyNet(torch.nn.Module):
    """The interface the scoring reads of a ``SearchNetwork``, on a linear toy: one node
    per cell type summing two edges, each mixing fixed maps of its own input; the class
    is the argmax of the sum over both cell types. The labels come from one planted op
    per edge, so the toy classifies well only through those ops."""

    def __init__(self, space: CellSpace, maps: dict, alpha: dict):
        super().__init__()
        self.space, self.maps, self.temperature = space, maps, 1.0
        ops, combos = space.full_masks()
        for c in CELL_TYPES:
            setattr(self, f"alpha_{c}", torch.nn.Parameter(alpha[c].clone()))
            setattr(self, f"beta_{c}", torch.nn.Parameter(torch.zeros(space.num_combos)))
            self.register_buffer(f"op_mask_{c}", torch.tensor(ops))
            self.register_buffer(f"combo_mask_{c}", torch.tensor(combos))

    def set_sampling(self, temperature, generator):
        self.temperature = temperature

    def mixing_weights(self, c):
        op_w = self.space.op_weights(
            getattr(self, f"alpha_{c}"), self.temperature, None, getattr(self, f"op_mask_{c}")
        )
        coefs = self.space.input_coefficients(
            getattr(self, f"beta_{c}"), self.temperature, None, getattr(self, f"combo_mask_{c}")
        )
        return op_w, coefs

    def forward(self, x, mixing):
        out = 0.0
        for layer, c in enumerate(CELL_TYPES):
            op_w, coefs = mixing(layer, c)
            for i in range(2):
                mixed = torch.einsum("k,kij,bj->bi", op_w[i], self.maps[c][i], x[:, layer, i])
                out = out + coefs[0][i] * mixed
        return out


def test_a_planted_best_op_is_found_through_the_aux_channel_where_the_logits_err():
    prims = ("none", "a", "b", "c", "d")
    space = CellSpace(1, 2, prims)  # one node <- s0, s1: two edges, one combination
    g = torch.Generator().manual_seed(0)
    dim = 6
    maps, alpha, best = {}, {}, {}
    for c in CELL_TYPES:
        best[c] = [int(torch.randint(1, len(prims), (), generator=g)) for _ in range(2)]
        m = 0.3 * torch.randn(2, len(prims), dim, dim, generator=g)
        m[:, 0] = 0.0  # none
        for e in range(2):  # the planted op carries the signal
            m[e, best[c][e]] *= 1 / 0.3
        maps[c] = m
        a = torch.zeros(2, len(prims))
        for e in range(2):  # the logits prefer another op ("decoy") on every edge
            a[e, 1 + best[c][e] % (len(prims) - 1)] = 1.0
        alpha[c] = a
    net = ToyNet(space, maps, alpha)
    pt = PerturbationScoring(DeriveRuleConfig(derive_rule="perturbation"), space)
    ops, combos = space.full_masks()
    spec = ArchSpec({c: CellMasks(ops, combos) for c in CELL_TYPES})
    reports, weights = [], [3.0, 1.0, 2.0]
    for client, w in enumerate(weights):
        gc = torch.Generator().manual_seed(10 + client)
        x = torch.randn(150, 2, 2, dim, generator=gc) * (1 + client)  # non-IID scales
        target = sum(
            torch.einsum("ij,bj->bi", maps[c][e, best[c][e]], x[:, layer, e])
            for layer, c in enumerate(CELL_TYPES)
            for e in range(2)
        )
        aux = pt.client_aux(net, spec, x, target.argmax(1), w, 1.0, due=True)
        assert set(aux) == set(pt.aux_shapes(spec))
        reports.append(aux)
    averaged = weighted_average(reports, weights)
    state = {
        f"{p}_{c}": getattr(net, f"{p}_{c}").detach() for c in CELL_TYPES for p in ("alpha", "beta")
    }
    derived, metrics = pt.derive(spec, state, averaged, sum(weights))
    for c in CELL_TYPES:
        inputs = derived.genotype.cells[c].nodes[0].inputs
        assert [x.op for x in inputs] == [prims[k] for k in best[c]], c
        for x in inputs:
            assert (
                x.perturbation["drop"] > 0
                and x.perturbation["runner_up_drop"] < x.perturbation["drop"]
            )
    assert metrics["pt_same_as_logits"] == 0.0  # the logits' argmax was the decoy everywhere
    assert metrics["pt_base_acc"] > 0.4 and metrics["pt_drop_mean"] > 0.02
    # the pooled baseline is the accuracy over the union of the clients' eval images
    n = sum(150 for _ in weights)
    assert round(float(averaged[f"{PREFIX}base"][0]) * sum(weights)) == n


# ---------------------------------------------------------------- the methods


@pytest.mark.parametrize("method", ["fedmetanas", "fednas"])
def test_the_methods_score_only_in_the_derivation_round_and_derive_from_the_scores(method):
    section = {"final_round": 2} if method == "fedmetanas" else {"search_rounds": 2}
    cfg = darts_unit_config(
        method, rounds=3, **{method: {**section, "derive_rule": "perturbation"}}
    )
    algo = (FedMetaNAS if method == "fedmetanas" else FedNAS)(cfg, INFO)
    gm = algo.init_global()
    shapes = algo.aux_shapes(gm)
    assert shapes and all(k.startswith(PREFIX) for k in shapes)
    # round 1 of 2: declared, sent as zeros (nothing scored)
    early = algo.client_update(gm, client_data(1), _ctx(cfg, 0), None)
    assert {k: tuple(v.shape) for k, v in early.aux.items()} == shapes
    assert all(not v.any() for v in early.aux.values())
    # the derivation round: scored on the received model, training unaffected
    plain_cfg = darts_unit_config(method, rounds=3, **{method: section})
    plain = (FedMetaNAS if method == "fedmetanas" else FedNAS)(plain_cfg, INFO)
    results = [algo.client_update(gm, client_data(c), _ctx(cfg, 1), None) for c in (1, 2)]
    base = plain.client_update(gm, client_data(1), _ctx(cfg, 1), None)
    assert base.aux == {}
    for k, v in base.state.items():
        assert torch.equal(v, results[0].state[k]), k
    assert float(results[0].aux[f"{PREFIX}base"][0]) * results[0].weight == 8  # eval images
    averaged = weighted_average(
        [{**r.state, **r.aux} for r in results], [r.weight for r in results]
    )
    metrics = {"client_weight": sum(r.weight for r in results)}
    new = algo.server_step(gm, averaged, metrics, _ctx(cfg, 1))
    g = ArchSpec.of(new.spec).genotype
    assert g is not None and not any(k.startswith(PREFIX) for k in new.state)
    assert all(
        x.perturbation is not None for c in g.cells.values() for n in c.nodes for x in n.inputs
    )
    assert {"pt_base_acc", "pt_drop_mean", "pt_same_as_logits"} <= set(metrics)
    # derived: nothing declared any more
    assert algo.aux_shapes(new) == {}


@pytest.mark.parametrize("method", ["fedmetanas", "fednas"])
def test_the_default_rule_is_the_logits_and_sends_nothing(method):
    cfg = darts_unit_config(method)
    assert getattr(cfg.algorithm, method).derive_rule == "logits"
    algo = (FedMetaNAS if method == "fedmetanas" else FedNAS)(cfg, INFO)
    assert algo.aux_shapes(algo.init_global()) == {}


@pytest.mark.parametrize("method", ["fedmetanas", "fednas"])
def test_bad_derive_rules_are_refused_with_the_key(method):
    for bad in ("perturb", 1, "Logits"):
        with pytest.raises(ConfigError, match=f"algorithm.{method}.derive_rule"):
            from_dict(
                {
                    "model": {"name": "darts"},
                    "algorithm": {"name": method, method: {"derive_rule": bad}},
                }
            )
    # no eval split to score on
    for partition in ({"eval_fraction": 0.0}, {"train_size": 40, "eval_size": 0}):
        with pytest.raises(ConfigError, match=f"algorithm.{method}.derive_rule = perturbation"):
            from_dict(
                {
                    "model": {"name": "darts"},
                    "partition": partition,
                    "algorithm": {"name": method, method: {"derive_rule": "perturbation"}},
                }
            )
    # a method that does not read it refuses the key too
    with pytest.raises(ConfigError, match="derive_rule"):
        from_dict(
            {
                "model": {"name": "darts"},
                "algorithm": {"name": "feddsnas", "feddsnas": {"derive_rule": "perturbation"}},
            }
        )


def test_an_unscored_round_cannot_derive():
    space = CellSpace(1, 2, ("none", "a"))
    pt = PerturbationScoring(DeriveRuleConfig(derive_rule="perturbation"), space)
    ops, combos = space.full_masks()
    spec = ArchSpec({c: CellMasks(ops, combos) for c in CELL_TYPES})
    zeros = {k: torch.zeros(s, dtype=torch.float64) for k, s in pt.aux_shapes(spec).items()}
    with pytest.raises(ValueError, match="no eval images"):
        pt.derive(spec, {}, zeros, 10.0)
