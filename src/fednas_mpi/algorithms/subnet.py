"""What the subnet-sampling methods share (FedRLNAS, PerFedRLNAS and the meta variant):
drawing one op per edge from a policy softmax(alpha), training only that path, REINFORCE's
score function, folding subnet updates into the supernet, and a plain Adam step on
tensors kept in a state dict (so optimiser moments are checkpointed with it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch.nn import functional as F

from ..flat import State
from ..nas.mixing import gumbel_noise
from ..nas.single_path import CELL_TYPES, Choices, path_forward
from .maml import clip_present
from .training import minibatches


def policy_probs(alpha: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax(alpha) per edge over the ops the mask keeps (0 elsewhere), in float64."""
    z = alpha.detach().double().masked_fill(~mask.bool(), float("-inf"))
    return torch.softmax(z, dim=-1)


def sample_policy(alpha: torch.Tensor, mask: torch.Tensor, generator: torch.Generator,
                  epsilon: float = 0.0) -> list[int]:
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


def op_keys(net) -> dict[str, tuple[str, int, int]]:
    """State key of every op tensor -> (cell type, edge, op index)."""
    space, out = net.space, {}
    for li, cell in enumerate(net.cells):
        kind = "reduce" if cell.reduction else "normal"
        for key, ops in cell.edges.items():
            j, i = map(int, key.split("_"))
            e = space.edge(j, i)
            for name, op in ops.items():
                k = space.primitives.index(name)
                for sub in op.state_dict():
                    out[f"cells.{li}.edges.{key}.{name}.{sub}"] = (kind, e, k)
    return out


def train_path(net, choices: Choices, x: torch.Tensor, y: torch.Tensor,
               optimizer: torch.optim.Optimizer, batch_size: int, epochs: int,
               generator: torch.Generator, grad_clip: float, augment=None) -> float:
    """Plain SGD epochs on one path; ops off the path keep grad None (untouched by the
    optimiser). Returns the sample-weighted mean training loss."""
    net.train()
    weights = net.weight_parameters()
    total, count = 0.0, 0
    for _ in range(epochs):
        for idx in minibatches(len(y), batch_size, generator):
            optimizer.zero_grad(set_to_none=True)
            xb = x[idx] if augment is None else augment(x[idx], generator)
            loss = F.cross_entropy(path_forward(net, xb, choices), y[idx])
            loss.backward()
            clip_present(weights, grad_clip)
            optimizer.step()
            total, count = total + float(loss.detach()) * len(idx), count + len(idx)
    optimizer.zero_grad(set_to_none=True)
    return total / max(count, 1)


def fold(old: Mapping[str, torch.Tensor], averaged: Mapping[str, torch.Tensor],
         keys: Mapping[str, tuple[str, int, int]], share: Mapping[str, torch.Tensor],
         names: Sequence[str]) -> State:
    """The supernet after a round of subnet training.

    ``averaged`` is the sample-weighted FedAvg over all clients of their states (a client
    returns an op it did not train unchanged) and ``share[cell][e, k]`` the fraction of
    the round's samples held by clients that trained op k of edge e. Each op then moves
    by the sample-weighted mean update of the clients that trained it:
    old + (averaged - old) / share; an op nobody trained keeps its value. Tensors outside
    the ops (stem, preprocessing, classifier) are the plain average.
    """
    out: State = {}
    for name in names:
        where = keys.get(name)
        if where is None:
            out[name] = averaged[name]
            continue
        s = float(share[where[0]][where[1], where[2]])
        if s <= 0.0:
            out[name] = old[name].clone()
        elif not averaged[name].is_floating_point():
            out[name] = averaged[name]
        else:
            o = old[name].double()
            out[name] = (o + (averaged[name].double() - o) / s).to(old[name].dtype)
    return out


def adam_ascent(value: torch.Tensor, grad: torch.Tensor, state: State, prefix: str,
                lr: float, betas: Sequence[float], eps: float = 1e-8) -> torch.Tensor:
    """value + Adam step along ``grad`` (gradient ascent); moments live in ``state``
    under ``prefix`` and are updated in place (a new dict entry each)."""
    b1, b2 = float(betas[0]), float(betas[1])
    t = float(state.get(f"{prefix}t", torch.zeros((), dtype=torch.float64))) + 1.0
    m = state.get(f"{prefix}m", torch.zeros_like(grad, dtype=torch.float64))
    v = state.get(f"{prefix}v", torch.zeros_like(grad, dtype=torch.float64))
    g = grad.double()
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    step = lr * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)
    state[f"{prefix}t"] = torch.tensor(t, dtype=torch.float64)
    state[f"{prefix}m"], state[f"{prefix}v"] = m, v
    return (value.double() + step).to(value.dtype)


def choices_of(alpha: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor],
               generator: torch.Generator, epsilon: float) -> Choices:
    return {c: sample_policy(alpha[c], masks[c], generator, epsilon) for c in CELL_TYPES}
