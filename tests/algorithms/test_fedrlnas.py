"""FedRLNAS: REINFORCE's score function and the server's policy step by hand, the fold of
subnet updates (weighted by the samples of the clients that trained each op), sampling
(epsilon-greedy, masks) and the client update on a tiny search space."""

from __future__ import annotations

import pytest
import torch
from helpers import client_data, darts_unit_config

from fednas_mpi.algorithms import DataInfo, GlobalModel, RoundContext
from fednas_mpi.algorithms.common.aggregate import weighted_average
from fednas_mpi.algorithms.common.policy import adam_ascent, sample_policy, score
from fednas_mpi.algorithms.common.subnet import fold
from fednas_mpi.algorithms.common.tasks import holdout
from fednas_mpi.algorithms.fedrlnas import FedRLNAS

# ---------------------------------------------------------------- score function by hand


def test_score_is_the_gradient_of_log_p_by_hand_and_by_autograd():
    alpha = torch.tensor([[0.0, 1.0, -1.0], [0.5, 0.5, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True], [True, False, True]])
    choice = [1, 2]
    s = score(alpha, mask, choice)
    e = torch.exp(torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64))
    p0 = e / e.sum()
    q = torch.exp(torch.tensor([0.5, 0.0], dtype=torch.float64))
    q = q / q.sum()  # edge 1 over its two kept ops (0 and 2)
    want = torch.stack(
        [torch.tensor([-p0[0], 1 - p0[1], -p0[2]]), torch.tensor([-q[0], 0.0, 1 - q[1]])]
    ).double()
    torch.testing.assert_close(s, want, rtol=1e-12, atol=1e-12)
    a = alpha.clone().requires_grad_(True)
    logp = torch.log_softmax(a.masked_fill(~mask, float("-inf")), -1)
    (logp[0, 1] + logp[1, 2]).backward()
    torch.testing.assert_close(s, torch.nan_to_num(a.grad), rtol=1e-12, atol=1e-12)


def test_adam_ascent_first_step_moves_by_lr_along_the_sign():
    st: dict = {}
    v = torch.zeros(3)
    g = torch.tensor([2.0, -0.5, 0.0], dtype=torch.float64)
    out = adam_ascent(v, g, st, "a.", 0.1, (0.5, 0.999))
    torch.testing.assert_close(out, torch.tensor([0.1, -0.1, 0.0]), rtol=1e-6, atol=1e-6)
    assert float(st["a.t"]) == 1.0 and set(st) == {"a.t", "a.m", "a.v"}


def test_sampling_follows_the_policy_mask_and_epsilon():
    alpha = torch.tensor([[0.0, 3.0, 0.0, -2.0]] * 1, dtype=torch.float64).repeat(4000, 1)
    mask = torch.ones(4000, 4, dtype=torch.bool)
    mask[:, 3] = False
    g = torch.Generator().manual_seed(0)
    picks = torch.tensor(sample_policy(alpha, mask, g))
    p = torch.softmax(torch.tensor([0.0, 3.0, 0.0]), 0)
    freq = torch.bincount(picks, minlength=4).double() / len(picks)
    assert freq[3] == 0
    torch.testing.assert_close(freq[:3], p.double(), atol=0.03, rtol=0)
    uniform = torch.tensor(sample_policy(alpha, mask, torch.Generator().manual_seed(1), 1.0))
    freq = torch.bincount(uniform, minlength=4).double() / len(uniform)
    assert freq[3] == 0 and (freq[:3] - 1 / 3).abs().max() < 0.03
    # same generator seed, same draw
    assert sample_policy(alpha[:5], mask[:5], torch.Generator().manual_seed(2)) == sample_policy(
        alpha[:5], mask[:5], torch.Generator().manual_seed(2)
    )


def test_fold_weights_each_op_by_the_samples_of_the_clients_that_trained_it():
    old = {
        "op_a": torch.tensor([1.0]),
        "op_b": torch.tensor([1.0]),
        "op_c": torch.tensor([1.0]),
        "stem": torch.tensor([0.0]),
    }
    keys = {"op_a": ("normal", 0, 0), "op_b": ("normal", 0, 1), "op_c": ("normal", 0, 2)}
    # client 1 (10 samples) trained ops a and b; client 2 (30 samples) trained op b only
    c1 = {
        "op_a": torch.tensor([3.0]),
        "op_b": torch.tensor([2.0]),
        "op_c": torch.tensor([1.0]),
        "stem": torch.tensor([1.0]),
        "count": torch.tensor([[1.0, 1.0, 0.0]]),
    }
    c2 = {
        "op_a": torch.tensor([1.0]),
        "op_b": torch.tensor([5.0]),
        "op_c": torch.tensor([1.0]),
        "stem": torch.tensor([2.0]),
        "count": torch.tensor([[0.0, 1.0, 0.0]]),
    }
    avg = weighted_average([c1, c2], [10.0, 30.0])
    new = fold(old, avg, keys, {"normal": avg["count"]}, list(old))
    assert float(new["op_a"]) == pytest.approx(3.0)  # only client 1's update, not shrunk
    assert float(new["op_b"]) == pytest.approx(1 + (10 * 1 + 30 * 4) / 40)
    assert float(new["op_c"]) == 1.0  # nobody trained it
    assert float(new["stem"]) == pytest.approx((10 * 1 + 30 * 2) / 40)


