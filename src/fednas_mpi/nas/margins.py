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

What is tested: the evidence of the whole search so far, not one round (``Evidence``).
The logits a search derives from are the sum of its rounds' averaged moves, so a
decision should weigh that sum against its own noise: the server keeps, per entry, the
sum over rounds of the clients' weighted mean move (their logits after the local steps
minus the global logits they started from) and, rounds being independent draws of
clients and noise, the sum of the rounds' covariances of that mean, C_t / (n_eff,t - 1).
Gaps and standard errors are both read there, in the clients' own units. Two things
follow. A long search is as strict as its z says (a one-round se against a gap
accumulated over many rounds would let the ratio grow like sqrt(rounds) on pure noise).
And where a server optimiser steps the logits (``arch_update: server``) the test does not
depend on it: the server's step (about its learning rate per round whatever the clients'
scale) shapes the logits the clients train with, while the evidence stays in the units of
the clients' SGD moves, so z remains a count of standard errors. Under the per-client
optimiser (``arch_update: client``) the evidence is the logits' movement since
initialisation: the logits minus their small random start. A non-IID client
population's genuine disagreement counts as noise, which is the point. A round with
n_eff <= 1 (one client, or all weight on one) measures nothing and adds nothing; an entry
whose clients never moved it has se = 0 and is never decided on (nobody moved it).
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

    def of_mean(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(alpha, beta) covariances of the round's weighted mean: C / (n_eff - 1); None
        where nothing is measurable (n_eff <= 1)."""
        if self.n_eff <= 1:
            return None
        return self.alpha_cov.double() / (self.n_eff - 1), self.beta_cov.double() / (self.n_eff - 1)


@dataclass(frozen=True)
class Evidence:
    """What a search's rounds so far say about one cell type's logits: ``alpha`` [E, P]
    and ``beta`` [C], the sums over rounds of the clients' weighted mean move, and
    ``alpha_cov`` [E, P, P], ``beta_cov`` [C, C], the covariances of those sums (float64).
    Gaps and their standard errors are read here (module docstring)."""

    alpha: torch.Tensor
    beta: torch.Tensor
    alpha_cov: torch.Tensor
    beta_cov: torch.Tensor

    @staticmethod
    def zeros(edges: int, ops: int, combos: int) -> Evidence:
        """No rounds yet."""
        f = torch.float64
        return Evidence(
            torch.zeros(edges, ops, dtype=f),
            torch.zeros(combos, dtype=f),
            torch.zeros(edges, ops, ops, dtype=f),
            torch.zeros(combos, combos, dtype=f),
        )

    def add(
        self, alpha_move: torch.Tensor, beta_move: torch.Tensor, round_: Dispersion
    ) -> Evidence:
        """The evidence with one more round: its clients' weighted mean moves and their
        dispersion; a round that measures nothing (n_eff <= 1) adds nothing."""
        of_mean = round_.of_mean()
        if of_mean is None:
            return self
        return Evidence(
            self.alpha + alpha_move.double(),
            self.beta + beta_move.double(),
            self.alpha_cov + of_mean[0],
            self.beta_cov + of_mean[1],
        )


def covariance(mean: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Weighted (biased) covariance E[a a^T] - E[a] E[a]^T of each row of ``mean``
    ([..., P]) from its second moments ``second`` ([..., P, P])."""
    m = mean.double()
    return second.double() - m.unsqueeze(-1) * m.unsqueeze(-2)


def effective_clients(total_weight: float, mean_weight: float) -> float:
    """Kish's n_eff = (sum w)^2 / sum w^2 from sum w and the w-weighted mean of w
    (sum w^2 / sum w: what the aux channel's weighted average of w gives)."""
    return total_weight / mean_weight if mean_weight > 0 else 0.0


def gap_se(cov: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    """Per entry k of each row, the standard error of its gap to entry ``best`` of the
    row, sqrt(C_kk + C_bb - 2 C_kb) (module docstring): ``cov`` [..., P, P] the
    covariance of the estimates, ``best`` [...] indices; [..., P]."""
    cov = cov.double()
    diag = cov.diagonal(dim1=-2, dim2=-1)
    b = best.long().unsqueeze(-1)
    c_bb = diag.gather(-1, b)
    c_bk = cov.gather(-2, b.unsqueeze(-1).expand(*cov.shape[:-2], 1, cov.shape[-1])).squeeze(-2)
    # float rounding can leave a tiny negative variance where all clients agree
    return (diag + c_bb - 2 * c_bk).clamp_min(0.0).sqrt()


def row_gaps(
    values: torch.Tensor, cov: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(gap, se) per entry of each row ([R, P] values, [R, P, P] their covariance, [R, P]
    mask): how far its value lies below the best live value of its row and the standard
    error of that gap; masked entries get gap +inf."""
    z = values.detach().double().masked_fill(~mask, float("-inf"))
    top = z.max(dim=-1, keepdim=True)
    gap = (top.values - z).masked_fill(~mask, float("inf"))
    return gap, gap_se(cov, top.indices.squeeze(-1))


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
    values: torch.Tensor, cov: torch.Tensor, candidates: torch.Tensor, chosen: int
) -> tuple[float, float] | None:
    """(gap, se) of the ``chosen`` entry of one row over the strongest other candidate
    (``candidates``: boolean [P]) by ``values`` with covariance ``cov``; None when it has
    no rival. The gap is negative where the evidence favours the rival."""
    rivals = candidates.clone()
    rivals[chosen] = False
    if not bool(rivals.any()):
        return None
    z = values.detach().double().masked_fill(~rivals, float("-inf"))
    runner = int(z.argmax())
    gap = float(values[chosen].double() - values[runner].double())
    se = gap_se(cov.unsqueeze(0), torch.tensor([chosen]))[0, runner]
    return gap, float(se)
