"""PerFedRLNAS: the personalised reward by hand, each cell type's policy gradient from its
own logits, the per-client policy step on the server, and the last round's own subnet."""

from __future__ import annotations

import pytest
import torch
from helpers import client_data, darts_unit_config

from fednas_mpi.algorithms import DataInfo, RoundContext
from fednas_mpi.algorithms.common.policy import score
from fednas_mpi.algorithms.perfedrlnas import PerFedRLNAS, personal_rewards
from fednas_mpi.config import from_dict


def test_personal_reward_by_hand():
    acc = {1: 0.6, 4: 0.8}
    best = {1: 0.7, 2: 0.5, 4: 0.8}
    time = {1: 3.0, 4: 5.0}
    r = personal_rewards(acc, best, time, 0.1)
    mean_best = (0.7 + 0.5 + 0.8) / 3
    assert r[1] == pytest.approx(0.6 - mean_best - 0.0)
    assert r[4] == pytest.approx(0.8 - mean_best - 0.1 * 2.0)


def _algo(rounds: int = 3, **f) -> PerFedRLNAS:
    return PerFedRLNAS(
        darts_unit_config("perfedrlnas", rounds, perfedrlnas=f), DataInfo((1, 8, 8), 10)
    )


def test_each_cell_types_score_uses_its_own_logits():
    algo = _algo()
    model = algo.init_global()
    ctx = RoundContext(0, 3, 5, "search")
    st = algo.initial_client_state(model)
    st["alpha_normal"] = torch.zeros_like(st["alpha_normal"])
    st["alpha_reduce"] = torch.linspace(
        -1, 1, st["alpha_reduce"].numel(), dtype=torch.float64
    ).view_as(st["alpha_reduce"])
    res = algo.client_update(model, client_data(1), ctx, st)
    cs = res.client_state
    net = algo.net_of(model.spec, model.state)
    for c in ("normal", "reduce"):
        choice = cs[f"subnet_{c}"].long().tolist()
        want = score(st[f"alpha_{c}"], getattr(net, f"op_mask_{c}"), choice)
        torch.testing.assert_close(res.client_aux[f"score_{c}"], want)
    # the reduce score is not the normal cell's (uniform) one
    wrong = score(st["alpha_normal"], net.op_mask_reduce, cs["subnet_reduce"].long().tolist())
    assert not torch.allclose(res.client_aux["score_reduce"], wrong)
    # what the round leaves for the server travels beside the state, not in it
    assert not any(k.startswith("pending.") for k in cs)


def test_server_moves_each_round_clients_policy_by_its_reward():
    algo = _algo(arch_lr=0.1, time_lambda=0.5)
    model = algo.init_global()
    ctx = RoundContext(0, 3, 5, "search")
    res = {
        c: algo.client_update(model, client_data(c, n), ctx, None) for c, n in ((1, 12), (3, 20))
    }
    states = {c: r.client_state for c, r in res.items()}
    states[0] = {
        **algo.initial_client_state(model),
        "best_acc": torch.tensor(0.9, dtype=torch.float64),
    }
    metrics: dict[str, float] = {}
    aux = {c: r.client_aux for c, r in res.items()}
    new = algo.server_client_step(states, [1, 3], aux, metrics, ctx)
    assert set(new) == {1, 3}
    acc = {c: r.metrics["reward"] for c, r in res.items()}
    time = {c: r.metrics["time_cost"] for c, r in res.items()}
    best = {0: 0.9, 1: acc[1], 3: acc[3]}
    want = personal_rewards(acc, best, time, 0.5)
    for c in (1, 3):
        assert float(new[c]["last_reward"]) == pytest.approx(want[c])
        assert float(new[c]["best_acc"]) == pytest.approx(acc[c])
        assert not any(k.startswith("pending.") for k in new[c])
        for cell in ("normal", "reduce"):
            g = want[c] * aux[c][f"score_{cell}"]
            torch.testing.assert_close(
                new[c][f"alpha_{cell}"] - states[c][f"alpha_{cell}"],
                0.1 * g / (g.abs() + 1e-8),
                atol=1e-6,
                rtol=0,
            )
    assert metrics["mean_best_acc"] == pytest.approx(sum(best.values()) / 3)


def test_last_round_trains_and_reports_the_clients_own_subnet():
    algo = _algo(rounds=2)
    model = algo.init_global()
    st = algo.initial_client_state(model)
    st["alpha_normal"][:, 4] = 3.0  # sep_conv_3x3 everywhere
    st["alpha_reduce"][:, 1] = 3.0  # max_pool_3x3 everywhere
    res = algo.client_update(model, client_data(2), RoundContext(1, 2, 5, "search"), st)
    assert res.client_state["subnet_normal"].tolist() == [4.0] * algo.space.num_edges
    assert res.client_state["subnet_reduce"].tolist() == [1.0] * algo.space.num_edges
    assert algo.client_subnet(st) == {"normal": [4] * 5, "reduce": [1] * 5}
    assert res.metrics["local_acc"] == res.metrics["local_acc"]  # evaluated (not NaN)


