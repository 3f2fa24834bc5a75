"""Every Gumbel-softmax mix of the search space goes through this module.

Eq. 1:  Z_k = softmax_k((log alpha_k + G_k) / lambda),  G_k ~ Gumbel(0, 1)
Eq. 2:  x_j = sum_i sum_k Z^{ij}_k o_k(x_i)

``relaxed_weights`` computes Z over the entries a mask keeps (pruned entries get
exactly 0 and take no part in the normalisation); with ``noise=None`` it is the
deterministic softmax(log alpha / lambda) used for evaluation.
``weighted_sum`` forms sum_k w_k * o_k over the outputs that exist (pruned ops
and ``none`` are ``None`` and are never read); it is the plain PyTorch reference.
The network mixes through ``kernels.mix``, which runs the fused C++/CUDA kernel once
``kernels.configure`` has found it and this reference otherwise; ``kernels.gumbel_mix``
fuses eq. 1 and 2 in one op (with a DSNAS hard variant).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..kernels.reference import reference_mix


def gumbel_noise(
    shape: torch.Size | tuple[int, ...],
    generator: torch.Generator | None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Standard Gumbel samples -log(-log U), with U clamped so every sample is finite, on
    ``device``. U is drawn on the generator's own device (the CPU for the runtime's
    generators), so a seed gives the same samples whatever device computes with them."""
    u = torch.rand(
        shape,
        generator=generator,
        dtype=dtype,
        device=generator.device if generator is not None else device,
    )
    info = torch.finfo(dtype)
    u = u.clamp(min=info.tiny, max=1.0 - info.eps)
    return (-torch.log(-torch.log(u))).to(device)


def relaxed_weights(
    logits: torch.Tensor,
    temperature: float,
    noise: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. 1 along the last dimension; masked-out entries are exactly zero."""
    z = logits if noise is None else logits + noise
    z = z / temperature
    if mask is not None:
        z = z.masked_fill(~mask, float("-inf"))
    return torch.softmax(z, dim=-1)


def weighted_sum(outputs: Sequence[torch.Tensor | None], weights: torch.Tensor) -> torch.Tensor:
    """sum_k weights[k] * outputs[k] over the outputs that are not None (the reference)."""
    return reference_mix(outputs, weights)
