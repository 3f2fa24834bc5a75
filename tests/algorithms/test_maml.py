"""First-order MAML (eq. 9-10) against hand computations, task sampling, and FedMetaNAS's
client update and server step on a tiny search space."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from helpers import client_data, darts_unit_config
from torch import nn
from torch.nn import functional as F

from fednas_mpi.algorithms import ClientData, DataInfo, GlobalModel, RoundContext
from fednas_mpi.algorithms.common.maml import MetaLearner, TaskLearner
from fednas_mpi.algorithms.common.tasks import task_pairs
from fednas_mpi.algorithms.fedmetanas import FedMetaNAS
from fednas_mpi.nas import PRIMITIVES, CellSpace, SearchNetwork
from fednas_mpi.seeding import torch_rng

CELLS = ("normal", "reduce")
ARCH = ("alpha_normal", "alpha_reduce", "beta_normal", "beta_reduce")


# ---------------------------------------------------------------- scalar model by hand


class Affine(nn.Module):
    """f(x) = w * x + a: ``w`` plays a weight, ``a`` an architecture parameter."""

    def __init__(self, w: float, a: float):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))
        self.a = nn.Parameter(torch.tensor(a, dtype=torch.float64))

    def forward(self, x):
        return self.w * x + self.a


def _mse(model, x, y):
    return lambda: (
        (model(torch.tensor(x, dtype=torch.float64)) - torch.tensor(y, dtype=torch.float64)) ** 2
    ).mean()


def _loss(w, a, xs, ys):
    return sum((w * x + a - y) ** 2 for x, y in zip(xs, ys)) / len(xs)


def _grad(w, a, xs, ys):
    # d/dw mean (w x + a - y)^2 = mean 2 (w x + a - y) x ; d/da = mean 2 (w x + a - y)
    gw = sum(2 * (w * x + a - y) * x for x, y in zip(xs, ys)) / len(xs)
    ga = sum(2 * (w * x + a - y) for x, y in zip(xs, ys)) / len(xs)
    return gw, ga


def _hand_inner(w, a, lr_w, lr_a, steps, sup, qry):
    """M joint steps (eq. 9), then the query loss and gradient at the adapted point."""
    s_loss = None
    for _ in range(steps):
        s_loss = _loss(w, a, *sup)
        gw, ga = _grad(w, a, *sup)  # both from the same point: one backward pass
        w, a = w - lr_w * gw, a - lr_a * ga
    return s_loss, _loss(w, a, *qry), _grad(w, a, *qry), (w, a)


SUP = ([1.0, -2.0, 0.5], [2.0, -1.0, 0.3])
QRY = ([3.0, -0.5], [1.5, 0.2])


def test_one_first_order_maml_step_by_hand():
    w0, a0 = 0.5, -0.3
    lr_w, lr_a, mlr_w, mlr_a = 0.1, 0.3, 0.05, 0.7
    model = Affine(w0, a0)
    task = TaskLearner([([model.w], lr_w), ([model.a], lr_a)], steps=2)
    opt = torch.optim.SGD(
        [{"params": [model.w], "lr": mlr_w}, {"params": [model.a], "lr": mlr_a}], momentum=0.0
    )
    meta = MetaLearner([model.w, model.a], opt)
    s_loss, q_loss = meta.step(task, _mse(model, *SUP), _mse(model, *QRY))

    # by hand, written out: step 1 from (w0, a0), step 2 from (w1, a1)
    gw0 = (
        2 * (w0 * 1.0 + a0 - 2.0) * 1.0
        + 2 * (w0 * -2.0 + a0 + 1.0) * -2.0
        + 2 * (w0 * 0.5 + a0 - 0.3) * 0.5
    ) / 3
    ga0 = (2 * (w0 * 1.0 + a0 - 2.0) + 2 * (w0 * -2.0 + a0 + 1.0) + 2 * (w0 * 0.5 + a0 - 0.3)) / 3
    w1, a1 = w0 - lr_w * gw0, a0 - lr_a * ga0
    gw1, ga1 = _grad(w1, a1, *SUP)
    w2, a2 = w1 - lr_w * gw1, a1 - lr_a * ga1
    gqw = (2 * (w2 * 3.0 + a2 - 1.5) * 3.0 + 2 * (w2 * -0.5 + a2 - 0.2) * -0.5) / 2
    gqa = (2 * (w2 * 3.0 + a2 - 1.5) + 2 * (w2 * -0.5 + a2 - 0.2)) / 2
    assert (gw0, ga0) == pytest.approx(_grad(w0, a0, *SUP), rel=1e-12)
    # the meta update acts on the ORIGINAL parameters (eq. 10, first order)
    want_w, want_a = w0 - mlr_w * gqw, a0 - mlr_a * gqa
    assert model.w.item() == pytest.approx(want_w, rel=1e-6)
    assert model.a.item() == pytest.approx(want_a, rel=1e-6)
    assert abs(model.w.item() - w2) > 1e-3 and abs(model.a.item() - a2) > 1e-3
    # (last support loss computed in the inner loop, i.e. at (w1, a1); query loss at (w2, a2))
    assert s_loss == pytest.approx(_loss(w1, a1, *SUP), rel=1e-6)
    assert q_loss == pytest.approx(_loss(w2, a2, *QRY), rel=1e-6)
    assert (s_loss, q_loss) == pytest.approx(
        _hand_inner(w0, a0, lr_w, lr_a, 2, SUP, QRY)[:2], rel=1e-6
    )
    assert model.w.grad is None and model.a.grad is None  # zeroed after the step


def test_single_inner_step_reports_the_loss_at_the_start():
    model = Affine(1.0, 0.0)
    task = TaskLearner([([model.w, model.a], 0.2)], steps=1)
    meta = MetaLearner([model.w, model.a], torch.optim.SGD([model.w, model.a], lr=0.1))
    s_loss, q_loss = meta.step(task, _mse(model, *SUP), _mse(model, *QRY))
    s, q, (gw, ga), _ = _hand_inner(1.0, 0.0, 0.2, 0.2, 1, SUP, QRY)
    assert s_loss == pytest.approx(_loss(1.0, 0.0, *SUP), rel=1e-9) and s == s_loss
    assert q_loss == pytest.approx(q, rel=1e-9)
    assert model.w.item() == pytest.approx(1.0 - 0.1 * gw, rel=1e-9)
    assert model.a.item() == pytest.approx(0.0 - 0.1 * ga, rel=1e-9)


@pytest.mark.parametrize("kind", ["sgd_momentum", "adam"])
def test_meta_update_is_the_optimiser_applied_to_the_first_order_gradient(kind):
    lr_w, lr_a = 0.05, 0.2

    def make_opt(w, a):
        groups = [
            {"params": [w], "lr": 0.03, "weight_decay": 0.01},
            {"params": [a], "lr": 0.4, "weight_decay": 0.0},
        ]
        if kind == "adam":
            return torch.optim.Adam(groups, betas=(0.8, 0.999))
        return torch.optim.SGD(groups, momentum=0.9)

    model = Affine(0.4, 0.1)
    task = TaskLearner([([model.w], lr_w), ([model.a], lr_a)], steps=3)
    meta = MetaLearner([model.w, model.a], make_opt(model.w, model.a))
    ref_w = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    ref_a = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    ref_opt = make_opt(ref_w, ref_a)
    tasks = [(SUP, QRY), (QRY, SUP), (([0.2, 1.0], [0.0, 1.0]), ([2.0], [2.5]))]
    for sup, qry in tasks:
        s_loss, q_loss = meta.step(task, _mse(model, *sup), _mse(model, *qry))
        s, q, (gw, ga), _ = _hand_inner(ref_w.item(), ref_a.item(), lr_w, lr_a, 3, sup, qry)
        ref_w.grad = torch.tensor(gw, dtype=torch.float64)
        ref_a.grad = torch.tensor(ga, dtype=torch.float64)
        ref_opt.step()
        assert model.w.item() == pytest.approx(ref_w.item(), rel=1e-6)
        assert model.a.item() == pytest.approx(ref_a.item(), rel=1e-6)
        assert (s_loss, q_loss) == pytest.approx((s, q), rel=1e-6)


def _linear_loss(p, q, c, d):
    return lambda: (p * c).sum() + (q * d).sum()


def test_task_learner_clips_the_global_norm():
    c, d = torch.tensor([3.0, 0.0, 4.0]), torch.tensor([12.0, 0.0])  # global norm 13
    for clip, scale in [(1.3, 1.3 / (13.0 + 1e-6)), (100.0, 1.0), (0.0, 1.0)]:
        p = nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
        q = nn.Parameter(torch.tensor([-1.0, 0.5]))
        unused = nn.Parameter(torch.tensor([7.0]))
        task = TaskLearner([([p], 0.5), ([q, unused], 2.0)], steps=2, grad_clip=clip)
        task.adapt(_linear_loss(p, q, c, d))
        # constant gradient, clipped jointly over both groups before the per-group rates
        torch.testing.assert_close(p.detach(), torch.tensor([1.0, 2.0, 3.0]) - 2 * 0.5 * scale * c)
        torch.testing.assert_close(q.detach(), torch.tensor([-1.0, 0.5]) - 2 * 2.0 * scale * d)
        assert unused.item() == 7.0
    clipped = torch.cat([c, d]) * 1.3 / (13.0 + 1e-6)
    assert float(torch.linalg.vector_norm(clipped)) <= 1.3


def test_meta_learner_clips_the_global_norm():
    c, d = torch.tensor([3.0, 0.0, 4.0]), torch.tensor([12.0, 0.0])
    for clip in (1.3, 50.0):
        p = nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
        q = nn.Parameter(torch.tensor([-1.0, 0.5]))
        unused = nn.Parameter(torch.tensor([7.0]))
        task = TaskLearner([([p, q, unused], 0.01)], steps=1)
        opt = torch.optim.SGD([p, q, unused], lr=1.0)
        meta = MetaLearner([p, q, unused], opt, grad_clip=clip)
        meta.step(task, _linear_loss(p, q, c, d), _linear_loss(p, q, c, d))
        step = torch.cat(
            [torch.tensor([1.0, 2.0, 3.0]) - p.detach(), torch.tensor([-1.0, 0.5]) - q.detach()]
        )
        want = torch.cat([c, d]) * min(1.0, clip / (13.0 + 1e-6))
        torch.testing.assert_close(step, want)
        assert float(torch.linalg.vector_norm(step)) <= max(clip, 13.0) + 1e-5
        assert unused.item() == 7.0  # no gradient: untouched, no error


def test_parameters_get_the_meta_update_and_buffers_keep_the_adapted_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 1)).double()
    ref = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    xs, ys = torch.randn(6, 3, generator=g).double(), torch.randn(6, 1, generator=g).double()
    xq, yq = torch.randn(5, 3, generator=g).double(), torch.randn(5, 1, generator=g).double()
    w_params = [model[0].weight, model[0].bias, model[3].weight, model[3].bias]
    a_params = [model[1].weight, model[1].bias]  # BN affine plays alpha here
    task = TaskLearner([(w_params, 0.1), (a_params, 0.5)], steps=2)
    opt = torch.optim.SGD([{"params": w_params, "lr": 0.05}, {"params": a_params, "lr": 0.3}])
    meta = MetaLearner(w_params + a_params, opt)
    meta.step(task, lambda: F.mse_loss(model(xs), ys), lambda: F.mse_loss(model(xq), yq))

    # plain PyTorch reference
    r_w = [ref[0].weight, ref[0].bias, ref[3].weight, ref[3].bias]
    r_a = [ref[1].weight, ref[1].bias]
    params = r_w + r_a
    lrs = [0.1] * 4 + [0.5] * 2
    original = [p.detach().clone() for p in params]
    for _ in range(2):
        grads = torch.autograd.grad(F.mse_loss(ref(xs), ys), params)
        with torch.no_grad():
            for p, gr, lr in zip(params, grads, lrs):
                p -= lr * gr
    adapted = [p.detach().clone() for p in params]
    grads = torch.autograd.grad(F.mse_loss(ref(xq), yq), params)
    with torch.no_grad():
        for p, p0, gr, lr in zip(params, original, grads, [0.05] * 4 + [0.3] * 2):
            p.copy_(p0 - lr * gr)
    for (k, v), (k2, v2) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert k == k2
        torch.testing.assert_close(v, v2, rtol=1e-9, atol=1e-12)
    for i, (p, p_adapted) in enumerate(zip(w_params + a_params, adapted)):
        if i == 1:  # the bias in front of BN gets (up to rounding) no gradient at all
            torch.testing.assert_close(p.detach(), p_adapted)
            continue
        assert not torch.allclose(p.detach(), p_adapted)
    # the running statistics saw 2 support forwards and 1 query forward
    assert int(model[1].num_batches_tracked) == 3
    assert not torch.equal(model[1].running_mean, torch.zeros(4, dtype=torch.float64))


# ---------------------------------------------------------------- task pairs


def test_task_pairs_are_disjoint_slices_of_seeded_permutations():
    n, batch = 50, 4
    pairs = task_pairs(n, batch, 0, torch.Generator().manual_seed(3))
    assert len(pairs) == n // (2 * batch) == 6
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(3))
    seen = []
    for p, (s, q) in enumerate(pairs):
        assert len(s) == len(q) == batch
        assert not set(s.tolist()) & set(q.tolist())
        assert torch.equal(s, perm[8 * p : 8 * p + 4]) and torch.equal(
            q, perm[8 * p + 4 : 8 * p + 8]
        )
        seen += s.tolist() + q.tolist()
    assert len(set(seen)) == len(seen) == 48 and set(seen) <= set(range(n))
    # deterministic for a seeded generator, different for another seed
    again = task_pairs(n, batch, 0, torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for x, y in zip(pairs, again) for a, b in zip(x, y))
    other = task_pairs(n, batch, 0, torch.Generator().manual_seed(4))
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(pairs, other))


def test_task_pairs_more_than_one_permutation_holds():
    g = torch.Generator().manual_seed(0)
    pairs = task_pairs(20, 4, 5, g)  # 2 pairs per permutation: 2 + 2 + 1
    assert len(pairs) == 5
    g2 = torch.Generator().manual_seed(0)
    perms = [torch.randperm(20, generator=g2) for _ in range(3)]
    for p, (s, q) in enumerate(pairs):
        perm, r = perms[p // 2], p % 2
        assert torch.equal(s, perm[8 * r : 8 * r + 4]) and torch.equal(
            q, perm[8 * r + 4 : 8 * r + 8]
        )
        assert not set(s.tolist()) & set(q.tolist())
    for k in (0, 2):  # pairs drawn from one permutation do not overlap
        a = {i for t in pairs[k] for i in t.tolist()}
        b = {i for t in pairs[k + 1] for i in t.tolist()}
        assert not a & b
    assert len(task_pairs(20, 4, 1, torch.Generator().manual_seed(0))) == 1


@pytest.mark.parametrize("n", [2, 5, 7])
def test_small_clients_get_one_pair_of_half_their_data(n):
    pairs = task_pairs(n, 4, 0, torch.Generator().manual_seed(1))
    assert len(pairs) == 1
    s, q = pairs[0]
    assert len(s) == len(q) == n // 2
    assert not set(s.tolist()) & set(q.tolist())


# ---------------------------------------------------------------- FedMetaNAS


def _cfg(rounds: int = 3, **fm):
    return darts_unit_config("fedmetanas", rounds, fedmetanas=fm)


def _ctx(cfg, round_: int) -> RoundContext:
    return RoundContext(round=round_, rounds=cfg.run.rounds, seed=cfg.run.seed, stage="train")


def _clip_(grads, max_norm):
    norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads if g is not None))
    scale = max_norm / (norm + 1e-6)
    if max_norm > 0 and scale < 1.0:
        grads = [None if g is None else g * scale for g in grads]
    return grads


def _reference_client(
    cfg,
    model: GlobalModel,
    data: ClientData,
    ctx: RoundContext,
    lam: float,
    arch_sgd_lr: float | None = None,
):
    """Algorithm 1 lines 11-18 with plain loops: SGD inner steps; for the meta step
    hand-written SGD momentum with weight decay on the weights (learning rates scaled by
    the cosine of the round) and hand-written Adam on the alphas and betas (``arch_sgd_lr``:
    a plain SGD step of that size instead); during the warm-up no Gumbel noise and no
    architecture step."""
    f, d = cfg.algorithm.fedmetanas, cfg.model.darts
    space = CellSpace(d.nodes, d.input_k, tuple(d.primitives))
    net = SearchNetwork(
        1, 10, d.init_channels, d.layers, space, d.stem_multiplier, model.spec["masks"]
    )
    net.load_state_dict({k: v.clone() for k, v in model.state.items()}, strict=False)
    net.train()
    warm = ctx.round < f.arch_warmup_rounds  # alphas and betas frozen, no noise
    net.set_sampling(
        lam, None if warm else torch_rng(ctx.seed, ctx.round, data.client_id, "fedmetanas.gumbel")
    )
    weights, arch = net.weight_parameters(), net.arch_parameters()
    params = weights + arch
    scale = f.weight_lr_min + 0.5 * (1 - f.weight_lr_min) * (
        1 + math.cos(math.pi * ctx.round / (cfg.run.rounds - 1))
    )
    task_lr = [f.task_lr_w * scale] * len(weights) + [0.0 if warm else f.task_lr_alpha] * len(arch)
    decay = [f.weight_decay] * len(weights) + [0.0] * len(arch)
    bufs: list[torch.Tensor | None] = [None] * len(params)
    adam_m = [torch.zeros_like(t) for t in arch]
    adam_v = [torch.zeros_like(t) for t in arch]
    b1, b2 = f.arch_betas
    adam_t = 0
    g_tasks = torch_rng(ctx.seed, ctx.round, data.client_id, "fedmetanas.tasks")
    n, b = data.num_train, cfg.algorithm.batch_size
    s_losses, q_losses = [], []
    for _ in range(cfg.algorithm.local_epochs):
        perm = torch.randperm(n, generator=g_tasks)
        for p in range(n // (2 * b)):
            s, q = perm[2 * p * b : (2 * p + 1) * b], perm[(2 * p + 1) * b : (2 * p + 2) * b]
            original = [t.detach().clone() for t in params]
            for _ in range(f.inner_steps):
                loss = F.cross_entropy(net(data.train_x[s]), data.train_y[s])
                grads = _clip_(torch.autograd.grad(loss, params, allow_unused=True), f.grad_clip)
                with torch.no_grad():
                    for t, gr, lr in zip(params, grads, task_lr):
                        if gr is not None:
                            t -= lr * gr
            s_losses.append(loss.item())
            q_loss = F.cross_entropy(net(data.train_x[q]), data.train_y[q])
            q_losses.append(q_loss.item())
            grads = _clip_(torch.autograd.grad(q_loss, params, allow_unused=True), f.grad_clip)
            adam_t += 1
            with torch.no_grad():
                for i, (t, t0, gr) in enumerate(zip(params, original, grads)):
                    t.copy_(t0)
                    if gr is None:
                        continue
                    if i >= len(weights):  # Adam on alphas and betas
                        if warm:
                            continue
                        if arch_sgd_lr is not None:
                            t -= arch_sgd_lr * gr
                            continue
                        a = i - len(weights)
                        adam_m[a] = b1 * adam_m[a] + (1 - b1) * gr
                        adam_v[a] = b2 * adam_v[a] + (1 - b2) * gr * gr
                        m_hat = adam_m[a] / (1 - b1**adam_t)
                        v_hat = adam_v[a] / (1 - b2**adam_t)
                        t -= f.meta_lr_alpha * m_hat / (v_hat.sqrt() + 1e-8)
                        continue
                    step = gr + decay[i] * t0
                    bufs[i] = step.clone() if bufs[i] is None else f.meta_momentum * bufs[i] + step
                    t -= f.meta_lr_w * scale * bufs[i]
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    return state, sum(s_losses) / len(s_losses), sum(q_losses) / len(q_losses)


def test_client_update_matches_a_plain_reference_and_leaves_the_global_model_alone():
    cfg = _cfg(meta_momentum=0.9, grad_clip=0.5, weight_decay=0.01)
    algo = FedMetaNAS(cfg, DataInfo((1, 8, 8), 10))
    gm = algo.init_global()
    before = {k: v.clone() for k, v in gm.state.items()}
    assert not any(k.endswith("num_batches_tracked") for k in gm.state)
    assert float(gm.server_state["temperature"]) == cfg.algorithm.fedmetanas.temperature_start
    data, ctx = client_data(), _ctx(cfg, 0)
    res = algo.client_update(gm, data, ctx, None)
    assert set(res.state) == set(gm.state)
    assert res.weight == 16.0 and res.client_state is None
    assert set(res.metrics) == {"train_loss", "support_loss", "local_acc"}
    assert 0.0 <= res.metrics["local_acc"] <= 1.0
    for k in before:
        assert torch.equal(gm.state[k], before[k]), k
    for name in ("alpha_normal", "alpha_reduce", "beta_normal", "beta_reduce"):
        assert not torch.equal(res.state[name], before[name]), name
    ref_state, s_mean, q_mean = _reference_client(cfg, gm, data, ctx, 1.0)
    assert set(ref_state) == set(res.state)
    for k, v in ref_state.items():
        torch.testing.assert_close(res.state[k], v, rtol=1e-4, atol=1e-5, msg=k)
    assert res.metrics["support_loss"] == pytest.approx(s_mean, rel=1e-4)
    assert res.metrics["train_loss"] == pytest.approx(q_mean, rel=1e-4)


def test_server_mode_client_update_takes_plain_sgd_meta_steps_on_the_logits():
    cfg = _cfg(arch_update="server", client_arch_lr=0.7, meta_momentum=0.9, grad_clip=0.5)
    algo = FedMetaNAS(cfg, DataInfo((1, 8, 8), 10))
    gm = algo.init_global()
    # the server's moments are in the round-0 server state, one pair per logit
    assert sorted(gm.server_state) == sorted(
        ["temperature", "arch_opt.t"] + [f"arch_opt.{mv}.{k}" for k in ARCH for mv in ("m", "v")]
    )
    data, ctx = client_data(), _ctx(cfg, 0)
    res = algo.client_update(gm, data, ctx, None)
    ref_state, _, _ = _reference_client(cfg, gm, data, ctx, 1.0, arch_sgd_lr=0.7)
    for k, v in ref_state.items():
        torch.testing.assert_close(res.state[k], v, rtol=1e-4, atol=1e-5, msg=k)
    # (the weights' optimiser is the same as in client mode); the logits took no Adam steps
    default = FedMetaNAS(_cfg(meta_momentum=0.9, grad_clip=0.5), DataInfo((1, 8, 8), 10))
    adam = default.client_update(default.init_global(), data, ctx, None)
    for k in ARCH:
        assert not torch.allclose(res.state[k], adam.state[k], rtol=0, atol=1e-4), k


def test_server_mode_server_step_applies_persistent_moments():
    cfg = _cfg(rounds=4, arch_update="server", server_arch_lr=0.2, arch_warmup_rounds=1)
    f = cfg.algorithm.fedmetanas
    b1, b2 = f.server_arch_betas
    algo = FedMetaNAS(cfg, DataInfo((1, 8, 8), 10))
    gm = algo.init_global()
    # warm-up round: logits frozen, no server step (the step count stays 0)
    warm = algo.client_update(gm, client_data(), _ctx(cfg, 0), None)
    m0: dict[str, float] = {}
    after_warm = algo.server_step(gm, warm.state, m0, _ctx(cfg, 0))
    assert "server_arch_step" not in m0
    assert float(after_warm.server_state["arch_opt.t"]) == 0.0
    assert all(torch.equal(after_warm.state[k], gm.state[k]) for k in ARCH)
    # two search rounds on hand-made averages: delta = +d on every logit, then -d / 2
    model, d = after_warm, 0.01
    for r, scale in ((1, 1.0), (2, -0.5)):
        averaged = {k: v.clone() for k, v in model.state.items()}
        for k in ARCH:
            averaged[k] = averaged[k] + scale * d
        metrics: dict[str, float] = {}
        new = algo.server_step(model, averaged, metrics, _ctx(cfg, r))
        t = r  # server steps taken
        assert float(new.server_state["arch_opt.t"]) == t
        # the weights are the average; the logits the global ones plus the server step
        for k in new.state:
            if k not in ARCH:
                assert torch.equal(new.state[k], averaged[k]), k
        if r == 1:
            m, v = (1 - b1) * d, (1 - b2) * d * d
            step = f.server_arch_lr * d / (d + f.server_arch_tau)  # bias-corrected round 1
        else:
            m, v = b1 * m + (1 - b1) * -d / 2, b2 * v + (1 - b2) * d * d / 4
            step = (
                f.server_arch_lr
                * (m / (1 - b1**2))
                / (math.sqrt(v / (1 - b2**2)) + f.server_arch_tau)
            )
        for k in ARCH:
            moved = new.state[k].double() - model.state[k].double()
            torch.testing.assert_close(moved, torch.full_like(moved, step), rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(
                new.server_state[f"arch_opt.m.{k}"], torch.full_like(moved, m), rtol=1e-5, atol=0
            )
        assert metrics["server_arch_step"] == pytest.approx(abs(step), rel=1e-4)
        assert set(new.server_state) == set(gm.server_state)
        model = new
    # round 2 moved the logits forward although its delta was negative: momentum
    assert step > 0


def test_temperature_annealing_and_architecture_warmup(monkeypatch):
    cfg = _cfg(rounds=10, final_round=5, arch_warmup_rounds=1, grad_clip=0.0, temperature_end=0.03)
    algo = FedMetaNAS(cfg, DataInfo((1, 8, 8), 10))
    # exponential from 1.0 to 0.03 over the 5 search rounds, then constant
    assert algo.temperature(0) == 1.0
    assert algo.temperature(2) == pytest.approx(0.03**0.5, rel=1e-12)
    assert [algo.temperature(r) for r in (4, 5, 9)] == pytest.approx([0.03] * 3, rel=1e-12)
    gm = algo.init_global()
    arch = ("alpha_normal", "alpha_reduce", "beta_normal", "beta_reduce")
    data = client_data()
    warm = algo.client_update(gm, data, _ctx(cfg, 0), None)
    for name in arch:  # round 0 is a warm-up round: only the weights learn
        assert torch.equal(warm.state[name], gm.state[name]), name
    assert not torch.equal(warm.state["classifier.weight"], gm.state["classifier.weight"])
    ref, _, _ = _reference_client(cfg, gm, data, _ctx(cfg, 0), 1.0)
    for k, v in ref.items():
        torch.testing.assert_close(warm.state[k], v, rtol=1e-4, atol=1e-5, msg=k)
    # the warm-up is deterministic: no Gumbel noise is drawn in it, only after it (staged
    # before the step loop: common.streams)
    import fednas_mpi.algorithms.common.streams as streams

    draws = []
    real = streams.gumbel_noise
    monkeypatch.setattr(streams, "gumbel_noise", lambda *a, **k: draws.append(1) or real(*a, **k))
    algo.client_update(gm, data, _ctx(cfg, 0), None)
    assert not draws
    later = algo.client_update(gm, data, _ctx(cfg, 2), None)
    assert draws
    assert not torch.equal(later.state["alpha_reduce"], gm.state["alpha_reduce"])
    ref, _, _ = _reference_client(cfg, gm, data, _ctx(cfg, 2), 0.03**0.5)
    for k, v in ref.items():
        torch.testing.assert_close(later.state[k], v, rtol=1e-4, atol=1e-5, msg=k)


def test_client_update_is_a_function_of_seed_round_and_client():
    cfg = _cfg()
    algo = FedMetaNAS(cfg, DataInfo((1, 8, 8), 10))
    gm = algo.init_global()
    data = client_data(n=8)
    a = algo.client_update(gm, data, _ctx(cfg, 0), None)
    # the cached net is reused
    other = algo.client_update(gm, client_data(3, n=8), _ctx(cfg, 0), None)
    b = algo.client_update(gm, data, _ctx(cfg, 0), None)
    c = algo.client_update(gm, data, _ctx(cfg, 1), None)
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)
    assert a.metrics == b.metrics
    assert not all(torch.equal(a.state[k], c.state[k]) for k in a.state)
    assert not torch.equal(a.state["alpha_normal"], other.state["alpha_normal"])


def _check_state_matches_masks(algo: FedMetaNAS, spec: dict, state: dict):
    space = algo.space
    depth = algo.cfg.model.darts.layers
    reductions = {depth // 3, 2 * depth // 3}
    found = set()
    for key in state:
        if ".edges." not in key:
            continue
        parts = key.split(".")  # cells.L.edges.J_I.OP....
        layer, edge, op = int(parts[1]), parts[3], parts[4]
        kind = "reduce" if layer in reductions else "normal"
        j, i = map(int, edge.split("_"))
        assert i in space.live_edges(spec["masks"][kind]["combos"])[j], key
        assert spec["masks"][kind]["ops"][space.edge(j, i)][PRIMITIVES.index(op)], key
        found.add((layer, j, i, op))
    for layer in range(depth):
        kind = "reduce" if layer in reductions else "normal"
        live = space.live_edges(spec["masks"][kind]["combos"])
        for j in range(space.nodes):
            for i in live[j]:
                for k, keep in enumerate(spec["masks"][kind]["ops"][space.edge(j, i)]):
                    name = PRIMITIVES[k]
                    if keep and name not in (
                        "none",
                        "max_pool_3x3",
                        "avg_pool_3x3",
                        "skip_connect",
                    ):
                        assert (layer, j, i, name) in found  # ops with weights are sent
                    if not keep:
                        assert (layer, j, i, name) not in found


def _softmax(values):
    m = max(values)
    ex = [math.exp(v - m) for v in values]
    return [v / sum(ex) for v in ex]


def test_server_step_prunes_and_shrinks_the_state():
    cfg = _cfg(
        prune_start=1, prune_every=1, prune_gap=0.02, combo_prune_gap=0.01, meta_lr_alpha=0.2
    )
    algo = FedMetaNAS(cfg, DataInfo((1, 8, 8), 10))
    gm = algo.init_global()
    res = algo.client_update(gm, client_data(n=8), _ctx(cfg, 0), None)
    averaged = res.state
    metrics: dict[str, float] = {}
    new = algo.server_step(gm, averaged, metrics, _ctx(cfg, 0))
    assert new.spec["genotype"] is None
    assert new.spec["masks"] != gm.spec["masks"]
    assert set(new.state) < set(averaged)
    for k, v in new.state.items():
        assert torch.equal(v, averaged[k])
    lam = cfg.algorithm.fedmetanas.temperature_start  # round 0 of the schedule
    assert float(new.server_state["temperature"]) == pytest.approx(lam)
    space = algo.space
    removed = 0
    for c in CELLS:
        alpha, beta = averaged[f"alpha_{c}"], averaged[f"beta_{c}"]
        for e in range(space.num_edges):
            a = [float(v) for v in alpha[e]]  # by hand: the logit gap, no temperature
            best = max(range(1, 8), key=lambda k, a=a: a[k])
            keep = [max(a) - a[k] <= 0.02 or k == best for k in range(8)]
            assert new.spec["masks"][c]["ops"][e] == keep
            removed += keep.count(False)
        b = [float(v) for v in beta[1:]]
        assert new.spec["masks"][c]["combos"] == [True] + [max(b) - v <= 0.01 for v in b]
    assert metrics["ops_pruned"] == removed > 0
    assert metrics["pruned_gap_min"] > 0.02
    log = new.spec["prune_log"]
    assert sum("op" in x for x in log) == removed and all(x["round"] == 1 for x in log)
    _check_state_matches_masks(algo, new.spec, new.state)
    ops_alive = sum(
        sum(new.spec["masks"][c]["ops"][space.edge(j, i)])
        for c in CELLS
        for j, live in enumerate(space.live_edges(new.spec["masks"][c]["combos"]))
        for i in live
    )
    assert metrics["ops_alive"] == ops_alive
    assert metrics["combos_alive"] == sum(sum(new.spec["masks"][c]["combos"]) for c in CELLS)
    # the pruned model trains and evaluates with its smaller state
    res2 = algo.client_update(new, client_data(n=8), _ctx(cfg, 1), None)
    assert set(res2.state) == set(new.state)
    loss, acc = algo.evaluate(new, torch.randn(6, 1, 8, 8), torch.arange(6))
    assert math.isfinite(loss) and 0.0 <= acc <= 1.0


def test_final_round_derives_the_genotype_and_the_discrete_model_evaluates():
    cfg = _cfg(final_round=1, prune_every=0)
    algo = FedMetaNAS(cfg, DataInfo((1, 8, 8), 10))
    gm = algo.init_global()
    res = algo.client_update(gm, client_data(n=8), _ctx(cfg, 0), None)
    metrics: dict[str, float] = {}
    new = algo.server_step(gm, res.state, metrics, _ctx(cfg, 0))
    geno = new.spec["genotype"]
    assert geno is not None and set(geno) == {"normal", "reduce", "text"}
    assert geno["text"].startswith("normal: s2 = ")
    space = algo.space
    for c in CELLS:
        masks = new.spec["masks"][c]
        live = space.live_edges(masks["combos"])
        assert [len(x) for x in live] == [2, 2]
        for j, combos in enumerate(space.combos):
            lo = space.combo_offsets[j]
            assert sum(masks["combos"][lo : lo + len(combos)]) == 1
            assert [x["input"] for x in geno[c]["nodes"][j]["inputs"]] == sorted(live[j])
            for x in geno[c]["nodes"][j]["inputs"]:
                row = masks["ops"][space.edge(j, x["input"])]
                assert x["op"] != "none" and row == [n == x["op"] for n in PRIMITIVES]
        assert sum(map(sum, masks["ops"])) == 2 * space.nodes
    _check_state_matches_masks(algo, new.spec, new.state)
    assert metrics["ops_alive"] == 2 * 2 * space.nodes
    loss, acc = algo.evaluate(new, torch.randn(6, 1, 8, 8), torch.arange(6))
    assert math.isfinite(loss) and 0.0 <= acc <= 1.0
    # the discrete network keeps training; the genotype is fixed from here on
    res2 = algo.client_update(new, client_data(n=8), _ctx(cfg, 1), None)
    assert set(res2.state) == set(new.state)
    assert all(torch.isfinite(v).all() for v in res2.state.values())
    after = algo.server_step(new, res2.state, {}, _ctx(cfg, 1))
    assert after.spec is new.spec and after.state is res2.state


# ---------------------------------------------------------------- the derived stage


def _derived_model(algo: FedMetaNAS):
    """The global model after the final derivation: rounds up to ``search_rounds`` with
    one client's result as the round's average."""
    gm = algo.init_global()
    for r in range(algo.search_rounds):
        ctx = _ctx(algo.cfg, r)
        gm = algo.server_step(gm, algo.client_update(gm, client_data(), ctx, None).state, {}, ctx)
    assert gm.spec["genotype"] is not None
    return gm


def _reference_recipe(cfg, model: GlobalModel, data: ClientData, ctx: RoundContext, lr: float):
    """The evaluation recipe by hand on a network built apart from the method: per epoch a
    seeded shuffle into batches, cross-entropy, and SGD with momentum and weight decay
    written out (d = g + wd p; buf = d, then mu buf + d; p -= lr buf) on the weights only."""
    f, d = cfg.algorithm.fedmetanas, cfg.model.darts
    space = CellSpace(d.nodes, d.input_k, tuple(d.primitives))
    net = SearchNetwork(
        1, 10, d.init_channels, d.layers, space, d.stem_multiplier, model.spec["masks"]
    )
    net.load_state_dict({k: v.clone() for k, v in model.state.items()}, strict=False)
    net.train()
    net.set_sampling(1.0, None)
    weights = net.weight_parameters()
    bufs: list[torch.Tensor | None] = [None] * len(weights)
    g = torch_rng(ctx.seed, ctx.round, data.client_id, "fedmetanas.derived.batches")
    total, count = 0.0, 0
    for _ in range(cfg.algorithm.local_epochs):
        perm = torch.randperm(data.num_train, generator=g)
        for idx in perm.split(cfg.algorithm.batch_size):
            loss = F.cross_entropy(net(data.train_x[idx]), data.train_y[idx])
            grads = torch.autograd.grad(loss, weights, allow_unused=True)
            with torch.no_grad():
                for i, (p, gr) in enumerate(zip(weights, grads)):
                    if gr is None:
                        continue
                    step = gr + f.derived_weight_decay * p
                    bufs[i] = step if bufs[i] is None else f.derived_momentum * bufs[i] + step
                    p -= lr * bufs[i]
            total, count = total + loss.item() * len(idx), count + len(idx)
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    return state, total / count


def test_derived_sgd_client_update_matches_a_plain_sgd_reference():
    # 5 rounds, derived after round 2: rounds 2, 3, 4 train the derived network with the
    # recipe, whose cosine runs over those three rounds alone
    cfg = _cfg(
        rounds=5,
        final_round=2,
        derived_training="sgd",
        derived_lr=0.04,
        derived_lr_min=0.004,
        derived_momentum=0.8,
        derived_weight_decay=0.01,
        prune_gap=0.0,
        combo_prune_gap=0.0,
    )
    algo = FedMetaNAS(cfg, DataInfo((1, 8, 8), 10))
    gm = _derived_model(algo)
    data = client_data(n=20)  # 20 images in batches of 4: five steps, the momentum matters
    lrs = {2: 0.04, 3: 0.004 + 0.5 * 0.036 * (1 + math.cos(math.pi / 2)), 4: 0.004}
    for r, lr in lrs.items():
        ctx = _ctx(cfg, r)
        assert algo.stage(r) == "derived" and algo.weight_lr(r) == pytest.approx(lr, rel=1e-12)
        res = algo.client_update(gm, data, ctx, None)
        ref, loss = _reference_recipe(cfg, gm, data, ctx, lr)
        assert set(ref) == set(res.state)
        for k, v in ref.items():
            torch.testing.assert_close(res.state[k], v, rtol=1e-5, atol=1e-6, msg=k)
        # the logits are the genotype's data: unchanged; the weights trained
        for k in ARCH:
            assert torch.equal(res.state[k], gm.state[k]), k
        assert not torch.equal(res.state["classifier.weight"], gm.state["classifier.weight"])
        assert res.metrics["train_loss"] == pytest.approx(loss, rel=1e-5)
        assert math.isnan(res.metrics["support_loss"])
        metrics: dict[str, float] = {}
        algo.server_step(gm, res.state, metrics, ctx)
        assert metrics["weight_lr"] == pytest.approx(lr, rel=1e-12)
    # the search rounds are untouched by the option: the same as the default's
    default = FedMetaNAS(_cfg(rounds=5, final_round=2), DataInfo((1, 8, 8), 10))
    a = algo.client_update(algo.init_global(), data, _ctx(cfg, 1), None)
    b = default.client_update(default.init_global(), data, _ctx(cfg, 1), None)
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)


def test_derived_maml_is_the_default_and_continues_algorithm_1():
    cfg = _cfg(rounds=4, final_round=2, prune_gap=0.0, combo_prune_gap=0.0)
    assert cfg.algorithm.fedmetanas.derived_training == "maml"
    algo = FedMetaNAS(cfg, DataInfo((1, 8, 8), 10))
    gm = _derived_model(algo)
    data, ctx = client_data(), _ctx(cfg, 2)
    res = algo.client_update(gm, data, ctx, None)
    # the hand-written first-order MAML of the search, on the derived network
    ref, s_mean, q_mean = _reference_client(cfg, gm, data, ctx, algo.temperature(2))
    for k, v in ref.items():
        torch.testing.assert_close(res.state[k], v, rtol=1e-4, atol=1e-5, msg=k)
    assert res.metrics["support_loss"] == pytest.approx(s_mean, rel=1e-4)
    metrics: dict[str, float] = {}
    algo.server_step(gm, res.state, metrics, ctx)
    f = cfg.algorithm.fedmetanas
    assert metrics["weight_lr"] == pytest.approx(f.meta_lr_w * algo.weight_lr_scale(2))


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        (
            {"derived_lr": 0.1},
            "algorithm.fedmetanas.derived_lr = 0.1: read only with derived_training: sgd "
            "(this run's is maml)",
        ),
    ],
)
def test_derived_keys_that_do_not_apply_are_refused(keys, problem):
    from fednas_mpi.config import ConfigError

    with pytest.raises(ConfigError) as e:
        _cfg(rounds=3, **keys)
    assert e.value.problems == [problem]
    assert _cfg(rounds=3, final_round=2, derived_training="sgd", derived_lr=0.1)
    # a run cut short so that no derived round is left keeps its sgd keys: nothing to train
    assert _cfg(rounds=3, final_round=3, derived_training="sgd", derived_lr=0.1)
    assert _cfg(rounds=3, derived_training="sgd")