# ---------------------------------------------------------------- meta-PerFedRLNAS


def _meta(rounds: int = 3, **fm):
    from fednas_mpi.algorithms.perfedrlnas import MetaPerFedRLNAS

    cfg = from_dict(
        {
            "run": {"seed": 5, "rounds": rounds},
            "model": {
                "name": "darts",
                "darts": {
                    "init_channels": 4,
                    "layers": 3,
                    "nodes": 2,
                    "input_k": 2,
                    "stem_multiplier": 1,
                },
            },
            "algorithm": {
                "name": "meta_perfedrlnas",
                "local_epochs": 1,
                "batch_size": 4,
                "fedmetanas": fm,
            },
            "partition": {"num_clients": 4},
            "federation": {"clients_per_round": 2},
        }
    )
    return MetaPerFedRLNAS(cfg, DataInfo((1, 8, 8), 10))


def test_meta_variant_trains_the_path_by_maml_and_prunes_the_mean_policy():
    from fednas_mpi.algorithms.common.aggregate import weighted_average

    algo = _meta(prune_start=1, prune_every=1, prune_gap=0.1)
    model = algo.init_global()
    ctx = RoundContext(0, 3, 5, "search")
    res = {c: algo.client_update(model, client_data(c), ctx, None) for c in (1, 2)}
    r = res[1]
    prims = algo.space.primitives
    net = algo.build(model.spec)
    moved = 0
    for k in model.state:
        if ".edges." not in k or not model.state[k].is_floating_point():
            continue
        li, key, name = int(k.split(".")[1]), k.split(".")[3], k.split(".")[4]
        kind = "reduce" if net.cells[li].reduction else "normal"
        j, i = map(int, key.split("_"))
        chosen = bool(r.aux[f"rl.count_{kind}"][algo.space.edge(j, i), prims.index(name)])
        if not chosen:
            assert torch.equal(r.state[k], model.state[k]), k
        elif not torch.equal(r.state[k], model.state[k]):
            moved += 1
    assert moved > 0
    # a mean policy that prefers sep_conv_3x3 everywhere prunes the weak ops
    states = {c: x.client_state for c, x in res.items()}
    for st in states.values():
        st["alpha_normal"][:, 4] = 3.0
        st["alpha_reduce"][:, 4] = 3.0
    avg = weighted_average(
        [{**x.state, **x.aux} for x in res.values()], [x.weight for x in res.values()]
    )
    avg["alpha_normal"] = states[1]["alpha_normal"].float()
    avg["alpha_reduce"] = states[1]["alpha_reduce"].float()
    metrics: dict[str, float] = {}
    new = algo.server_step(model, avg, metrics, ctx)
    assert new.spec != model.spec and metrics["ops_alive"] < 80
    # clients keep sampling within the pruned masks, from their full-size policies
    upd = algo.server_client_step(
        states, [1, 2], {c: x.client_aux for c, x in res.items()}, {}, ctx
    )
    r2 = algo.client_update(new, client_data(1), RoundContext(1, 3, 5, "search"), upd[1])
    assert set(r2.state) == set(new.state)
    for c in ("normal", "reduce"):
        mask = torch.tensor(new.spec["masks"][c]["ops"])
        picked = r2.client_state[f"subnet_{c}"].long()
        assert mask[torch.arange(len(picked)), picked].all()


def test_personal_accuracy_is_the_clients_own_subnet():
    """Table 5: the argmax of the client's own policy over the live ops, with the shared
    supernet's weights; a client never sampled: the global model (mean policy's child)."""
    from fednas_mpi.algorithms.common.subnet import PathModel

    algo = _algo()
    model = algo.init_global()
    data = client_data(2, n=32, n_eval=200)
    ctx = RoundContext(2, 3, 5, "search")
    st = algo.initial_client_state(model)
    st["alpha_normal"][:, 6] = 3.0  # dil_conv_3x3 everywhere
    st["alpha_reduce"][:, 2] = 3.0  # avg_pool_3x3 everywhere
    net = algo.net_of(model.spec, model.state)
    path = PathModel(net, {"normal": [6] * 5, "reduce": [2] * 5})
    path.eval()
    with torch.no_grad():
        by_hand = float((path(data.eval_x).argmax(1) == data.eval_y).double().mean())
    mine = algo.personal_accuracy(model, data, st, ctx)
    assert mine == by_hand
    glob = algo.personal_accuracy(model, data, None, ctx)
    assert glob == algo.evaluate(model, data.eval_x, data.eval_y)[1]
    assert mine != glob
