"""Logit gaps measured against the clients' disagreement: the standard error of a gap
from the dispersion of a round's clients' logits, whether a gap lies outside that noise,
and the margin of a choice over its runner-up (issue 26, "decisions outside the noise").

What is measured. The round's clients i = 1..N, with FedAvg weights w_i (sample counts),
report their logits a_i after their local steps (with ``arch_update: server`` the logits
their plain SGD steps reached, before the server's step). Per row (an edge's ops, a
node's input combinations) the server knows the weighted moments E_w[a] and E_w[a a^T]
(``Dispersion``). Taking the clients as independent draws from the population of clients
and the weights as fixed, the weighted mean of d_i = a_ib - a_ik (the gap of entry k to
entry b) has variance s^2 sum w_i^2 / (sum w_i)^2 = s^2 / n_eff, with Kish's effective
number of clients n_eff = (sum w)^2 / sum w^2 (Kish 1965, "Survey Sampling"). The weighted
sums give the biased s_w^2 = E_w[d^2] - E_w[d]^2; unbiased for reliability weights it is
s_w^2 n_eff / (n_eff - 1), so

    se(gap_kb) = sqrt((C_kk + C_bb - 2 C_kb) / (n_eff - 1)),  C = E_w[a a^T] - E_w[a] E_w[a]^T.

The cross term stays: the entries of a row are not independent. The softmax is invariant
to a shift of its row, so a plain SGD step leaves the row's sum where it was and what one
entry gains the others lose (negative covariance); treating the entries as independent
(se^2 = (var_k + var_b) / n) would understate the gap's noise by up to sqrt 2.

Caveats, said once. The standard error is the one of this round's mean over its sampled
clients (they all start from the same global logits, so it is the spread of their local
moves), not the noise accumulated by the logits over the rounds before (under
independent rounds that grows like sqrt(rounds), so over a long search the rule is less
strict than its z says); a non-IID client population's genuine disagreement counts as
noise, which is the point. Where a server optimiser steps the logits (``arch_update:
server``) the gap is read on the stepped logits, which move by about the server's
learning rate per round whatever the clients' scale, while se stays in the clients' units
(their SGD steps): the ratio then mixes two scales and z is no calibrated count of
standard errors. With
n_eff <= 1 (one client, or all weight on one) nothing is measurable: se = inf and no gap
lies outside the noise; neither does one whose clients all sent the same logits (se = 0:
nobody moved them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Dispersion:
    """The spread of one cell type's logits over a round's clients: ``alpha_cov[e]`` the
    weighted covariance of edge e's op logits ([E, P, P]), ``beta_cov`` that of all input
    combinations' logits ([C, C]; only a node's own block is read) and ``n_eff`` Kish's
    effective number of clients."""

    alpha_cov: torch.Tensor
    beta_cov: torch.Tensor
    n_eff: float


def covariance(mean: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Weighted (biased) covariance E[a a^T] - E[a] E[a]^T of each row of ``mean``
    ([..., P]) from its second moments ``second`` ([..., P, P])."""
    m = mean.double()
    return second.double() - m.unsqueeze(-1) * m.unsqueeze(-2)


def effective_clients(total_weight: float, mean_weight: float) -> float:
    """Kish's n_eff = (sum w)^2 / sum w^2 from sum w and the w-weighted mean of w
    (sum w^2 / sum w: what the aux channel's weighted average of w gives)."""
    return total_weight / mean_weight if mean_weight > 0 else 0.0


def gap_se(cov: torch.Tensor, best: torch.Tensor, n_eff: float) -> torch.Tensor:
    """Per entry k of each row, the standard error of its gap to entry ``best`` of the
    row (module docstring): ``cov`` [..., P, P], ``best`` [...] indices; [..., P]."""
    cov = cov.double()
    if n_eff <= 1:
        return torch.full(cov.shape[:-1], math.inf, dtype=torch.float64)
    diag = cov.diagonal(dim1=-2, dim2=-1)
    b = best.long().unsqueeze(-1)
    c_bb = diag.gather(-1, b)
    c_bk = cov.gather(-2, b.unsqueeze(-1).expand(*cov.shape[:-2], 1, cov.shape[-1])).squeeze(-2)
    # float rounding can leave a tiny negative variance where all clients agree
    return ((diag + c_bb - 2 * c_bk).clamp_min(0.0) / (n_eff - 1)).sqrt()


def row_gaps(
    logits: torch.Tensor, cov: torch.Tensor, mask: torch.Tensor, n_eff: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(gap, se) per entry of each row ([R, P] logits, [R, P, P] cov, [R, P] mask): how
    far its logit lies below the best live logit of its row and the standard error of
    that gap; masked entries get gap +inf."""
    z = logits.detach().double().masked_fill(~mask, float("-inf"))
    top = z.max(dim=-1, keepdim=True)
    gap = (top.values - z).masked_fill(~mask, float("inf"))
    return gap, gap_se(cov, top.indices.squeeze(-1), n_eff)


def outside(gap: torch.Tensor, se: torch.Tensor, z: float) -> torch.Tensor:
    """Whether each gap exceeds ``z`` standard errors. Nothing measurable decides
    nothing: neither an infinite se (n_eff <= 1) nor a zero one - every client sent
    the same value, which happens only where no client moved the logits (frozen, or a
    cell type the network does not use), so the gap is the initialisation's, not
    evidence."""
    return (gap > z * se) & (se > 0)


def z_of(gap: float, se: float) -> float | None:
    """gap / se for logs and genotype.json: 0 for an exact tie, None where the ratio is
    not a finite number (nothing measurable: se 0 or infinite)."""
    if gap == 0:
        return 0.0
    if se > 0 and math.isfinite(se) and math.isfinite(gap):
        return gap / se
    return None


def margin(
    logits: torch.Tensor, cov: torch.Tensor, candidates: torch.Tensor, chosen: int, n_eff: float
) -> tuple[float, float] | None:
    """(gap, se) of the ``chosen`` entry of one row over the strongest other candidate
    (``candidates``: boolean [P]); None when it has no rival."""
    rivals = candidates.clone()
    rivals[chosen] = False
    if not bool(rivals.any()):
        return None
    z = logits.detach().double().masked_fill(~rivals, float("-inf"))
    runner = int(z.argmax())
    gap = float(logits[chosen].double() - logits[runner].double())
    se = gap_se(cov.unsqueeze(0), torch.tensor([chosen]), n_eff)[0, runner]
    return gap, float(se)
