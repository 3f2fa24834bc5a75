"""FedMetaNAS's ``prune_rule: z``: the clients' aux moments reproduce a hand-computed
weighted covariance over 3 clients through the workers' pre-reduced sums; the server
strikes, then removes at the next check, logs gap, se and z, keeps the strikes in its
server state, and flags the derivation's undecided choices; the default rule is as before."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import client_data, darts_unit_config

from fednas_mpi.algorithms import DataInfo, RoundContext
from fednas_mpi.algorithms.common import dispersion
from fednas_mpi.algorithms.common.aggregate import ClientSums, weighted_average
from fednas_mpi.algorithms.common.pruning import STRUCK
from fednas_mpi.algorithms.fedmetanas import FedMetaNAS
from fednas_mpi.nas import CELL_TYPES
from fednas_mpi.nas.margins import row_gaps
from fednas_mpi.runtime.protocol import summed_layout

ARCH = [f"{p}_{c}" for p in ("alpha", "beta") for c in CELL_TYPES]


# ---------------------------------------------------------------- the aux sums


def _client(w_row0: list[float], extra: float) -> dict[str, torch.Tensor]:
    return {
        "cells.0.w": torch.tensor([extra]),
        "alpha_normal": torch.tensor([w_row0, [extra, 0.0]]),
        "alpha_reduce": torch.tensor([[0.0, extra]]),
        "beta_normal": torch.tensor([extra, 1.0]),
        "beta_reduce": torch.tensor([2.0]),
    }


def test_aux_sums_over_three_clients_give_the_weighted_covariance_by_hand():
    weights = [2.0, 3.0, 5.0]
    states = [_client([1.0, 0.0], 1.0), _client([2.0, 1.0], 2.0), _client([4.0, 1.0], 3.0)]
    layout = summed_layout(states[0], dispersion.aux_shapes(states[0]))
    # client 0 on one worker, clients 1 and 2 on another; the server adds the buffers
    a, b = ClientSums(layout, ()), ClientSums(layout, ())
    for sums, st, w in ((a, states[0], weights[0]), (b, states[1], weights[1])):
        sums.add({**st, **dispersion.client_aux(st, w)}, w, {})
    b.add({**states[2], **dispersion.client_aux(states[2], weights[2])}, weights[2], {})
    averaged, metrics = a.finish(a.combine([a.buffer, b.buffer]))
    state, aux = dispersion.split(averaged)
    assert list(state) == list(states[0]) and set(aux) == set(dispersion.aux_shapes(states[0]))
    noise = dispersion.dispersion(aux, metrics["client_weight"])
    # by hand: mean of alpha_normal[0] = (2.8, 0.8); sum w = 10, sum w^2 = 38
    rows = [s["alpha_normal"][0].tolist() for s in states]
    mu = [sum(w * r[i] for w, r in zip(weights, rows)) / 10 for i in range(2)]
    cov = [
        [
            sum(w * (r[i] - mu[i]) * (r[j] - mu[j]) for w, r in zip(weights, rows)) / 10
            for j in (0, 1)
        ]
        for i in (0, 1)
    ]
    assert mu == pytest.approx([2.8, 0.8]) and cov[0][0] == pytest.approx(1.56)
    assert cov[0][1] == pytest.approx(0.36) and cov[1][1] == pytest.approx(0.16)
    got = noise["normal"].alpha_cov[0]
    assert got.flatten().tolist() == pytest.approx([cov[0][0], cov[0][1], cov[1][0], cov[1][1]])
    assert noise["normal"].n_eff == pytest.approx(100 / 38)
    # the second row: (1, 2, 3) against 0 everywhere
    var = sum(w * (x - 2.3) ** 2 for w, x in zip(weights, (1.0, 2.0, 3.0))) / 10
    assert noise["normal"].alpha_cov[1].flatten().tolist() == pytest.approx([var, 0, 0, 0])
    # no spread where every client sends the same value
    assert float(noise["reduce"].beta_cov[0, 0]) == pytest.approx(0.0, abs=1e-12)
    # the standard error of the gap of entry 1 to the best (entry 0)
    gap, se = row_gaps(
        aux["noise.alpha_normal"],
        noise["normal"].of_mean()[0],
        torch.ones(2, 2, dtype=torch.bool),
    )
    assert gap[0, 1] == pytest.approx(2.0)
    assert se[0, 1] == pytest.approx(math.sqrt((1.56 + 0.16 - 2 * 0.36) / (100 / 38 - 1)))


# ---------------------------------------------------------------- FedMetaNAS


def _cfg(**fm):
    return darts_unit_config("fedmetanas", rounds=4, fedmetanas=fm)


def _ctx(cfg, round_: int) -> RoundContext:
    return RoundContext(round=round_, rounds=cfg.run.rounds, seed=cfg.run.seed, stage="search")


ROW = [0.0, 3.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0]  # edge s0->s2 of the normal cell
SPREAD = [0.5, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5]  # half the two clients' difference


def _averaged(state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """The round's average of two clients of weight 1 whose logits are all 0 but edge 0 of
    the normal cell, ROW +- SPREAD: se of op k's gap to op 1 is |SPREAD[k]| (n_eff = 2)."""
    clients = []
    for sign in (1.0, -1.0):
        st = {k: v.clone() for k, v in state.items()}
        for k in ARCH:
            st[k].zero_()
        st["alpha_normal"][0] = torch.tensor(ROW) + sign * torch.tensor(SPREAD)
        clients.append({**st, **dispersion.client_aux(st, 1.0)})
    return weighted_average(clients, [1.0, 1.0]), {"client_weight": 2.0}


