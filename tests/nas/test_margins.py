"""Decisions outside the noise (``nas.margins``, ``nas.prune_z``, ``finalize``'s margins) on
hand-made means and covariances: the standard error of a gap, the z rule's two strikes,
its protections, and the derivation's undecided flags."""

from __future__ import annotations

import math

import pytest
import torch

from fednas_mpi.nas import CellSpace, Dispersion, Evidence, Genotype, finalize, prune, prune_z
from fednas_mpi.nas.margins import covariance, effective_clients, gap_se, margin

SPACE = CellSpace(nodes=2, k=2)  # 5 edges, 8 ops (none first), node combos 1 + 3


def _noise(var_ops, var_combos=None, n_eff: float = 5.0) -> Dispersion:
    """Independent entries: diagonal covariances with these variances."""
    a = torch.as_tensor(var_ops, dtype=torch.float64)
    b = torch.as_tensor(
        [0.0] * SPACE.num_combos if var_combos is None else var_combos, dtype=torch.float64
    )
    return Dispersion(torch.diag_embed(a), torch.diag(b), n_eff)


def _ev(alpha, noise: Dispersion, beta=None) -> Evidence:
    """The evidence of one round whose clients moved the logits from 0 to ``alpha``
    (``beta``) with this dispersion."""
    beta = torch.zeros(SPACE.num_combos) if beta is None else beta
    return Evidence.zeros(SPACE.num_edges, len(SPACE.primitives), SPACE.num_combos).add(
        torch.as_tensor(alpha), torch.as_tensor(beta), noise
    )


def _alpha(row0):
    alpha = torch.zeros(SPACE.num_edges, len(SPACE.primitives), dtype=torch.float64)
    alpha[0] = torch.tensor(row0, dtype=torch.float64)
    return alpha


# ---------------------------------------------------------------- the standard error


def test_gap_se_by_hand_with_the_cross_term_and_n_eff_minus_one():
    cov = torch.tensor([[0.04, 0.01, -0.02], [0.01, 0.09, 0.0], [-0.02, 0.0, 0.01]])
    of_mean = Dispersion(cov[None], torch.zeros(1, 1), 5.0).of_mean()
    se = gap_se(of_mean[0], torch.tensor([0]))[0]
    # (C_kk + C_bb - 2 C_bk) / (n_eff - 1)
    assert se.tolist() == pytest.approx([0.0, math.sqrt(0.11 / 4), math.sqrt(0.09 / 4)])
    # one effective client measures nothing
    assert Dispersion(cov[None], torch.zeros(1, 1), 1.0).of_mean() is None


def test_evidence_sums_the_rounds_moves_and_their_covariances():
    ev = Evidence.zeros(1, 2, 1)
    r1 = Dispersion(torch.tensor([[[0.4, -0.1], [-0.1, 0.2]]]), torch.tensor([[0.3]]), 3.0)
    r2 = Dispersion(torch.tensor([[[0.2, 0.0], [0.0, 0.6]]]), torch.tensor([[0.1]]), 5.0)
    ev = ev.add(torch.tensor([[1.0, 0.0]]), torch.tensor([0.5]), r1)
    ev = ev.add(torch.tensor([[0.5, -0.5]]), torch.tensor([-0.25]), r2)
    assert ev.alpha.tolist() == [[1.5, -0.5]] and ev.beta.tolist() == [0.25]
    # C1 / 2 + C2 / 4
    assert ev.alpha_cov.flatten().tolist() == pytest.approx([0.25, -0.05, -0.05, 0.25])
    assert float(ev.beta_cov[0, 0]) == pytest.approx(0.175)
    # gap 2 of entry 1 to entry 0: se sqrt(0.25 + 0.25 + 0.1) = sqrt(0.6)
    se = gap_se(ev.alpha_cov, torch.tensor([0]))[0, 1]
    assert float(se) == pytest.approx(math.sqrt(0.6))
    # a round of one effective client adds nothing, not even its move
    lone = Dispersion(torch.ones(1, 2, 2), torch.ones(1, 1), 1.0)
    same = ev.add(torch.tensor([[9.0, 9.0]]), torch.tensor([9.0]), lone)
    assert same is ev


