"""The config of ``algorithms/common/subnet.py`` (SubnetSearchConfig), torch-free so that
loading and validating a YAML imports no torch; the method code imports it from here."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import option


@dataclass(kw_only=True)
class SubnetSearchConfig:
    """What the methods that train one sampled path per client share: the path's weights
    (SGD on a cosine over run.rounds), the policy's sampling and its Adam ascent, the
    reward holdout. A method's config adds its own keys."""

    lr: float = option(
        0.025, "Weights: client SGD learning rate (cosine schedule over run.rounds).", gt=0.0
    )
    lr_min: float = option(0.001, "Weights: learning rate in the last round.", ge=0.0)
    momentum: float = option(
        0.9, "Weights: SGD momentum (ops off the sampled path are not touched).", ge=0.0, lt=1.0
    )
    weight_decay: float = option(3e-4, "Weights: SGD weight decay (sampled ops only).", ge=0.0)
    grad_clip: float = option(5.0, "Weights: gradient norm clip (0 = off).", ge=0.0)
    epsilon: float = option(
        0.0,
        "epsilon-greedy sampling: per edge, with this probability a "
        "uniformly random op instead of a draw from the policy "
        "softmax(alpha).",
        ge=0.0,
        le=1.0,
    )
    val_fraction: float = option(
        0.2,
        "Fraction of each client's train split held out to "
        "measure the reward (the subnet's accuracy).",
        gt=0.0,
        lt=1.0,
    )
    arch_lr: float = option(
        0.05, "Policy alpha: Adam learning rate of the REINFORCE ascent.", gt=0.0
    )
    arch_betas: list[float] = option([0.5, 0.999], "Policy alpha: Adam betas.", min_len=2)
    local_eval_every: int = option(
        1,
        "Evaluate the clients' trained subnets on their eval "
        "splits every N rounds (and in the last).",
        ge=1,
    )