def test_z_rule_strikes_then_removes_logs_and_flags_the_derivation():
    cfg = _cfg(prune_rule="z", prune_start=1, prune_every=1, settle_rounds=0, final_round=3)
    algo = FedMetaNAS(cfg, DataInfo((1, 8, 8), 10))
    gm = algo.init_global()
    space = algo.space
    struck_keys = [f"{STRUCK}{p}_{c}" for c in CELL_TYPES for p in ("ops", "combos")]
    evidence_keys = [
        f"{dispersion.EVIDENCE}{f}_{c}"
        for c in CELL_TYPES
        for f in ("alpha", "alpha_cov", "beta", "beta_cov")
    ]
    assert sorted(gm.server_state) == sorted(["temperature", *struck_keys, *evidence_keys])
    # every client reports what aux_shapes declares
    res = algo.client_update(gm, client_data(), _ctx(cfg, 0), None)
    shapes = algo.aux_shapes(gm)
    assert {k: tuple(v.shape) for k, v in res.aux.items()} == shapes
    assert all(v.dtype == torch.float64 for v in res.aux.values())
    # check 1: op 2 (gap 1, se 1) is inside; the rest of edge 0 (gap 3, se 0.5) outside
    averaged, metrics = _averaged(gm.state)
    averaged_first = dispersion.split(averaged)[1]
    averaged_first = {k.removeprefix(dispersion.PREFIX): v for k, v in averaged_first.items()}
    first = algo.server_step(gm, averaged, metrics, _ctx(cfg, 0))
    assert first.spec is gm.spec and set(first.state) == set(gm.state)
    assert first.server_state[f"{STRUCK}ops_normal"][0].tolist() == [1, 0, 0, 1, 1, 1, 1, 1]
    assert metrics["ops_struck"] == 6 and metrics["ops_pruned"] == 0 and metrics["n_eff"] == 2
    # check 2: the clients again end at ROW +- SPREAD, now from ROW: no move, so the
    # evidence is still ROW, but with two rounds' variance (se sqrt 2 x 0.5 for the gap 3)
    averaged, metrics = _averaged(first.state)
    second = algo.server_step(first, averaged, metrics, _ctx(cfg, 1))
    assert second.spec["masks"]["normal"]["ops"][0] == [False, True, True] + [False] * 5
    assert second.spec["masks"]["reduce"] == gm.spec["masks"]["reduce"]
    log = second.spec["prune_log"]
    assert [x["op"] for x in log] == [space.primitives[k] for k in (0, 3, 4, 5, 6, 7)]
    assert log[0] == {
        "round": 2,
        "cell": "normal",
        "edge": "s0->s2",
        "op": "none",
        "gap": 3.0,
        "se": 0.7071,
        "z": 4.24,
    }
    assert metrics["ops_pruned"] == 6 and metrics["pruned_z_min"] == 4.24
    # (the moves from the initial logits, N(0, 1e-3) noise, to the clients' ROW and 0)
    ev = second.server_state[f"{dispersion.EVIDENCE}alpha_normal"]
    init = gm.state["alpha_normal"].double()
    assert torch.equal(ev, averaged_first["alpha_normal"].double() - init)
    assert ev[0].tolist() == pytest.approx(ROW, abs=1e-2)
    var = second.server_state[f"{dispersion.EVIDENCE}alpha_cov_normal"][0].diagonal()
    assert var.tolist() == pytest.approx([2 * s * s for s in SPREAD])
    assert not second.server_state[f"{STRUCK}ops_normal"].any()
    assert set(second.state) < set(first.state)  # the pruned ops' weights left
    # the derivation: max_pool over avg_pool by a gap of 1 whose spread (1 a round) three
    # rounds have added up: 1 / sqrt 3 se, kept but undecided
    averaged, metrics = _averaged(second.state)
    final = algo.server_step(second, averaged, metrics, _ctx(cfg, 2))
    node = final.spec["genotype"]["normal"]["nodes"][0]
    assert node["inputs"][0] == {
        "op": "max_pool_3x3",
        "input": 0,
        "p_op": node["inputs"][0]["p_op"],
        "margin_z": round(1 / math.sqrt(3), 2),
        "undecided": True,
    }
    assert (node["margin_z"], node["undecided"]) == (None, False)  # a single combination
    nodes = [n for c in CELL_TYPES for n in final.spec["genotype"][c]["nodes"]]
    assert metrics["undecided_ops"] == sum(x["undecided"] for n in nodes for x in n["inputs"])
    assert metrics["undecided_nodes"] == sum(n["undecided"] for n in nodes)
    # after the derivation the clients send nothing more
    assert algo.aux_shapes(final) == {}
    assert list(final.server_state) == list(second.server_state)


