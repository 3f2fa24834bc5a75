"""The client updates' step loops as they were before issue 27, kept as a test-only
reference: every draw made inside the loop when the loop needs it (Gumbel noise per
forward, augmentation per batch), losses and norms read to the host every step, clipping
by a read and a branch, per-tensor MAML updates and torch's per-tensor optimiser loops.
``test_staged_equality`` checks that the staged, sync-free loops end bit for bit where
these do: a random stream drawn in another order or shape would not. A method whose
client update only calls a shared loop (``training.sgd_epochs``, ``subnet.train_path``)
runs its own update on the old copy of that loop (``through_old_loops``).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F

import fednas_mpi.algorithms.common.subnet as subnet
import fednas_mpi.algorithms.common.training as training
from fednas_mpi.algorithms.base import ClientResult
from fednas_mpi.algorithms.common.maml import TaskLearner
from fednas_mpi.algorithms.common.supernet import state_of
from fednas_mpi.algorithms.common.tasks import task_pairs
from fednas_mpi.algorithms.common.training import evaluate, minibatches
from fednas_mpi.algorithms.fednas import milenas_grads
from fednas_mpi.algorithms.fedpnas import ARCH_NAMES, MetaFedPNAS, SplitModel, split_forward
from fednas_mpi.algorithms.perfedavg import batch_groups
from fednas_mpi.kernels.reference import hard_index
from fednas_mpi.nas import CELL_TYPES
from fednas_mpi.nas.mixing import gumbel_noise
from fednas_mpi.nas.single_path import path_forward
from fednas_mpi.seeding import torch_rng


def crop_flip(x, generator, padding, fill):
    """``data.augment.random_crop_flip`` before its split into draws and their use."""
    b, c, h, w = x.shape
    if b == 0:
        return x
    dev = x.device
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(dev)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(dev)
    flip = (torch.rand(b, generator=generator) < 0.5).to(dev)
    padded = torch.empty(b, c, h + 2 * padding, w + 2 * padding, dtype=x.dtype, device=dev)
    padded[:] = torch.as_tensor(fill, dtype=x.dtype).to(dev).reshape(-1, 1, 1)
    padded[:, :, padding : padding + h, padding : padding + w] = x
    rows = dy[:, None] + torch.arange(h, device=dev)
    cols = torch.arange(w, device=dev).expand(b, w)
    cols = dx[:, None] + torch.where(flip[:, None], w - 1 - cols, cols)
    batch = torch.arange(b, device=dev)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def _augment(data):
    a = data.augment
    if a is None:
        return None
    return lambda x, g: crop_flip(x, g, a.padding, torch.tensor(a.fill))


def clip_grad_norm(grads, max_norm):
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    scale = max_norm / (float(norm) + 1e-6)
    if scale < 1.0:
        for g in grads:
            g.mul_(scale)


def _per_tensor(opts):
    """torch's per-tensor optimiser loops (its CPU default before issue 27)."""
    for opt in opts:
        for group in opt.param_groups:
            group["foreach"] = False
    return opts


# ------------------------------------------------------------------ FedMetaNAS


def _adapt(task, loss_fn):
    params = [p for ps, _ in task.groups for p in ps]
    loss = torch.zeros(())
    for _ in range(task.steps):
        loss = loss_fn()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        if task.grad_clip > 0:
            clip_grad_norm([g for g in grads if g is not None], task.grad_clip)
        with torch.no_grad():
            i = 0
            for ps, lr in task.groups:
                for p in ps:
                    if grads[i] is not None:
                        p.sub_(lr * grads[i])
                    i += 1
    return float(loss.detach())


def _meta_step(meta, task, support_loss, query_loss):
    original = [p.detach().clone() for p in meta.params]
    s_loss = _adapt(task, support_loss)
    q = query_loss()
    grads = torch.autograd.grad(q, meta.params, allow_unused=True)
    with torch.no_grad():
        for p, w0, g in zip(meta.params, original, grads):
            p.copy_(w0)
            p.grad = None if g is None else g.detach().clone()
    if meta.grad_clip > 0:
        clip_grad_norm([p.grad for p in meta.params if p.grad is not None], meta.grad_clip)
    for opt in meta.optimizers:
        opt.step()
    for p in meta.params:
        p.grad = None
    return s_loss, float(q.detach())