def test_a_long_search_on_pure_noise_stays_inside_z():
    # 50 rounds whose clients' mean moves are pure noise of the size their spread says
    # (variance 0.5 per entry, independent): the summed gap grows like sqrt(rounds) and
    # so does its se; a one-round se would see ~sqrt(50) standard errors by the end
    g = torch.Generator().manual_seed(0)
    ev = Evidence.zeros(1, 2, 1)
    noise = Dispersion(torch.eye(2)[None] * 2.0, torch.zeros(1, 1), 5.0)  # of the mean: 0.5
    zs = []
    for _ in range(50):
        ev = ev.add(torch.randn(1, 2, generator=g) * math.sqrt(0.5), torch.zeros(1), noise)
        gap = float((ev.alpha[0, 0] - ev.alpha[0, 1]).abs())
        zs.append(gap / float(gap_se(ev.alpha_cov, torch.tensor([0]))[0, 1]))
    assert max(zs) < 3.0


def test_covariance_and_kish_from_moments():
    # clients (w, a): (2, [1, 0]), (3, [2, 1]), (5, [4, 1])
    w = torch.tensor([2.0, 3.0, 5.0], dtype=torch.float64)
    a = torch.tensor([[1.0, 0.0], [2.0, 1.0], [4.0, 1.0]], dtype=torch.float64)
    mean = (w[:, None] * a).sum(0) / w.sum()
    second = (w[:, None, None] * a[:, :, None] * a[:, None, :]).sum(0) / w.sum()
    c = covariance(mean, second)
    assert c.flatten().tolist() == pytest.approx([1.56, 0.36, 0.36, 0.16])
    assert effective_clients(10.0, float((w * w).sum() / w.sum())) == pytest.approx(100 / 38)


# ---------------------------------------------------------------- the z rule


def _check(alpha, noise, struck_ops, struck_combos=None, beta=None, z=2.0):
    ops, combos = SPACE.full_masks()
    beta = torch.zeros(SPACE.num_combos) if beta is None else beta
    return prune_z(
        SPACE,
        alpha,
        beta,
        _ev(alpha, noise, beta),
        ops,
        combos,
        struck_ops,
        [False] * SPACE.num_combos if struck_combos is None else struck_combos,
        z,
    )


def _all(value: bool):
    return [[value] * len(SPACE.primitives) for _ in range(SPACE.num_edges)]


ROW = [0.0, 3.0, 2.5, 1.0, 0.0, 0.0, 0.0, 0.0]  # best live op: 1 (3.0)


def test_nothing_inside_the_noise_goes_even_after_a_strike():
    # variance 2 on every op: se = sqrt((2 + 2) / 4) = 1, so only gaps beyond 2 are out
    r = _check(_alpha(ROW), _noise(torch.full((5, 8), 2.0)), _all(True))
    gone = {(e, k) for e, k, _ in r.pruned.removed_ops}
    assert gone == {(0, 0), (0, 4), (0, 5), (0, 6), (0, 7)}  # gap 3 > 2 se
    assert r.pruned.ops[0][2] and r.pruned.ops[0][3]  # gaps 0.5 and exactly 2 se stay
    assert r.op_se[0][2] == pytest.approx(1.0)
    # the fixed-gap rule would have cut the 0.5 gap
    ops, combos = SPACE.full_masks()
    assert not prune(SPACE, _alpha(ROW), None, ops, combos, 0.4, 0.0).ops[0][2]
    # and a row whose clients disagree wildly keeps everything
    wild = _check(_alpha(ROW), _noise(torch.full((5, 8), 50.0)), _all(True))
    assert wild.pruned.ops == _all(True) and not any(map(any, wild.op_struck))


def test_logits_no_client_moved_decide_nothing():
    # every client sent the same logits (se = 0): the gaps are the initialisation's
    r = _check(_alpha(ROW), _noise(torch.zeros(5, 8)), _all(True))
    assert r.pruned.ops == _all(True) and not any(map(any, r.op_struck))
    genotype, _, _ = finalize(
        SPACE,
        _alpha(ROW),
        torch.zeros(4),
        *SPACE.full_masks(),
        _ev(_alpha(ROW), _noise(torch.zeros(5, 8))),
    )
    assert genotype["nodes"][0]["inputs"][0]["margin_z"] is None
    assert genotype["nodes"][0]["inputs"][0]["undecided"] is True


