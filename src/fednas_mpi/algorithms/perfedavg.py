"""per-FedAvg (Fallah, Mokhtari and Ozdaglar 2020): FedAvg of a MAML objective.

Each client minimises F_k(w) = f_k(w - alpha * grad f_k(w)). One local step takes
disjoint minibatches D, D' (and D'' for the Hessian-free variant) of
``algorithm.batch_size`` samples from a seeded permutation of its train split:

    w_tmp = w - alpha * grad f(w; D)                        (inner step)
    g     = grad f(w_tmp; D')                                (first_order: the meta gradient)
    hessian_free:  g <- g - alpha * H(w; D'') g,  with
                   H g ~ (grad f(w + delta g; D'') - grad f(w - delta g; D'')) / (2 delta)
    w     <- optimiser step from w with gradient g           (SGD, lr beta = algorithm.lr)

as many steps per local epoch as disjoint groups of batches fit. The server averages w
(all of the state, BatchNorm buffers included; every forward pass in training mode
updates the running statistics, as in the plain training loop).

Personalisation (local evaluation): from the global model, ``adapt_steps`` plain SGD
steps of size alpha on seeded minibatches of the client's train split.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..flat import State
from ..seeding import torch_rng
from .base import ClientData, ClientResult, GlobalModel, RoundContext
from .common.fixed import FixedModelMethod, clone_state
from .common.maml import foreach
from .common.steploop import DeviceSums, step_loop
from .common.streams import BatchStream
from .common.training import evaluate, minibatches

Batch = tuple[torch.Tensor, torch.Tensor]


def batch_groups(
    n: int, batch: int, parts: int, generator: torch.Generator
) -> list[list[torch.Tensor]]:
    """Groups of ``parts`` disjoint index batches from one seeded permutation of range(n).

    As many full groups as fit (at least one; with fewer than parts * batch samples the
    batches shrink to n // parts, and with fewer than ``parts`` samples they repeat)."""
    size = max(min(batch, n // parts), 1)
    perm = torch.randperm(n, generator=generator)
    groups = []
    for g in range(max(n // (parts * size), 1)):
        groups.append([perm[((g * parts + i) * size) % n :][:size] for i in range(parts)])
    return groups


def _grad(net: nn.Module, params: Sequence[nn.Parameter], batch: Batch) -> list[torch.Tensor]:
    loss = F.cross_entropy(net(batch[0]), batch[1])
    return list(torch.autograd.grad(loss, params))


def meta_step(
    net: nn.Module,
    params: Sequence[nn.Parameter],
    batches: Sequence[Batch],
    alpha: float,
    optimizer: torch.optim.Optimizer,
    hessian_free: bool = False,
    delta: float = 1e-3,
) -> torch.Tensor:
    """One per-FedAvg local step on (D, D'[, D'']); returns the loss on D' at w_tmp,
    detached, on the device (no host read: issue 27).

    The updates are ``_foreach_*`` ops over all tensors, each the per-tensor expression
    it replaces in the same order of operations (w - alpha * g as a product, then a
    difference), so the result is bit for bit the per-tensor loop's on the CPU."""
    params = list(params)
    with torch.no_grad():
        w0 = torch._foreach_mul(params, 1.0)  # an exact copy of every tensor, in one call
    g_in = _grad(net, params, batches[0])
    with torch.no_grad():
        torch._foreach_sub_(params, torch._foreach_mul(g_in, alpha))
    outer = F.cross_entropy(net(batches[1][0]), batches[1][1])
    g = [t.detach() for t in torch.autograd.grad(outer, params)]
    if hessian_free:
        with torch.no_grad():
            step = torch._foreach_mul(g, delta)
            torch._foreach_copy_(params, torch._foreach_add(w0, step))
        g_plus = _grad(net, params, batches[2])
        with torch.no_grad():
            torch._foreach_copy_(params, torch._foreach_sub(w0, step))
        g_minus = _grad(net, params, batches[2])
        # d - alpha * (g+ - g-) / (2 delta), in that order
        hg = torch._foreach_div(
            torch._foreach_mul(torch._foreach_sub(g_plus, g_minus), alpha), 2 * delta
        )
        g = torch._foreach_sub(g, hg)
    with torch.no_grad():
        torch._foreach_copy_(params, w0)
    for p, d in zip(params, g):
        # fresh tensors of this step (autograd's or the foreach results): no copy needed
        p.grad = d
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return outer.detach()


class PerFedAvg(FixedModelMethod):
    name = "perfedavg"
    client_metrics = ("train_loss",)

    def client_update(
        self, model: GlobalModel, data: ClientData, ctx: RoundContext, client_state: State | None
    ) -> ClientResult:
        a, p = self.cfg.algorithm, self.cfg.algorithm.perfedavg
        net = self.load(model.state)
        net.train()
        params = list(net.parameters())
        opt = torch.optim.SGD(params, lr=a.lr, momentum=a.momentum, weight_decay=a.weight_decay)
        hf = p.variant == "hessian_free"
        foreach(opt)
        g = torch_rng(ctx.seed, ctx.round, data.client_id, "perfedavg.batches")
        # every draw staged before the loop, in the loop's order (``common.streams``)
        batches = BatchStream(data.train_x, data.train_y, data.augment)
        groups = 0
        for _ in range(a.local_epochs):
            for group in batch_groups(len(data.train_y), a.batch_size, 3 if hf else 2, g):
                for idx in group:
                    batches.add(idx, g)
                groups += 1
        batches.stage()
        parts = len(batches) // max(groups, 1)
        sums = DeviceSums(1, data.train_x.device)  # the query losses
        with step_loop():
            for i in range(groups):
                group = [batches.batch(i * parts + j) for j in range(parts)]
                sums.add(meta_step(net, params, group, p.alpha, opt, hf, p.hf_delta))
        (total,) = sums.read()
        return ClientResult(
            clone_state(net), float(data.num_train), {"train_loss": total / max(groups, 1)}
        )

    def personal_accuracy(
        self, model: GlobalModel, data: ClientData, client_state: State | None, ctx: RoundContext
    ) -> float:
        """``adapt_steps`` SGD steps of size alpha from the global model, then evaluate."""
        if len(data.eval_y) == 0:
            return float("nan")
        p = self.cfg.algorithm.perfedavg
        net = self.load(model.state)
        net.train()
        params = list(net.parameters())
        g = torch_rng(ctx.seed, ctx.round, data.client_id, "perfedavg.personal")
        batches: list[torch.Tensor] = []
        while len(batches) < p.adapt_steps:
            batches += minibatches(len(data.train_y), self.cfg.algorithm.batch_size, g)
        for idx in batches[: p.adapt_steps]:
            grads = _grad(net, params, (data.train_x[idx], data.train_y[idx]))
            with torch.no_grad():
                for q, d in zip(params, grads):
                    q.sub_(p.alpha * d)
        return evaluate(net, data.eval_x, data.eval_y)[1]
