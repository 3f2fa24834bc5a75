"""The config of ``algorithms/feddsnas.py`` (FedDSNASConfig), torch-free so that
loading and validating a YAML imports no torch; the method code imports it from here."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import AlgorithmConfig, method_name, option
from .server_opt import ServerArchConfig


@dataclass(kw_only=True)
class FedDSNASConfig(ServerArchConfig):
    """FedDSNAS's keys, and where its alphas are optimised (``arch_update``)."""

    lr: float = option(
        0.025, "Weights: SGD learning rate (cosine schedule over run.rounds).", gt=0.0
    )
    lr_min: float = option(0.001, "Weights: learning rate in the last round.", ge=0.0)
    momentum: float = option(
        0.9,
        "Weights: SGD momentum (ops not sampled in a step keep their "
        "weights and momentum untouched).",
        ge=0.0,
        lt=1.0,
    )
    weight_decay: float = option(3e-4, "Weights: SGD weight decay (sampled ops only).", ge=0.0)
    grad_clip: float = option(5.0, "Weights: gradient norm clip (0 = off).", ge=0.0)
    arch_lr: float = option(
        1e-3,
        "Alphas: Adam learning rate of the DSNAS estimator's gradient (arch_update: client).",
        gt=0.0,
    )
    arch_betas: list[float] = option(
        [0.5, 0.999], "Alphas: Adam betas (arch_update: client).", min_len=2
    )
    arch_weight_decay: float = option(
        1e-3,
        "Alphas: L2 weight decay of the clients' optimiser (Adam, or with arch_update: "
        "server plain SGD).",
        ge=0.0,
    )
    local_eval_every: int = option(
        1,
        "Evaluate the sampled clients' argmax children on their "
        "eval splits every N rounds (and in the last).",
        ge=1,
    )

    def cross_checks(self, cfg) -> list[str]:
        return self.server_arch_problems("algorithm.feddsnas")


@dataclass(kw_only=True)
class FedDSNASAlgorithmConfig(AlgorithmConfig):
    """``algorithm`` of feddsnas: the shared keys and its section ``algorithm.feddsnas``."""

    name: str = method_name("feddsnas")
    feddsnas: FedDSNASConfig = field(default_factory=FedDSNASConfig)
