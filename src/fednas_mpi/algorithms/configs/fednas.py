"""The config of ``algorithms/fednas.py`` (FedNASConfig), torch-free so that
loading and validating a YAML imports no torch; the method code imports it from here."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import AlgorithmConfig, method_name, option
from .perturbation import DeriveRuleConfig
from .server_opt import ServerArchConfig


@dataclass(kw_only=True)
class FedNASConfig(DeriveRuleConfig, ServerArchConfig):
    """FedNAS's keys, where its alphas are optimised (``arch_update``) and how the
    derivation chooses (``derive_rule``)."""

    search_rounds: int = option(
        0,
        "Rounds of MiLeNAS search before hard pruning; the rest of "
        "run.rounds retrain the derived network from scratch. "
        "0 = half of run.rounds.",
        ge=0,
        of_rounds=True,
    )
    lr: float = option(
        0.025,
        "Weights: SGD learning rate at the start of each stage (cosine "
        "schedule over the stage's rounds).",
        gt=0.0,
    )
    lr_min: float = option(0.001, "Weights: learning rate at the end of each stage.", ge=0.0)
    momentum: float = option(0.9, "Weights: SGD momentum.", ge=0.0, lt=1.0)
    weight_decay: float = option(3e-4, "Weights: SGD weight decay.", ge=0.0)
    grad_clip: float = option(
        5.0, "Weights: gradient norm clip (0 = off); alphas are not clipped.", ge=0.0
    )
    arch_lr: float = option(
        0.03,
        "Alphas: Adam learning rate (arch_update: client). Adam moves a logit by at most "
        "about arch_lr per step, so the total movement is bounded by arch_lr x (search "
        "steps): DARTS's 3e-4 suits its ~20k steps (the paper configs keep it), while the "
        "CPU configs' ~100 steps need ~0.03 for the alphas to move beyond their noise.",
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
    milenas_lambda: float = option(
        1.0,
        "MiLeNAS mixed-level weight: the alpha gradient is grad L_val + lambda * grad L_train.",
        ge=0.0,
    )
    local_eval_every: int = option(
        1,
        "Evaluate the sampled clients' models on their eval splits "
        "every N rounds (and in the last).",
        ge=1,
    )

    def cross_checks(self, cfg) -> list[str]:
        """Problems of this section against the rest of the run's config."""
        rounds = cfg.run.rounds
        problems = self.server_arch_problems("algorithm.fednas")
        problems += self.derive_rule_problems(cfg, "algorithm.fednas")
        if rounds < 2:
            return problems + [
                f"run.rounds = {rounds}: fednas needs at least 2 rounds (search, then "
                f"retrain the derived network)"
            ]
        if self.search_rounds >= rounds:
            return problems + [
                f"algorithm.fednas.search_rounds = {self.search_rounds}: leaves no round to "
                f"retrain (run.rounds = {rounds}); use a value below run.rounds, or 0 for "
                f"half of them"
            ]
        return problems


@dataclass(kw_only=True)
class FedNASAlgorithmConfig(AlgorithmConfig):
    """``algorithm`` of fednas: the shared keys and its section ``algorithm.fednas``."""

    name: str = method_name("fednas")
    fednas: FedNASConfig = field(default_factory=FedNASConfig)