def test_holdout_splits_disjointly():
    tr, va = holdout(10, 0.2, torch.Generator().manual_seed(0))
    assert len(va) == 2 and len(tr) == 8 and not set(tr.tolist()) & set(va.tolist())
    tr, va = holdout(2, 0.9, torch.Generator().manual_seed(0))
    assert len(va) == 1 and len(tr) == 1


# ---------------------------------------------------------------- tiny method


def _algo(rounds: int = 3, **f) -> FedRLNAS:
    return FedRLNAS(darts_unit_config("fedrlnas", rounds, fedrlnas=f), DataInfo((1, 8, 8), 10))


def test_server_step_is_reinforce_with_a_baseline_by_hand():
    algo = _algo(arch_lr=0.1)
    model = algo.init_global()
    ctx = RoundContext(0, 3, 5, "search")
    results = [
        algo.client_update(model, client_data(c, n), ctx, None) for c, n in ((1, 12), (2, 20))
    ]
    r1, r2 = results
    assert r1.weight == 12.0 and r2.weight == 20.0
    assert set(r1.state) == set(model.state)
    assert set(r1.aux) == set(algo.aux_shapes(model))
    # the runtime averages the aux entries with the state, in one sum
    avg = weighted_average([{**r.state, **r.aux} for r in results], [r.weight for r in results])
    metrics: dict[str, float] = {}
    new = algo.server_step(model, avg, metrics, ctx)
    rewards = [r.metrics["reward"] for r in results]
    mean_r = sum(rewards) / 2
    assert metrics["mean_reward"] == pytest.approx(mean_r, abs=1e-9)
    assert metrics["baseline"] == pytest.approx(mean_r, abs=1e-9)  # first round: b = mean R
    for c in ("normal", "reduce"):
        # each client's score, recovered from its own rl entries
        scores = [r.aux[f"rl.score_{c}"] * r.weight for r in results]
        g = sum((rr - mean_r) * s for rr, s in zip(rewards, scores)) / 2
        step = 0.1 * g / (g.abs() + 1e-8)  # Adam's first step
        torch.testing.assert_close(
            new.state[f"alpha_{c}"].double() - model.state[f"alpha_{c}"], step, atol=1e-6, rtol=0
        )
        # each client's op indicator is one op per edge
        assert (r1.aux[f"rl.count_{c}"].sum(1) == 1).all()
    assert float(new.server_state["baseline"]) == pytest.approx(mean_r)
    assert new.server_state["adam_normal.t"] == 1.0
    # the round's sums stay out of the global model (and so out of broadcasts, checkpoints)
    assert not any(k.startswith("rl.") for k in new.state)


def test_client_trains_only_its_path_and_is_deterministic():
    algo = _algo()
    model = algo.init_global()
    ctx = RoundContext(0, 3, 5, "search")
    a = algo.client_update(model, client_data(1), ctx, None)
    b = algo.client_update(model, client_data(1), ctx, None)
    for k in a.state:
        assert torch.equal(a.state[k], b.state[k]), k
    assert not any(k.startswith("rl.") for k in a.state)
    count = a.aux["rl.count_normal"]
    prims = algo.space.primitives
    for k in model.state:
        if ".edges." not in k or not model.state[k].is_floating_point():
            continue
        li, key, name = k.split(".")[1], k.split(".")[3], k.split(".")[4]
        kind = "reduce" if algo.build(model.spec).cells[int(li)].reduction else "normal"
        j, i = map(int, key.split("_"))
        e = algo.space.edge(j, i)
        chosen = bool(a.aux[f"rl.count_{kind}"][e, prims.index(name)])
        if not chosen:
            assert torch.equal(a.state[k], model.state[k]), k
    assert count.sum() == algo.space.num_edges
    # policy untouched by clients
    assert torch.equal(a.state["alpha_normal"], model.state["alpha_normal"])


def test_last_round_derives_the_argmax_child():
    algo = _algo(rounds=1)
    model = algo.init_global()
    ctx = RoundContext(0, 1, 5, "search")
    res = [algo.client_update(model, client_data(c), ctx, None) for c in (1, 2)]
    avg = weighted_average([{**r.state, **r.aux} for r in res], [r.weight for r in res])
    new = algo.server_step(model, avg, {}, ctx)
    assert new.spec["genotype"] is not None
    # the raw average of subnet states is no model of the method
    raw = algo.evaluate(
        GlobalModel(model.spec, avg), torch.randn(2, 1, 8, 8), torch.zeros(2, dtype=torch.long)
    )
    assert all(v != v for v in raw)
    assert not any(k.startswith("rl.") for k in new.state)
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    assert 0.0 <= algo.evaluate(new, x, y)[1] <= 1.0
    assert GlobalModel(new.spec, new.state).spec_json()
