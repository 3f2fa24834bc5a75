"""REINFORCE on per-edge categorical policies (FedRLNAS, PerFedRLNAS and the meta
variant): drawing one op per edge from softmax(alpha), the score function
grad log p(a), and a plain Adam step on tensors kept in a state dict (so optimiser
moments are checkpointed with it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ...flat import State
from ...nas import CELL_TYPES
from ...nas.mixing import gumbel_noise
from ...nas.single_path import Choices


def policy_probs(alpha: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax(alpha) per edge over the ops the mask keeps (0 elsewhere), in float64."""
    z = alpha.detach().double().masked_fill(~mask.bool(), float("-inf"))
    return torch.softmax(z, dim=-1)


def sample_policy(
    alpha: torch.Tensor, mask: torch.Tensor, generator: torch.Generator, epsilon: float = 0.0
) -> list[int]:
    """One op per edge: with probability ``epsilon`` uniform over the kept ops, otherwise
    from softmax(alpha) (as argmax(alpha + Gumbel noise)). Always draws the same amount
    from ``generator``, so later draws do not depend on the outcome."""
    edges, ops = alpha.shape
    explore = torch.rand(edges, generator=generator, dtype=torch.float64)
    noise = gumbel_noise((edges, ops), generator, torch.float64)
    pick = torch.rand(edges, generator=generator, dtype=torch.float64)
    keep = mask.bool()
    z = alpha.detach().double().masked_fill(~keep, float("-inf")) + noise
    out = []
    for e in range(edges):
        if float(explore[e]) < epsilon:
            allowed = keep[e].nonzero().flatten().tolist()
            out.append(int(allowed[min(int(float(pick[e]) * len(allowed)), len(allowed) - 1)]))
        else:
            out.append(int(z[e].argmax()))
    return out


def score(alpha: torch.Tensor, mask: torch.Tensor, choice: Sequence[int]) -> torch.Tensor:
    """grad_alpha log p(choice) for p = prod_e softmax(alpha_e): onehot - softmax per
    edge (float64; 0 on masked entries)."""
    p = policy_probs(alpha, mask)
    return onehot(p.shape, choice) - p


def onehot(shape: torch.Size | tuple[int, ...], choice: Sequence[int]) -> torch.Tensor:
    out = torch.zeros(shape, dtype=torch.float64)
    out[torch.arange(len(choice)), torch.tensor(list(choice))] = 1.0
    return out


def choices_of(
    alpha: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    generator: torch.Generator,
    epsilon: float,
) -> Choices:
    return {c: sample_policy(alpha[c], masks[c], generator, epsilon) for c in CELL_TYPES}


def adam_ascent(
    value: torch.Tensor,
    grad: torch.Tensor,
    state: State,
    prefix: str,
    lr: float,
    betas: Sequence[float],
    eps: float = 1e-8,
) -> torch.Tensor:
    """value + Adam step along ``grad`` (gradient ascent); moments live in ``state``
    under ``prefix`` and are updated in place (a new dict entry each)."""
    b1, b2 = float(betas[0]), float(betas[1])
    t = float(state.get(f"{prefix}t", torch.zeros((), dtype=torch.float64))) + 1.0
    m = state.get(f"{prefix}m", torch.zeros_like(grad, dtype=torch.float64))
    v = state.get(f"{prefix}v", torch.zeros_like(grad, dtype=torch.float64))
    g = grad.double()
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    step = lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
    state[f"{prefix}t"] = torch.tensor(t, dtype=torch.float64)
    state[f"{prefix}m"], state[f"{prefix}v"] = m, v
    return (value.double() + step).to(value.dtype)