def fedmetanas(algo, model, data, ctx):
    """(state, metrics) of the pre-staging FedMetaNAS client loop (no local evaluation)."""
    f, a = algo.cfg.algorithm.fedmetanas, algo.cfg.algorithm
    net = algo._net(model)
    net.train()
    gumbel = (
        None
        if algo.warming_up(ctx.round)
        else torch_rng(ctx.seed, ctx.round, data.client_id, "fedmetanas.gumbel")
    )
    net.set_sampling(algo.temperature(ctx.round), gumbel)
    task, meta = algo.learners(net.weight_parameters(), net.arch_parameters(), ctx.round)
    _per_tensor(meta.optimizers)
    g_tasks = torch_rng(ctx.seed, ctx.round, data.client_id, "fedmetanas.tasks")
    g_aug = torch_rng(ctx.seed, ctx.round, data.client_id, "fedmetanas.augment")
    x, y, augment = data.train_x, data.train_y, _augment(data)

    def batch(idx):
        xb = x[idx]
        return (augment(xb, g_aug) if augment is not None else xb), y[idx]

    def loss(xb, yb):
        return lambda: F.cross_entropy(net(xb), yb)

    s_sum = q_sum = 0.0
    steps = 0
    for _ in range(a.local_epochs):
        for s_idx, q_idx in task_pairs(len(y), a.batch_size, f.tasks_per_epoch, g_tasks):
            xs, ys = batch(s_idx)
            xq, yq = batch(q_idx)
            s_loss, q_loss = _meta_step(meta, task, loss(xs, ys), loss(xq, yq))
            s_sum, q_sum, steps = s_sum + s_loss, q_sum + q_loss, steps + 1
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return state, {"train_loss": q_sum / steps, "support_loss": s_sum / steps}


# ------------------------------------------------------------------ FedNAS


