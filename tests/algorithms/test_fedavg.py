"""FedAvg's client update against a plain PyTorch reference with hand-written SGD."""

import torch
from torch.nn import functional as F

from fednas_mpi.algorithms import ClientData, DataInfo, RoundContext
from fednas_mpi.algorithms.fedavg import FedAvg
from fednas_mpi.config import from_dict
from fednas_mpi.models import SmallCNN
from fednas_mpi.seeding import torch_rng


def _setup(epochs=2, momentum=0.9, wd=1e-3):
    cfg = from_dict(
        {
            "algorithm": {
                "local_epochs": epochs,
                "batch_size": 8,
                "lr": 0.1,
                "momentum": momentum,
                "weight_decay": wd,
            },
            "model": {"channels": [4, 6], "hidden": 10},
            "run": {"seed": 3},
        }
    )
    algo = FedAvg(cfg, DataInfo((1, 8, 8), 10))
    g = torch.Generator().manual_seed(0)
    data = ClientData(
        4,
        torch.randn(19, 1, 8, 8, generator=g),
        torch.randint(0, 10, (19,), generator=g),
        torch.randn(5, 1, 8, 8, generator=g),
        torch.randint(0, 10, (5,), generator=g),
    )
    return cfg, algo, data


def _reference(cfg, state, data, ctx):
    a = cfg.algorithm
    net = SmallCNN((1, 8, 8), 10, cfg.model.channels, cfg.model.hidden)
    net.load_state_dict(state)
    params = list(net.parameters())
    bufs = [torch.zeros_like(p) for p in params]
    g = torch_rng(ctx.seed, ctx.round, data.client_id, "fedavg.batches")
    for _ in range(a.local_epochs):
        order = torch.randperm(len(data.train_y), generator=g)
        for start in range(0, len(order), a.batch_size):
            idx = order[start : start + a.batch_size]
            loss = F.cross_entropy(net(data.train_x[idx]), data.train_y[idx])
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for p, gr, b in zip(params, grads, bufs):
                    d = gr + a.weight_decay * p
                    b.mul_(a.momentum).add_(d)  # first step: b = d, as b starts at 0
                    p.sub_(a.lr * b)
    return net.state_dict()


def test_client_update_matches_plain_sgd_reference():
    cfg, algo, data = _setup()
    gm = algo.init_global()
    before = {k: v.clone() for k, v in gm.state.items()}
    ctx = RoundContext(round=2, rounds=5, seed=cfg.run.seed, stage="train")
    res = algo.client_update(gm, data, ctx, None)
    ref = _reference(cfg, before, data, ctx)
    assert res.weight == 19.0 and res.client_state is None
    for k in ref:
        torch.testing.assert_close(res.state[k], ref[k], rtol=1e-5, atol=1e-6)
    # the global model handed in is not modified
    for k in before:
        assert torch.equal(gm.state[k], before[k])
    assert set(res.metrics) == set(FedAvg.client_metrics)


def test_client_update_is_deterministic_and_depends_on_round():
    cfg, algo, data = _setup(epochs=1)
    gm = algo.init_global()
    r1 = algo.client_update(gm, data, RoundContext(1, 5, cfg.run.seed, "train"), None)
    r1b = FedAvg(cfg, algo.info).client_update(
        gm, data, RoundContext(1, 5, cfg.run.seed, "train"), None
    )
    r2 = algo.client_update(gm, data, RoundContext(2, 5, cfg.run.seed, "train"), None)
    assert all(torch.equal(r1.state[k], r1b.state[k]) for k in r1.state)
    assert any(not torch.equal(r1.state[k], r2.state[k]) for k in r1.state)


def test_init_depends_only_on_seed():
    cfg, algo, _ = _setup()
    other = FedAvg(
        from_dict({"model": {"channels": [4, 6], "hidden": 10}, "run": {"seed": 4}}), algo.info
    )
    same = FedAvg(cfg, algo.info)
    s1, s2, s3 = algo.init_global().state, same.init_global().state, other.init_global().state
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert any(not torch.equal(s1[k], s3[k]) for k in s1)


def test_evaluate_counts_correct_predictions():
    cfg, algo, data = _setup()
    gm = algo.init_global()
    net = SmallCNN((1, 8, 8), 10, cfg.model.channels, cfg.model.hidden)
    net.load_state_dict(gm.state)
    with torch.no_grad():
        out = net(data.train_x)
    expect_acc = int((out.argmax(1) == data.train_y).sum()) / len(data.train_y)
    expect_loss = F.cross_entropy(out, data.train_y).item()
    loss, acc = algo.evaluate(gm, data.train_x, data.train_y)
    assert abs(acc - expect_acc) < 1e-9 and abs(loss - expect_loss) < 1e-5
