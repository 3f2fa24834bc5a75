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
            for p in params:
                if grads[i] is not None:
                    p.sub_(lr * grads[i])
                i += 1

    def adapt(self, loss_fn: Loss) -> float:
        """Run the inner loop in place; returns the last support loss."""
        params = [p for ps, _ in self.groups for p in ps]
        loss = torch.zeros(())
        for _ in range(self.steps):
            loss = loss_fn()
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            if self.grad_clip > 0:
                clip_grad_norm([g for g in grads if g is not None], self.grad_clip)
            self._step(grads)
        return float(loss.detach())


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
        self.optimizers = (
            [optimizer] if isinstance(optimizer, torch.optim.Optimizer) else list(optimizer)
        )

    def step(self, task: TaskLearner, support_loss: Loss, query_loss: Loss) -> tuple[float, float]:
        """Adapt on the support task, take the query gradient there, update the originals.

        Returns (the last inner step's support loss, taken before that step's update;
        the query loss at the adapted parameters).
        """
        original = [p.detach().clone() for p in self.params]
        s_loss = task.adapt(support_loss)
        q = query_loss()
        grads = torch.autograd.grad(q, self.params, allow_unused=True)
        with torch.no_grad():
            for p, w0, g in zip(self.params, original, grads):
                p.copy_(w0)
                p.grad = None if g is None else g.detach().clone()
        if self.grad_clip > 0:
            clip_grad_norm([p.grad for p in self.params if p.grad is not None], self.grad_clip)
        for opt in self.optimizers:
            opt.step()
        for p in self.params:
            p.grad = None
        return s_loss, float(q.detach())


def clip_grad_norm(grads: list[torch.Tensor], max_norm: float) -> None:
    """Scale gradients in place so their joint L2 norm is at most ``max_norm``."""
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    scale = max_norm / (float(norm) + 1e-6)
    if scale < 1.0:
        for g in grads:
            g.mul_(scale)


def clip_present(params, max_norm: float) -> None:
    """``clip_grad_norm`` over the parameters that have a gradient (none: nothing to do)."""
    grads = [p.grad for p in params if p.grad is not None]
    if max_norm > 0 and grads:
        clip_grad_norm(grads, max_norm)