def test_outside_the_noise_goes_only_at_the_second_consecutive_check():
    alpha = _alpha(ROW)
    quiet, loud = _noise(torch.full((5, 8), 0.02)), _noise(torch.full((5, 8), 50.0))
    # se = sqrt(0.04 / 4) = 0.1: every op of edge 0 but the best lies outside
    first = _check(alpha, quiet, _all(False))
    assert first.pruned.ops == _all(True) and not first.pruned.removed_ops
    assert first.op_struck[0] == [True, False, True, True, True, True, True, True]
    assert not any(map(any, first.op_struck[1:]))
    # back inside the noise: nothing goes and the strikes lapse
    lapsed = _check(alpha, loud, first.op_struck)
    assert lapsed.pruned.ops == _all(True) and not any(map(any, lapsed.op_struck))
    # out again: a first strike only
    again = _check(alpha, quiet, lapsed.op_struck)
    assert again.pruned.ops == _all(True) and again.op_struck == first.op_struck
    # out at the second consecutive check: removed, with gap and se for the log
    second = _check(alpha, quiet, again.op_struck)
    assert second.pruned.ops[0] == [False, True, False, False, False, False, False, False]
    assert {(e, k): g for e, k, g in second.pruned.removed_ops} == pytest.approx(
        {(0, 0): 3.0, (0, 2): 0.5, (0, 3): 2.0, (0, 4): 3.0, (0, 5): 3.0, (0, 6): 3.0, (0, 7): 3.0}
    )
    assert second.op_se[0][2] == pytest.approx(0.1)
    assert not any(map(any, second.op_struck))  # the removed carry no strike


