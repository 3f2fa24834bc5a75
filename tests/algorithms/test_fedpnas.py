"""FedPNAS and meta-FedPNAS: the split forward, the personalised part kept in the client
state and picked up again, the first-order meta step of the base, and meta-FedPNAS's
shared FedMetaNAS learners and soft pruning."""

from __future__ import annotations

import torch
from helpers import client_data, darts_unit_config

from fednas_mpi.algorithms import DataInfo, GlobalModel, RoundContext
from fednas_mpi.algorithms.fedpnas import FedPNAS, MetaFedPNAS, split_forward


def _cfg(name: str = "fedpnas", rounds: int = 3, **extra):
    return darts_unit_config(name, rounds, **extra)


INFO = DataInfo((1, 8, 8), 10)


def test_split_forward_with_the_global_logits_is_the_plain_forward():
    algo = FedPNAS(_cfg(), INFO)
    model = algo.init_global()
    net = algo._net(model)
    net.eval()
    personal = {
        f"p{k}_{c}": model.state[f"{k}_{c}"]
        for k in ("alpha", "beta")
        for c in ("normal", "reduce")
    }
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(split_forward(net, x, personal, 2), net(x))
    other = {k: v + torch.randn(v.shape) for k, v in personal.items()}
    assert not torch.allclose(split_forward(net, x, other, 2), net(x))
    # the personalised logits only reach the cells from first_personal on
    torch.testing.assert_close(split_forward(net, x, other, 3), net(x))


def test_personal_part_persists_and_only_it_is_kept():
    algo = FedPNAS(_cfg(), INFO)
    assert algo.first_personal == 2
    model = algo.init_global()
    ctx = RoundContext(0, 3, 5, "search")
    r1 = algo.client_update(model, client_data(1), ctx, None)
    kept = r1.client_state
    assert set(kept) == {k for k in model.state if algo.is_personal(k)} | {
        "palpha_normal",
        "palpha_reduce",
        "pbeta_normal",
        "pbeta_reduce",
    }
    assert all(k.startswith(("cells.2.", "classifier.", "palpha_", "pbeta_")) for k in kept)
    # the personalised part trained (inner steps), and so did the base (meta step)
    assert not torch.equal(kept["classifier.weight"], model.state["classifier.weight"])
    # the personalised cell (cell 2) is a reduction cell: only its logits move
    assert not torch.equal(kept["palpha_reduce"], model.state["alpha_reduce"])
    assert torch.equal(kept["palpha_normal"], model.state["alpha_normal"])
    assert not torch.equal(r1.state["stem.0.weight"], model.state["stem.0.weight"])
    assert not torch.equal(r1.state["alpha_normal"], model.state["alpha_normal"])
    # next round the client starts from what it kept, not from the global part
    ctx2 = RoundContext(1, 3, 5, "search")
    mine = algo.personal_state(model, kept)
    for k in kept:
        assert torch.equal(mine[k], kept[k]), k
    r2 = algo.client_update(model, client_data(1), ctx2, kept)
    fresh = algo.client_update(model, client_data(1), ctx2, None)
    assert not torch.equal(
        r2.client_state["classifier.weight"], fresh.client_state["classifier.weight"]
    )
    # deterministic
    again = algo.client_update(model, client_data(1), ctx2, kept)
    for k in r2.state:
        assert torch.equal(r2.state[k], again.state[k]), k


def test_meta_fedpnas_shares_fedmetanas_and_prunes():
    cfg = _cfg(
        "meta_fedpnas",
        fedmetanas={"prune_start": 1, "prune_every": 1, "prune_gap": 2.0, "combo_prune_gap": 0.0},
    )
    algo = MetaFedPNAS(cfg, INFO)
    model = algo.init_global()
    assert algo.temperature(0) == algo.meta.temperature(0)
    ctx = RoundContext(0, 3, 5, "search")
    res = algo.client_update(model, client_data(1), ctx, None)
    assert res.client_state is not None and "palpha_normal" in res.client_state
    state = dict(res.state)
    alpha = torch.zeros_like(state["alpha_normal"])
    alpha[:, 4] = 4.0  # sep_conv_3x3 dominates: every other op lies 4 > 2 below it
    state["alpha_normal"] = alpha
    metrics: dict[str, float] = {}
    new = algo.server_step(model, state, metrics, ctx)
    assert new.spec != model.spec
    assert metrics["ops_alive"] < 80
    assert set(new.state) < set(state)
    # a client with a state from before the pruning still fits the pruned network
    r2 = algo.client_update(new, client_data(1), RoundContext(1, 3, 5, "search"), res.client_state)
    assert set(r2.state) == set(new.state)
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    assert 0.0 <= algo.evaluate(GlobalModel(new.spec, r2.state, new.server_state), x, y)[1] <= 1


def _accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


def test_personal_accuracy_is_the_clients_own_part_on_the_global_base():
    """Table 5: a sampled client is scored with its kept personalised part (cells,
    classifier, logits) on the current global base, without noise at the server's
    temperature; a client never sampled with the global model."""
    algo = FedPNAS(_cfg(), INFO)
    model = algo.init_global()
    data = client_data(1, n=32, n_eval=200)
    ctx = RoundContext(0, 3, 5, "search")
    kept = algo.client_update(model, data, ctx, None).client_state
    # by hand: the global network, the kept part loaded over it, the kept logits
    net = algo._net(model)
    net.load_state_dict({k: v for k, v in kept.items() if not k.startswith("p")}, strict=False)
    net.set_sampling(float(model.server_state["temperature"]), None)
    net.eval()
    logits = {k: v for k, v in kept.items() if k.startswith(("palpha_", "pbeta_"))}
    with torch.no_grad():
        by_hand = float(
            (split_forward(net, data.eval_x, logits, 2).argmax(1) == data.eval_y).double().mean()
        )
    mine = algo.personal_accuracy(model, data, kept, ctx)
    assert mine == by_hand
    glob = algo.personal_accuracy(model, data, None, ctx)
    assert glob == algo.evaluate(model, data.eval_x, data.eval_y)[1]
    assert mine != glob
    # scoring changes neither the global model nor the client state
    assert algo.personal_accuracy(model, data, kept, ctx) == mine
    assert algo.evaluate(model, data.eval_x, data.eval_y)[1] == glob