def test_gap_rule_sends_and_keeps_nothing_new():
    algo = FedMetaNAS(_cfg(), DataInfo((1, 8, 8), 10))
    gm = algo.init_global()
    assert list(gm.server_state) == ["temperature"] and algo.aux_shapes(gm) == {}
    assert algo.client_update(gm, client_data(), _ctx(algo.cfg, 0), None).aux == {}


def test_under_the_server_optimiser_the_evidence_is_in_the_clients_units():
    # the same client round under two server learning rates: the stepped logits differ
    # by the server's scale, the evidence the z rule reads (and so its decisions) not
    out = []
    for lr in (0.1, 1.0):
        cfg = _cfg(
            prune_rule="z",
            arch_update="server",
            server_arch_lr=lr,
            arch_warmup_rounds=0,
            prune_start=1,
            final_round=3,
        )
        algo = FedMetaNAS(cfg, DataInfo((1, 8, 8), 10))
        gm = algo.init_global()
        averaged, metrics = _averaged(gm.state)
        out.append(algo.server_step(gm, averaged, metrics, _ctx(cfg, 0)))
    slow, fast = out
    assert not torch.equal(slow.state["alpha_normal"], fast.state["alpha_normal"])
    for k, v in slow.server_state.items():
        if k.startswith(dispersion.EVIDENCE) or k.startswith(STRUCK):
            assert torch.equal(v, fast.server_state[k]), k
    assert slow.server_state[f"{STRUCK}ops_normal"][0].tolist() == [1, 0, 0, 1, 1, 1, 1, 1]