def fednas(algo, model, data, ctx):
    """(state, metrics) of the pre-staging FedNAS search loop."""
    f, a = algo.cfg.algorithm.fednas, algo.cfg.algorithm
    net = algo._net(model)
    net.set_sampling(1.0, None)
    net.train()
    g = torch_rng(ctx.seed, ctx.round, data.client_id, "fednas.batches")
    weights, arch = net.weight_parameters(), net.arch_parameters()
    w_opt = torch.optim.SGD(
        weights, lr=algo.lr(ctx.round), momentum=f.momentum, weight_decay=f.weight_decay
    )
    if algo.arch_opt.on:
        a_opt = torch.optim.SGD(arch, lr=f.client_arch_lr, weight_decay=f.arch_weight_decay)
    else:
        a_opt = torch.optim.Adam(
            arch, lr=f.arch_lr, betas=tuple(f.arch_betas), weight_decay=f.arch_weight_decay
        )
    _per_tensor([w_opt, a_opt])
    augment = _augment(data)

    def batch(idx):
        x = data.train_x[idx]
        return (augment(x, g) if augment is not None else x), data.train_y[idx]

    perm = torch.randperm(data.num_train, generator=g)
    half = max(1, data.num_train // 2)
    tr, va = perm[:half], perm[half:] if data.num_train > 1 else perm
    t_sum = v_sum = 0.0
    steps = 0
    for _ in range(a.local_epochs):
        val_batches = minibatches(len(va), a.batch_size, g)
        for i, bt in enumerate(minibatches(len(tr), a.batch_size, g)):
            bv = val_batches[i % len(val_batches)]
            xt, yt = batch(tr[bt])
            xv, yv = batch(va[bv])
            loss_t = F.cross_entropy(net(xt), yt)
            loss_v = F.cross_entropy(net(xv), yv)
            gw, ga = milenas_grads(loss_t, loss_v, weights, arch, f.milenas_lambda)
            if f.grad_clip > 0:
                clip_grad_norm(gw, f.grad_clip)
            for p, gr in zip(weights, gw):
                p.grad = gr
            for p, gr in zip(arch, ga):
                p.grad = gr
            a_opt.step()
            w_opt.step()
            t_sum, v_sum, steps = t_sum + loss_t.item(), v_sum + loss_v.item(), steps + 1
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return state, {"train_loss": t_sum / steps, "val_loss": v_sum / steps}


# ------------------------------------------------------------------ FedDSNAS


def _sample_choices(net, noise):
    return {
        c: [
            hard_index(row, n, m)
            for row, n, m in zip(
                getattr(net, f"alpha_{c}").detach(), noise[c], getattr(net, f"op_mask_{c}")
            )
        ]
        for c in CELL_TYPES
    }


def _dsnas_step(net, x, y, w_opt, a_opt, g_noise, grad_clip):
    alphas = {c: getattr(net, f"alpha_{c}") for c in CELL_TYPES}
    noise = {c: gumbel_noise(a.shape, g_noise, a.dtype, a.device) for c, a in alphas.items()}
    choices = _sample_choices(net, noise)
    w_opt.zero_grad(set_to_none=True)
    a_opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(path_forward(net, x, choices, noise), y)
    loss.backward()
    grads = [p.grad for p in net.weight_parameters() if p.grad is not None]
    if grad_clip > 0 and grads:
        clip_grad_norm(grads, grad_clip)
    w_opt.step()
    a_opt.step()
    return float(loss.detach())


def feddsnas(algo, model, data, ctx):
    """(state, metrics) of the pre-staging FedDSNAS client loop."""
    f, a = algo.cfg.algorithm.feddsnas, algo.cfg.algorithm
    net = algo._net(model)
    net.train()
    weights, arch = net.weight_parameters(), net.arch_parameters()
    w_opt = torch.optim.SGD(
        weights, lr=algo.lr(ctx.round), momentum=f.momentum, weight_decay=f.weight_decay
    )
    if algo.arch_opt.on:
        a_opt = torch.optim.SGD(arch, lr=f.client_arch_lr, weight_decay=f.arch_weight_decay)
    else:
        a_opt = torch.optim.Adam(
            arch, lr=f.arch_lr, betas=tuple(f.arch_betas), weight_decay=f.arch_weight_decay
        )
    _per_tensor([w_opt, a_opt])
    g = torch_rng(ctx.seed, ctx.round, data.client_id, "feddsnas.batches")
    g_noise = torch_rng(ctx.seed, ctx.round, data.client_id, "feddsnas.gumbel")
    augment = _augment(data)
    total, count = 0.0, 0
    for _ in range(a.local_epochs):
        for idx in minibatches(data.num_train, a.batch_size, g):
            xb = data.train_x[idx]
            if augment is not None:
                xb = augment(xb, g)
            loss = _dsnas_step(net, xb, data.train_y[idx], w_opt, a_opt, g_noise, f.grad_clip)
            total, count = total + loss * len(idx), count + len(idx)
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return state, {"train_loss": total / max(count, 1)}


# ------------------------------------------------------------------ the shared SGD loops
# (the fixed-model methods, random_nas, FedNAS's retraining; the subnet methods' path)


def _old_augment(augment):
    if augment is None or not hasattr(augment, "padding"):
        return augment
    return lambda x, g: crop_flip(x, g, augment.padding, torch.tensor(augment.fill))


def sgd_epochs(model, x, y, optimizer, batch_size, epochs, generator, augment=None):
    """``common.training.sgd_epochs`` before issue 27's second part."""
    _per_tensor([optimizer])
    augment = _old_augment(augment)
    model.train()
    total = torch.zeros((), dtype=torch.float64, device=training.device_of(model))
    count = 0
    for _ in range(epochs):
        for idx in minibatches(len(y), batch_size, generator):
            optimizer.zero_grad(set_to_none=True)
            xb = x[idx] if augment is None else augment(x[idx], generator)
            loss = F.cross_entropy(model(xb), y[idx])
            loss.backward()
            optimizer.step()
            total += loss.detach().double() * len(idx)
            count += len(idx)
    return float(total) / max(count, 1)


def _clip_present(params, max_norm):
    grads = [p.grad for p in params if p.grad is not None]
    if max_norm > 0 and grads:
        clip_grad_norm(grads, max_norm)


def train_path(
    net, choices, x, y, optimizer, batch_size, epochs, generator, grad_clip, augment=None
):
    """``common.subnet.train_path`` before issue 27's second part."""
    _per_tensor([optimizer])
    augment = _old_augment(augment)
    net.train()
    weights = net.weight_parameters()
    total, count = 0.0, 0
    for _ in range(epochs):
        for idx in minibatches(len(y), batch_size, generator):
            optimizer.zero_grad(set_to_none=True)
            xb = x[idx] if augment is None else augment(x[idx], generator)
            loss = F.cross_entropy(path_forward(net, xb, choices), y[idx])
            loss.backward()
            _clip_present(weights, grad_clip)
            optimizer.step()
            total, count = total + float(loss.detach()) * len(idx), count + len(idx)
    optimizer.zero_grad(set_to_none=True)
    return total / max(count, 1)


@contextmanager
def _old_loops():
    """The methods' own client updates with the shared loops as they were."""
    saved = training.sgd_epochs, subnet.train_path
    training.sgd_epochs, subnet.train_path = sgd_epochs, train_path
    try:
        yield
    finally:
        training.sgd_epochs, subnet.train_path = saved


def through_old_loops(algo, model, data, ctx, client_state=None):
    """The ClientResult of ``algo.client_update`` run on the old shared loops."""
    with _old_loops():
        return algo.client_update(model, data, ctx, client_state)


# ------------------------------------------------------------------ per-FedAvg


def _grad(net, params, batch):
    loss = F.cross_entropy(net(batch[0]), batch[1])
    return list(torch.autograd.grad(loss, params))


def _perfedavg_step(net, params, batches, alpha, optimizer, hessian_free=False, delta=1e-3):
    params = list(params)
    w0 = [p.detach().clone() for p in params]
    g_in = _grad(net, params, batches[0])
    with torch.no_grad():
        for p, g in zip(params, g_in):
            p.sub_(alpha * g)
    outer = F.cross_entropy(net(batches[1][0]), batches[1][1])
    g = [t.detach() for t in torch.autograd.grad(outer, params)]
    if hessian_free:
        with torch.no_grad():
            for p, w, d in zip(params, w0, g):
                p.copy_(w + delta * d)
        g_plus = _grad(net, params, batches[2])
        with torch.no_grad():
            for p, w, d in zip(params, w0, g):
                p.copy_(w - delta * d)
        g_minus = _grad(net, params, batches[2])
        g = [d - alpha * (gp - gm) / (2 * delta) for d, gp, gm in zip(g, g_plus, g_minus)]
    with torch.no_grad():
        for p, w, d in zip(params, w0, g):
            p.copy_(w)
            p.grad = d.clone()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(outer.detach())


def perfedavg(algo, model, data, ctx, client_state=None):
    """(state, metrics) of the pre-staging per-FedAvg client loop."""
    a, p = algo.cfg.algorithm, algo.cfg.algorithm.perfedavg
    net = algo.load(model.state)
    net.train()
    params = list(net.parameters())
    opt = torch.optim.SGD(params, lr=a.lr, momentum=a.momentum, weight_decay=a.weight_decay)
    _per_tensor([opt])
    hf = p.variant == "hessian_free"
    g = torch_rng(ctx.seed, ctx.round, data.client_id, "perfedavg.batches")
    x, y, augment = data.train_x, data.train_y, _augment(data)

    def batch(idx):
        xb = x[idx] if augment is None else augment(x[idx], g)
        return xb, y[idx]

    total, steps = 0.0, 0
    for _ in range(a.local_epochs):
        for group in batch_groups(len(y), a.batch_size, 3 if hf else 2, g):
            total += _perfedavg_step(
                net, params, [batch(i) for i in group], p.alpha, opt, hf, p.hf_delta
            )
            steps += 1
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return state, {"train_loss": total / max(steps, 1)}


# ------------------------------------------------------------------ FedPNAS, meta-FedPNAS


def _fedpnas_step(algo, base_w, pers_w, base_a, pers_a, round_):
    f = algo.conf
    inner = TaskLearner(
        [(pers_w, f.inner_lr_w), (pers_a, f.inner_lr_alpha)], f.inner_steps, f.grad_clip
    )
    w_opt = torch.optim.SGD(base_w, lr=f.lr, momentum=f.momentum, weight_decay=f.weight_decay)
    if algo.arch_opt.on:
        a_opt = torch.optim.SGD(base_a, lr=f.client_arch_lr)
    else:
        a_opt = torch.optim.Adam(base_a, lr=f.arch_lr, betas=(0.5, 0.999))
    _per_tensor([w_opt, a_opt])
    base = base_w + base_a

    def step(support, query):
        s_loss = _adapt(inner, support)
        q = query()
        grads = torch.autograd.grad(q, base, allow_unused=True)
        for p, g in zip(base, grads):
            p.grad = g
        _clip_present(base_w, f.grad_clip)
        w_opt.step()
        a_opt.step()
        w_opt.zero_grad(set_to_none=True)
        a_opt.zero_grad(set_to_none=True)
        return s_loss, float(q.detach())

    return step


def _meta_fedpnas_step(algo, base_w, pers_w, base_a, pers_a, round_):
    task, meta = algo.meta.learners(base_w + pers_w, base_a, round_, own_arch=pers_a)
    _per_tensor(meta.optimizers)
    return lambda support, query: _meta_step(meta, task, support, query)


def fedpnas(algo, model, data, ctx, client_state=None):
    """The pre-staging FedPNAS / meta-FedPNAS client update (a ClientResult)."""
    a = algo.cfg.algorithm
    net = algo._net(model)
    mine = algo.personal_state(model, client_state)
    logits = ("palpha_", "pbeta_")
    net.load_state_dict({k: v for k, v in mine.items() if not k.startswith(logits)}, strict=False)
    personal = {k: nn.Parameter(v.to(algo.device)) for k, v in mine.items() if k.startswith(logits)}
    net.train()
    net.set_sampling(
        algo.temperature(ctx.round),
        torch_rng(ctx.seed, ctx.round, data.client_id, f"{algo.name}.gumbel"),
    )
    named = dict(net.named_parameters())
    base_w = [p for k, p in named.items() if k not in ARCH_NAMES and not algo.is_personal(k)]
    pers_w = [p for k, p in named.items() if k not in ARCH_NAMES and algo.is_personal(k)]
    base_a, pers_a = net.arch_parameters(), list(personal.values())
    local_step = _meta_fedpnas_step if isinstance(algo, MetaFedPNAS) else _fedpnas_step
    step = local_step(algo, base_w, pers_w, base_a, pers_a, ctx.round)
    g_tasks = torch_rng(ctx.seed, ctx.round, data.client_id, f"{algo.name}.tasks")
    x, y, first, augment = data.train_x, data.train_y, algo.first_personal, _augment(data)

    def loss(idx):
        xb = x[idx] if augment is None else augment(x[idx], g_tasks)
        return lambda: F.cross_entropy(split_forward(net, xb, personal, first), y[idx])

    s_sum = q_sum = 0.0
    steps = 0
    for _ in range(a.local_epochs):
        for s_idx, q_idx in task_pairs(len(y), a.batch_size, algo.tasks_per_epoch, g_tasks):
            s_loss, q_loss = step(loss(s_idx), loss(q_idx))
            s_sum, q_sum, steps = s_sum + s_loss, q_sum + q_loss, steps + 1
    local_acc = float("nan")
    if ctx.is_due(algo.local_eval_every):
        _, local_acc = evaluate(SplitModel(net, personal, first), data.eval_x, data.eval_y)
    state = state_of(net)
    kept = {k: v for k, v in state.items() if algo.is_personal(k)}
    kept.update({k: p.detach().clone() for k, p in personal.items()})
    return ClientResult(
        state,
        float(data.num_train),
        {"train_loss": q_sum / steps, "support_loss": s_sum / steps, "local_acc": local_acc},
        client_state=kept,
    )


# ------------------------------------------------------------------ meta-PerFedRLNAS


def _meta_path_train(algo, net, choices, data, tr, ctx):
    """``MetaPerFedRLNAS.local_train`` before issue 27's second part."""
    a, f = algo.cfg.algorithm, algo.cfg.algorithm.fedmetanas
    net.train()
    task, meta = algo.meta.learners(net.weight_parameters(), [], ctx.round)
    _per_tensor(meta.optimizers)
    g = torch_rng(ctx.seed, ctx.round, data.client_id, f"{algo.purpose}.tasks")
    x, y, augment = data.train_x[tr], data.train_y[tr], _augment(data)

    def loss(idx):
        xb = x[idx] if augment is None else augment(x[idx], g)
        return lambda: F.cross_entropy(path_forward(net, xb, choices), y[idx])

    total, steps = 0.0, 0
    for _ in range(a.local_epochs):
        for s_idx, q_idx in task_pairs(len(y), a.batch_size, f.tasks_per_epoch, g):
            _, q_loss = _meta_step(meta, task, loss(s_idx), loss(q_idx))
            total, steps = total + q_loss, steps + 1
    return total / max(steps, 1)


def meta_perfedrlnas(algo, model, data, ctx, client_state=None):
    """The pre-staging meta-PerFedRLNAS client update (a ClientResult)."""
    own = algo.local_train
    algo.local_train = lambda net, choices, data, tr, ctx: _meta_path_train(
        algo, net, choices, data, tr, ctx
    )
    try:
        return algo.client_update(model, data, ctx, client_state)
    finally:
        algo.local_train = own


REFERENCES = {
    "fedmetanas": fedmetanas,
    "fednas": fednas,
    "feddsnas": feddsnas,
    "perfedavg": perfedavg,
    "fedpnas": fedpnas,
    "meta_fedpnas": fedpnas,
    "meta_perfedrlnas": meta_perfedrlnas,
    # these call a shared loop, replaced by its old copy
    **{
        m: through_old_loops
        for m in (
            "fedavg",
            "fedbabu",
            "fedrep",
            "random_nas",
            "fednas-retrain",
            "fedrlnas",
            "perfedrlnas",
        )
    },
}
