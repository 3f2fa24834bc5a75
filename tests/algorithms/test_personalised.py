"""MobileNetV3 body/head split and the client updates of per-FedAvg, FedRep and FedBABU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fednas_mpi.algorithms import ClientData, DataInfo, RoundContext, get_algorithm
from fednas_mpi.algorithms.perfedavg import batch_groups, meta_step
from fednas_mpi.config import ConfigError, from_dict
from fednas_mpi.models import MobileNetV3Net, SmallCNN, build_model, split_state

MOBILE = {"name": "mobilenet_v3_small", "mobilenet": {"width_mult": 0.25}}


def _cfg(method: str, model: dict | None = None, **algorithm) -> object:
    return from_dict(
        {
            "run": {"seed": 3},
            "model": model or MOBILE,
            "algorithm": {
                "name": method,
                "batch_size": 8,
                "lr": 0.1,
                "local_epochs": 1,
                **algorithm,
            },
        }
    )


def _data(cid=2, n=24, shape=(1, 8, 8), classes=10, seed=0) -> ClientData:
    g = torch.Generator().manual_seed(seed)
    return ClientData(
        cid,
        torch.randn(n, *shape, generator=g),
        torch.randint(0, classes, (n,), generator=g),
        torch.randn(10, *shape, generator=g),
        torch.randint(0, classes, (10,), generator=g),
    )


CTX = RoundContext(round=1, rounds=4, seed=3, stage="train")


# ---------------------------------------------------------------- models


@pytest.mark.parametrize(
    "name,shape,down",
    [
        ("mobilenet_v3_small", (1, 8, 8), 4),
        ("mobilenet_v3_small", (1, 14, 14), 8),
        ("mobilenet_v3_small", (1, 28, 28), 16),
        ("mobilenet_v3_large", (3, 32, 32), 16),
        ("mobilenet_v3_large", (3, 96, 96), 32),
    ],
)
def test_mobilenet_adapts_to_input_and_splits_body_and_head(name, shape, down):
    cfg = from_dict({"model": {"name": name, "mobilenet": {"width_mult": 0.25}}}).model
    net = build_model(cfg, shape, 7, torch.Generator().manual_seed(0))
    assert isinstance(net, MobileNetV3Net) and net.downsampling == down
    # the stem takes the dataset's channels; the head is one linear classifier
    assert net.body[0][0][0].in_channels == shape[0]
    assert isinstance(net.head, nn.Linear) and net.head.out_features == 7
    x = torch.randn(3, *shape)
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (3, 7)
        torch.testing.assert_close(net(x), net.head(net.body(x)))
        assert net.body[0](x).shape[-1] >= 2  # last feature map at least 2x2
    body, head = split_state(net.state_dict())
    assert list(head) == ["head.weight", "head.bias"]
    assert all(k.startswith("body.") for k in body) and len(body) + 2 == len(net.state_dict())
    # BatchNorm running statistics are buffers of the body, so they travel with it
    assert any(k.endswith("running_mean") for k in body)
    assert not any(isinstance(m, nn.Dropout) and m.p > 0 for m in net.modules())


def test_mobilenet_init_depends_only_on_seed():
    cfg = from_dict({"model": MOBILE}).model
    nets = []
    for global_seed, s in ((100, 1), (200, 1), (100, 2)):
        torch.manual_seed(global_seed)  # the global RNG plays no part
        nets.append(build_model(cfg, (1, 8, 8), 10, torch.Generator().manual_seed(s)))
    a, b, c = nets
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_small_cnn_has_the_same_split():
    net = SmallCNN((1, 8, 8), 10, [4, 8], 16)
    body, head = split_state(net.state_dict())
    assert body and head and all(k.startswith("body.") for k in body)


def test_config_pairs_methods_with_models():
    for method in ("fedavg", "perfedavg", "fedrep", "fedbabu"):
        for model in ("cnn", "mobilenet_v3_small", "mobilenet_v3_large"):
            from_dict({"algorithm": {"name": method}, "model": {"name": model}})
        with pytest.raises(ConfigError, match="fixed model"):
            from_dict({"algorithm": {"name": method}, "model": {"name": "darts"}})
    with pytest.raises(ConfigError, match="searches an architecture"):
        from_dict({"algorithm": {"name": "fedmetanas"}, "model": {"name": "mobilenet_v3_small"}})
    with pytest.raises(ConfigError, match="variant"):
        from_dict({"algorithm": {"perfedavg": {"variant": "exact"}}})


# ---------------------------------------------------------------- FedRep


def test_fedrep_head_never_leaves_the_client():
    cfg = _cfg("fedrep", fedrep={"head_epochs": 2})
    algo = get_algorithm("fedrep")(cfg, DataInfo((1, 8, 8), 10))
    gm = algo.init_global()
    assert gm.state and not any(k.startswith("head.") for k in gm.state)
    before = {k: v.clone() for k, v in gm.state.items()}
    data = _data()
    res = algo.client_update(gm, data, CTX, None)
    # what is sent back and averaged: the body only; the head is client state
    assert list(res.state) == list(gm.state)
    assert set(res.client_state) == {"head.weight", "head.bias"}
    assert any(not torch.equal(res.state[k], before[k]) for k in before)
    init = algo.init_head
    assert not torch.equal(res.client_state["head.weight"], init["head.weight"])
    assert all(torch.equal(gm.state[k], before[k]) for k in before)  # input untouched
    # the next round starts from the client's own head, not the initial one
    again = algo.client_update(gm, data, CTX, res.client_state)
    fresh = algo.client_update(gm, data, CTX, None)
    assert torch.equal(fresh.client_state["head.weight"], res.client_state["head.weight"])
    assert not torch.equal(again.client_state["head.weight"], res.client_state["head.weight"])
    # personalisation and the global evaluation change nothing stored
    head = {k: v.clone() for k, v in res.client_state.items()}
    acc = algo.personal_accuracy(gm, data, res.client_state, CTX)
    assert 0.0 <= acc <= 1.0 and acc == algo.personal_accuracy(gm, data, head, CTX)
    assert all(torch.equal(head[k], res.client_state[k]) for k in head)
    loss, acc = algo.evaluate_global(gm, data.eval_x, data.eval_y, {2: res.client_state})
    assert np.isfinite(loss) and 0.0 <= acc <= 1.0


# ---------------------------------------------------------------- FedBABU


def test_fedbabu_head_stays_frozen_at_its_initialisation():
    cfg = _cfg("fedbabu", local_epochs=2)
    algo = get_algorithm("fedbabu")(cfg, DataInfo((1, 8, 8), 10))
    gm = algo.init_global()
    init = {k: v.clone() for k, v in gm.state.items()}
    res = algo.client_update(gm, _data(), CTX, None)
    body, head = split_state(res.state)
    assert list(head) == ["head.weight", "head.bias"]
    for k in head:
        assert torch.equal(head[k], init[k]), k  # bit-equal
    assert any(not torch.equal(body[k], init[k]) for k in body)
    assert res.client_state is None
    # the process's model is left with all parameters trainable again
    assert all(p.requires_grad for p in algo._model().parameters())
    # fine-tuning the head for evaluation moves it, but not the global model
    acc = algo.personal_accuracy(gm, _data(), None, CTX)
    assert 0.0 <= acc <= 1.0
    assert all(torch.equal(gm.state[k], init[k]) for k in init)


# ---------------------------------------------------------------- per-FedAvg


def _ce_grad(W, b, x, y):
    """Hand gradient of the mean cross-entropy of softmax(x W^T + b) (numpy, float64)."""
    z = x @ W.T + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return p.T @ x / len(y), p.mean(0)


@pytest.mark.parametrize("variant", ["first_order", "hessian_free"])
def test_perfedavg_step_matches_hand_computation(variant):
    rng = np.random.default_rng(0)
    W, b = rng.normal(size=(3, 4)), rng.normal(size=3)
    xs = [rng.normal(size=(5, 4)) for _ in range(3)]
    ys = [rng.integers(0, 3, size=5) for _ in range(3)]
    alpha, beta, delta = 0.3, 0.5, 1e-4
    # hand: w_tmp = w - alpha g(w; D1); g = g(w_tmp; D2); HF: g -= alpha * finite-diff H g
    gW, gb = _ce_grad(W, b, xs[0], ys[0])
    dW, db = _ce_grad(W - alpha * gW, b - alpha * gb, xs[1], ys[1])
    if variant == "hessian_free":
        pW, pb = _ce_grad(W + delta * dW, b + delta * db, xs[2], ys[2])
        mW, mb = _ce_grad(W - delta * dW, b - delta * db, xs[2], ys[2])
        dW, db = dW - alpha * (pW - mW) / (2 * delta), db - alpha * (pb - mb) / (2 * delta)
    expect_W, expect_b = W - beta * dW, b - beta * db

    net = nn.Linear(4, 3).double()
    with torch.no_grad():
        net.weight.copy_(torch.from_numpy(W))
        net.bias.copy_(torch.from_numpy(b))
    params = list(net.parameters())
    opt = torch.optim.SGD(params, lr=beta)
    batches = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in zip(xs, ys)]
    meta_step(net, params, batches, alpha, opt, variant == "hessian_free", delta)
    np.testing.assert_allclose(net.weight.detach().numpy(), expect_W, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(net.bias.detach().numpy(), expect_b, rtol=1e-10, atol=1e-10)
    if variant == "hessian_free":
        # and the finite difference is close to the exact Hessian-vector product
        w0 = torch.from_numpy(np.concatenate([W.ravel(), b]))

        def loss(w):
            z = batches[2][0] @ w[:12].reshape(3, 4).T + w[12:]
            return nn.functional.cross_entropy(z, batches[2][1])

        def grad(w, x, y):
            gw, gb_ = _ce_grad(w[:12].reshape(3, 4), w[12:], x, y)
            return np.concatenate([gw.ravel(), gb_])

        wn = w0.numpy()
        g1 = grad(wn, xs[0], ys[0])
        v = grad(wn - alpha * g1, xs[1], ys[1])
        _, hv = torch.autograd.functional.hvp(loss, w0, torch.from_numpy(v))
        exact = wn - beta * (v - alpha * hv.numpy())
        got = np.concatenate([net.weight.detach().numpy().ravel(), net.bias.detach().numpy()])
        np.testing.assert_allclose(got, exact, atol=1e-7)


def test_batch_groups_are_disjoint_and_seeded():
    g = torch.Generator().manual_seed(0)
    groups = batch_groups(50, 8, 3, g)
    assert len(groups) == 2 and all(len(b) == 8 for gr in groups for b in gr)
    flat = torch.cat([b for gr in groups for b in gr])
    assert len(set(flat.tolist())) == len(flat)
    # a client smaller than one group still takes a step, on smaller batches
    small = batch_groups(7, 8, 2, torch.Generator().manual_seed(0))
    assert len(small) == 1 and [len(b) for b in small[0]] == [3, 3]


@pytest.mark.parametrize("variant", ["first_order", "hessian_free"])
def test_perfedavg_client_update_is_deterministic(variant):
    cfg = _cfg(
        "perfedavg",
        model={"name": "cnn", "channels": [4], "hidden": 8},
        perfedavg={"variant": variant, "alpha": 0.05},
    )
    algo = get_algorithm("perfedavg")(cfg, DataInfo((1, 8, 8), 10))
    gm = algo.init_global()
    data = _data()
    a = algo.client_update(gm, data, CTX, None)
    b = get_algorithm("perfedavg")(cfg, DataInfo((1, 8, 8), 10)).client_update(gm, data, CTX, None)
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)
    assert any(not torch.equal(a.state[k], gm.state[k]) for k in gm.state)
    assert np.isfinite(a.metrics["train_loss"]) and a.client_state is None
    acc = algo.personal_accuracy(gm, data, None, CTX)
    assert acc == algo.personal_accuracy(gm, data, None, CTX)


def test_fedavg_personal_accuracy_is_the_global_model_on_the_eval_split():
    cfg = _cfg("fedavg")
    algo = get_algorithm("fedavg")(cfg, DataInfo((1, 8, 8), 10))
    gm = algo.init_global()
    data = _data()
    assert (
        algo.personal_accuracy(gm, data, None, CTX)
        == algo.evaluate(gm, data.eval_x, data.eval_y)[1]
    )


def test_perfedavg_client_update_takes_meta_steps_on_seeded_batch_groups():
    """The client update is meta_step over batch_groups of the client's seeded stream."""
    from fednas_mpi.seeding import torch_rng

    cfg = _cfg(
        "perfedavg",
        model={"name": "cnn", "channels": [4], "hidden": 8},
        local_epochs=2,
        momentum=0.0,
        perfedavg={"variant": "hessian_free"},
    )
    algo = get_algorithm("perfedavg")(cfg, DataInfo((1, 8, 8), 10))
    gm = algo.init_global()
    data = _data(n=40)
    res = algo.client_update(gm, data, CTX, None)
    ref = get_algorithm("perfedavg")(cfg, DataInfo((1, 8, 8), 10))
    net = ref.load(gm.state)
    net.train()
    params = list(net.parameters())
    opt = torch.optim.SGD(params, lr=cfg.algorithm.lr)
    g = torch_rng(CTX.seed, CTX.round, data.client_id, "perfedavg.batches")
    steps = 0
    for _ in range(2):
        for group in batch_groups(40, 8, 3, g):
            meta_step(
                net,
                params,
                [(data.train_x[i], data.train_y[i]) for i in group],
                cfg.algorithm.perfedavg.alpha,
                opt,
                True,
                cfg.algorithm.perfedavg.hf_delta,
            )
            steps += 1
    assert steps == 2 * (40 // 24)
    for k, v in net.state_dict().items():
        assert torch.equal(res.state[k], v), k
