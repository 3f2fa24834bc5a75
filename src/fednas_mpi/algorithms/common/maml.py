"""First-order MAML on (weights, architecture) jointly (eq. 9-10, Algorithm 1 lines 12-18).

The task learner adapts a copy of the parameters with M plain gradient steps on the
support task, each step updating weights and alphas from one backward pass (eq. 9),
with one learning rate per parameter group. The meta learner then takes the query
loss's gradient at the adapted parameters as the first-order approximation of the
meta gradient and applies it to the original parameters with its own optimiser
(eq. 10). The module's buffers (BN running statistics) keep the adapted values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

Loss = Callable[[], torch.Tensor]


class TaskLearner:
    """M inner SGD steps, learning rate per parameter group (eq. 9)."""

    def __init__(
        self,
        groups: Sequence[tuple[Sequence[nn.Parameter], float]],
        steps: int,
        grad_clip: float = 0.0,
    ):
        self.groups, self.steps, self.grad_clip = groups, steps, grad_clip

    @torch.no_grad()
    def _step(self, grads: Sequence[torch.Tensor | None]) -> None:
        i = 0
        for params, lr in self.groups:
            ps, gs = [], []
            for p in params:
                if grads[i] is not None:
                    ps.append(p)
                    gs.append(grads[i])
                i += 1
            if ps:
                # p -= lr * g: a product, then a difference, for the group at once (one fused
                # add with alpha would round differently from the per-tensor path it replaces)
                torch._foreach_sub_(ps, torch._foreach_mul(gs, lr))

    def run(self, loss_fn: Loss) -> torch.Tensor:
        """Run the inner loop in place; returns the last support loss, detached, on the
        device (no host read: issue 27)."""
        params = [p for ps, _ in self.groups for p in ps]
        loss = params[0].new_zeros(()) if params else torch.zeros(())
        for _ in range(self.steps):
            loss = loss_fn()
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            if self.grad_clip > 0:
                clip_grad_norm([g for g in grads if g is not None], self.grad_clip)
            self._step(grads)
        return loss.detach()

    def adapt(self, loss_fn: Loss) -> float:
        """``run``, with the loss read to the host."""
        return float(self.run(loss_fn))


class MetaLearner:
    """Applies the first-order meta gradient to the original parameters (eq. 10)."""

    def __init__(
        self,
        params: Sequence[nn.Parameter],
        optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
        grad_clip: float = 0.0,
    ):
        """``optimizer``: one, or several over disjoint groups (e.g. SGD for the weights,
        Adam for the alphas); parameters no optimiser holds are restored and not stepped."""
        self.params, self.grad_clip = list(params), grad_clip
        self.optimizers = foreach(
            *([optimizer] if isinstance(optimizer, torch.optim.Optimizer) else optimizer)
        )
        self._original: list[torch.Tensor] | None = None  # reused by every step

    def update(
        self, task: TaskLearner, support_loss: Loss, query_loss: Loss
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Adapt on the support task, take the query gradient there, update the originals.

        Returns (the last inner step's support loss, taken before that step's update;
        the query loss at the adapted parameters), detached, on the device.
        """
        with torch.no_grad():
            if self._original is None:
                self._original = [torch.empty_like(p) for p in self.params]
            torch._foreach_copy_(self._original, self.params)
        s_loss = task.run(support_loss)
        q = query_loss()
        grads = torch.autograd.grad(q, self.params, allow_unused=True)
        with torch.no_grad():
            torch._foreach_copy_(self.params, self._original)
        for p, g in zip(self.params, grads):
            # autograd.grad's results are fresh tensors of this step: no copy needed
            p.grad = g
        if self.grad_clip > 0:
            clip_grad_norm([p.grad for p in self.params if p.grad is not None], self.grad_clip)
        for opt in self.optimizers:
            opt.step()
        for p in self.params:
            p.grad = None
        return s_loss, q.detach()

    def step(self, task: TaskLearner, support_loss: Loss, query_loss: Loss) -> tuple[float, float]:
        """``update``, with both losses read to the host."""
        s_loss, q_loss = self.update(task, support_loss, query_loss)
        return float(s_loss), float(q_loss)


def clip_grad_norm(grads: list[torch.Tensor], max_norm: float) -> None:
    """Scale gradients in place so their joint L2 norm is at most ``max_norm``.

    No host read (issue 27): the scale max_norm / (norm + 1e-6) is formed on the device in
    float64, the arithmetic the host did on ``float(norm)``, and a scale of 1 or more (or
    NaN) multiplies by exactly 1, so the result is bit for bit the read-and-branch one."""
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    denom = norm.double() + 1e-6
    scale = torch.full_like(denom, max_norm).div_(denom)
    scale = torch.where(scale < 1.0, scale, 1.0).to(grads[0].dtype)
    torch._foreach_mul_(grads, scale)


def clip_present(params, max_norm: float) -> None:
    """``clip_grad_norm`` over the parameters that have a gradient (none: nothing to do)."""
    grads = [p.grad for p in params if p.grad is not None]
    if max_norm > 0 and grads:
        clip_grad_norm(grads, max_norm)


def foreach(*optimizers: torch.optim.Optimizer) -> list[torch.optim.Optimizer]:
    """``optimizers`` stepping every parameter group with torch's ``_foreach_*`` kernels
    (its GPU default, per tensor on the CPU): a few launches per step instead of several per
    parameter tensor; on the CPU bit for bit the per-tensor loop (the same ops in the same
    order: ``tests/algorithms/test_staged_equality.py``)."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["foreach"] = True
    return list(optimizers)
