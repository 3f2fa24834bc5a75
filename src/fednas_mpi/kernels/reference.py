"""The plain PyTorch reference of the mixing ops: what the fused kernels must equal."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def reference_mix(outputs: Sequence[torch.Tensor | None], weights: torch.Tensor) -> torch.Tensor:
    """sum_k weights[k] * outputs[k] over the outputs that are not None (sum of products)."""
    total = None
    for k, out in enumerate(outputs):
        if out is None:
            continue
        term = weights[k] * out
        total = term if total is None else total + term
    if total is None:
        raise ValueError("mix over no outputs: every input was pruned")
    return total


def reference_mix_stacked(outputs: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """The same sum in its stack-and-reduce form (DARTS's usual code; benchmarks only)."""
    stacked = torch.stack(list(outputs))
    return (weights.view(-1, *([1] * (stacked.dim() - 1))) * stacked).sum(0)


def masked_logits(logits: torch.Tensor, mask) -> torch.Tensor:
    """-inf where ``mask`` (a bool tensor or a list of bools) is False."""
    if mask is None:
        return logits
    keep = torch.as_tensor(mask, dtype=torch.bool, device=logits.device)
    return logits.masked_fill(~keep, float("-inf"))


def reference_gumbel_mix(
    outputs: Sequence[torch.Tensor | None],
    logits: torch.Tensor,
    temperature: float,
    noise: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    hard: bool = False,
    index: int | None = None,
) -> torch.Tensor:
    """Eq. 1 and 2: softmax((logits + noise) / T) over the mask, mixing the outputs that exist.

    ``hard``: the DSNAS estimator. Returns the output of s = argmax(logits + noise) and sends
    <grad, o_s> * (onehot(s) - softmax(logits)) to the logits; ``index``: s when the caller
    has it already (no read of the device).
    """
    if hard:
        s = hard_index(logits, noise, mask) if index is None else index
        if outputs[s] is None:
            raise ValueError(f"gumbel_mix(hard=True): the sampled entry {s} has no output")
        logp = torch.log_softmax(masked_logits(logits, mask), 0)[s]
        return torch.exp(logp - logp.detach()) * outputs[s]
    z = masked_logits(logits if noise is None else logits + noise, mask)
    if mask is not None:  # masked entries weigh 0 and are never read
        keep = mask.tolist() if torch.is_tensor(mask) else list(mask)
        outputs = [o if keep[k] else None for k, o in enumerate(outputs)]
    return reference_mix(outputs, torch.softmax(z / temperature, 0))


def hard_index(
    logits: torch.Tensor, noise: torch.Tensor | None = None, mask: torch.Tensor | None = None
) -> int:
    """The entry ``gumbel_mix(hard=True)`` picks, so callers compute only that op."""
    z = logits if noise is None else logits + noise
    return int(masked_logits(z, mask).argmax())