def test_an_edge_keeps_its_strongest_real_op_and_a_node_its_best_combination():
    # none leads edge 0 by far: the strongest real op (2, at 1.0) stays although out
    alpha = _alpha([9.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    beta = torch.tensor([0.0, 4.0, 0.0, 1.0])  # node 1: combination 0 leads
    noise = _noise(torch.full((5, 8), 0.01), [0.01] * 4)
    ops_struck = _all(True)
    r = _check(alpha, noise, ops_struck, [True] * 4, beta)
    assert r.pruned.ops[0] == [True, False, True, False, False, False, False, False]
    assert r.op_struck[0][2]  # still out: struck, but protected
    assert r.pruned.combos == [True, True, False, False]
    assert [(j, c) for j, c, _ in r.pruned.removed_combos] == [(1, 1), (1, 2)]
    assert r.combo_se[2] == pytest.approx(math.sqrt(0.02 / 4))


def test_the_gap_rule_is_unchanged_by_the_refactor():
    # the remove() split keeps the gap rule's output for random logits and masks
    g = torch.Generator().manual_seed(3)
    ops, combos = SPACE.full_masks()
    ops[2][3] = False
    combos[2] = False
    alpha, beta = torch.randn(5, 8, generator=g) * 2, torch.randn(4, generator=g) * 2
    r = prune(SPACE, alpha, beta, ops, combos, 1.5, 1.0)
    for e in range(5):
        live = [k for k in range(8) if ops[e][k]]
        top = max(float(alpha[e, k]) for k in live)
        best_real = max((k for k in live if k), key=lambda k, e=e: float(alpha[e, k]))
        assert r.ops[e] == [
            ops[e][k] and (top - float(alpha[e, k]) <= 1.5 or k == best_real) for k in range(8)
        ]
    top = max(float(beta[1]), float(beta[3]))
    assert r.combos == [True, top - float(beta[1]) <= 1.0, False, top - float(beta[3]) <= 1.0]


# ---------------------------------------------------------------- the derivation


def test_derivation_flags_choices_inside_the_noise_and_keeps_them():
    alpha = torch.zeros(5, 8, dtype=torch.float64)
    alpha[0, 4], alpha[0, 5] = 2.0, 1.5  # s0 -> s2: sep_conv_3x3 over sep_conv_5x5 by 0.5
    alpha[1, 6], alpha[1, 1] = 3.0, 0.0  # s1 -> s2: dil_conv_3x3 by 3 over the rest
    beta = torch.tensor([0.0, 2.0, 0.0, 1.9], dtype=torch.float64)  # node 1: (0,1) vs (1,2)
    ops, combos = SPACE.full_masks()
    for k in range(8):  # s1 -> s3 and s2 -> s3: a single live real op (no rival)
        ops[3][k] = ops[4][k] = k in (0, 3)
    noise = _noise(torch.full((5, 8), 0.02), [0.02] * 4)  # se of any gap 0.1
    genotype, new_ops, _ = finalize(SPACE, alpha, beta, ops, combos, _ev(alpha, noise, beta), 2.0)
    n0, n1 = genotype["nodes"]
    # margins in standard errors; the argmax is kept either way
    assert [(x["op"], x["margin_z"], x["undecided"]) for x in n0["inputs"]] == [
        ("sep_conv_3x3", 5.0, False),
        ("dil_conv_3x3", 30.0, False),
    ]
    assert (n0["margin_z"], n0["undecided"]) == (None, False)  # node 0 has one combination
    assert (n1["margin_z"], n1["undecided"]) == (1.0, True)  # 0.1 apart: inside 2 se
    assert [x["input"] for x in n1["inputs"]] == [0, 1]
    assert [(x["op"], x["margin_z"], x["undecided"]) for x in n1["inputs"]] == [
        ("max_pool_3x3", 0.0, True),  # s0 -> s3: all ops tied
        ("skip_connect", None, False),  # s1 -> s3: no rival
    ]
    assert new_ops[3] == [k == 3 for k in range(8)]
    # with a looser z everything is decided except the exact tie
    loose, _, _ = finalize(SPACE, alpha, beta, ops, combos, _ev(alpha, noise, beta), 0.5)
    assert loose["nodes"][1]["undecided"] is False
    # the keys travel through the typed genotype and back (genotype.json's form)
    g = Genotype.from_dict({"normal": genotype, "reduce": genotype})
    assert g.to_dict()["normal"] == genotype
    assert g.undecided == [
        "normal s3: inputs s0, s1 (margin 1 se)",
        "normal s3 <- s0: max_pool_3x3 (margin 0 se)",
        "reduce s3: inputs s0, s1 (margin 1 se)",
        "reduce s3 <- s0: max_pool_3x3 (margin 0 se)",
    ]
    # without the clients' dispersion the derivation writes what it always did
    plain, _, _ = finalize(SPACE, alpha, beta, ops, combos)
    assert "margin_z" not in str(plain) and "undecided" not in str(plain)
    assert Genotype.from_dict({"normal": plain}).undecided == []


def test_margin_is_none_without_a_rival_and_uses_the_cross_term():
    cov = torch.tensor([[0.025, 0.02], [0.02, 0.025]], dtype=torch.float64)
    gap, se = margin(torch.tensor([1.0, 0.5]), cov, torch.tensor([True, True]), 0)
    assert gap == pytest.approx(0.5) and se == pytest.approx(math.sqrt(0.01))
    assert margin(torch.tensor([1.0, 0.5]), cov, torch.tensor([True, False]), 0) is None
    # the evidence may favour the rival: a negative margin, undecided
    gap, _ = margin(torch.tensor([0.2, 0.5]), cov, torch.tensor([True, True]), 0)
    assert gap == pytest.approx(-0.3)


def _pure_noise_removals(z: float, trials: int = 150, rounds: int = 12) -> float:
    """The share of ops the z rule removes from rows whose clients' moves are pure noise
    (each round's mean move N(0, 1) per op, independent, as the dispersion says), checked
    after every round from the third on."""
    g = torch.Generator().manual_seed(1)
    ops_n = len(SPACE.primitives)
    var = torch.eye(ops_n, dtype=torch.float64).expand(SPACE.num_edges, ops_n, ops_n) * 4.0
    noise = Dispersion(var, torch.zeros(SPACE.num_combos, SPACE.num_combos), 5.0)  # mean: 1
    removed = 0
    for _ in range(trials):
        ev = Evidence.zeros(SPACE.num_edges, ops_n, SPACE.num_combos)
        ops, combos = SPACE.full_masks()
        struck = _all(False)
        for r in range(rounds):
            move = torch.randn(SPACE.num_edges, ops_n, generator=g, dtype=torch.float64)
            ev = ev.add(move, torch.zeros(SPACE.num_combos), noise)
            if r < 2:
                continue
            res = prune_z(
                SPACE, ev.alpha, ev.beta, ev, ops, combos, struck, [False] * len(combos), z
            )
            ops, struck = res.pruned.ops, res.op_struck
        removed += sum(not x for row in ops for x in row)
    return removed / (trials * SPACE.num_edges * ops_n)


def test_pure_noise_false_removals_at_the_default_z_and_at_3():
    # Known and documented: the rule compares each op with its row's observed best (the
    # maximum of 8 noisy sums, biased upwards) and checks the same cumulative evidence
    # every round, so at z = 2 a noise-only search loses about a fifth of its ops by the
    # twelfth round; z = 3 keeps that near 1-2 %. (Each removal still had its gap beyond z
    # standard errors at two checks: the rule is what the issue asks; its error rate on
    # noise is what this test pins.)
    at2, at3 = _pure_noise_removals(2.0), _pure_noise_removals(3.0)
    assert 0.08 < at2 < 0.3
    assert at3 < 0.04
