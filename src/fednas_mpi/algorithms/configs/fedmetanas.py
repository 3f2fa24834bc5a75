"""The config of ``algorithms/fedmetanas.py`` (its search, its sections and those of the
meta variants), torch-free so that loading and validating a YAML imports no torch; the
method code imports it from here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from ...config import AlgorithmConfig, method_name, option
from ..common.schedules import prunes_after
from .derived import DerivedTrainingConfig
from .perturbation import DeriveRuleConfig
from .pruning import PruneRuleConfig
from .server_opt import ServerArchConfig


@dataclass(kw_only=True)
class MetaSearchConfig:
    """The local search, its schedules and pruning (``common.meta.MetaSearch``): all that
    the meta variants (meta_fedpnas, meta_perfedrlnas) read of ``algorithm.fedmetanas``."""

    inner_steps: int = option(2, "M: task-learner steps on the support task (eq. 6/9).", ge=1)
    tasks_per_epoch: int = option(
        0,
        "Support/query task pairs per local epoch; 0 = as many disjoint pairs of "
        "algorithm.batch_size samples as the client's train split holds (at least 1).",
        ge=0,
    )
    task_lr_w: float = option(
        0.05,
        "Task learning rate for the weights (eta_w^task) in round 1; "
        "decays with meta_lr_w (see weight_lr_min).",
        gt=0.0,
    )
    task_lr_alpha: float = option(
        0.5,
        "Task learning rate for alphas and betas (eta_alpha^task; plain SGD steps of eq. 9).",
        ge=0.0,
    )
    meta_optimizer: Literal["sgd", "adam"] = option(
        "sgd", "Meta learner's optimiser of the weights (eq. 7/10)."
    )
    meta_lr_w: float = option(
        0.05, "Meta learning rate for the weights (eta_w^meta) in round 1.", gt=0.0
    )
    weight_lr_min: float = option(
        0.02,
        "Both weight learning rates follow a cosine from their round-1 value down to "
        "this fraction of it in the last round (as FedNAS's weights); 1 = constant.",
        ge=0.0,
        le=1.0,
    )
    meta_momentum: float = option(
        0.9, "Momentum (sgd) or beta1 (adam) of the weights' meta optimiser.", ge=0.0, lt=1.0
    )
    weight_decay: float = option(
        3e-4, "Weight decay of the meta optimiser, on the weights only.", ge=0.0
    )
    arch_optimizer: Literal["adam", "sgd"] = option(
        "adam",
        "Meta optimiser of alphas and betas (eq. 7/10). adam (betas arch_betas) moves "
        "each logit by about meta_lr_alpha per meta step whatever the scale of its "
        "gradient, which at CPU scale is 1e-3..1e-2: plain SGD needs a step size "
        "tuned to that scale; sgd uses meta_momentum. With arch_update: server the "
        "shared logits take plain SGD at client_arch_lr (meta_fedpnas's personalised "
        "logits keep this optimiser).",
    )
    meta_lr_alpha: float = option(
        0.03,
        "Meta learning rate for alphas and betas (eta_alpha^meta). With adam, a logit "
        "moves at most about meta_lr_alpha x (meta steps of the search) in total: "
        "choose it so that this is a few units (a logit gap of 2 is a 7:1 odds).",
        ge=0.0,
    )
    arch_betas: list[float] = option(
        [0.5, 0.999], "Adam betas of the architecture meta optimiser.", min_len=2
    )
    grad_clip: float = option(5.0, "Clip the gradient norm of every step (0 = off).", ge=0.0)
    temperature_start: float = option(1.0, "Gumbel-softmax temperature lambda in round 1.", gt=0.0)
    temperature_end: float = option(
        0.2, "lambda in the last search round (the final derivation's).", gt=0.0
    )
    temperature_schedule: Literal["linear", "exponential", "constant"] = option(
        "exponential",
        "How lambda anneals over the search rounds. lambda only shapes the "
        "relaxation (eq. 1) the weights train in; pruning and the derivation "
        "read the logits alone.",
    )
    temperature_floor: float = option(
        0.01, "lambda never goes below this (numerical safety).", ge=1e-3
    )
    arch_warmup_rounds: int = option(
        0,
        "Deterministic warm-up: in the first N rounds only the weights learn, with alphas "
        "and betas frozen and no Gumbel noise (every op trained in the same uniform "
        "mixture), so parameter-free ops do not win merely because convolutions are "
        "untrained.",
        ge=0,
        of_rounds=True,
    )
    prune_start: int = option(
        1,
        "First round (1-based) after which soft pruning may run (never during the warm-up).",
        ge=1,
        of_rounds=True,
    )
    prune_every: int = option(
        1,
        "Soft-prune every N rounds from prune_start (0 = never; the final derivation still runs).",
        ge=0,
        of_rounds=True,
    )
    prune_gap: float = option(
        2.0,
        "Prune an op whose logit is more than this below the strongest live op of its "
        "edge (probability under softmax(alpha) below exp(-gap) of the strongest's); "
        "the temperature takes no part. 0 = never prune ops before the derivation.",
        ge=0.0,
    )
    combo_prune_gap: float = option(
        2.0, "The same for input combinations (beta) of a node.", ge=0.0
    )
    settle_rounds: int = option(
        3,
        "In the last N search rounds before the derivation both gaps shrink linearly "
        "towards 0 (pruning every round), so what the derivation would cut is pruned a "
        "little at a time while the weights adapt, and the derivation itself removes "
        "almost nothing. 0 = no settle phase.",
        ge=0,
        of_rounds=True,
    )
    final_round: int = option(
        0,
        "Round (1-based) after which the genotype is derived (argmax of the learned "
        "logits over the survivors) and the discrete network, with the weights it "
        "inherits, replaces the supernet; the rest of the run trains it (single stage, no "
        "re-initialisation). 0 = the last round.",
        ge=0,
        of_rounds=True,
    )
    local_eval_every: int = option(
        1,
        "Evaluate the sampled clients' models on their eval splits "
        "every N rounds (and in the last); bounds the cost.",
        ge=1,
    )

    def prunes_after(self, done: int) -> bool:
        """Whether soft pruning runs after 1-based round ``done`` (the warm-up excluded)."""
        return prunes_after(done, self.prune_start, self.prune_every, self.arch_warmup_rounds)

    def cross_checks(self, cfg) -> list[str]:
        """Problems of this section against the rest of the run's config."""
        if self.final_round > cfg.run.rounds:
            return [
                f"algorithm.fedmetanas.final_round = {self.final_round}: after the last "
                f"round (run.rounds = {cfg.run.rounds}); use 0 (the last) or a round <= "
                f"{cfg.run.rounds}"
            ]
        return []


@dataclass(kw_only=True)
class FedMetaNASConfig(
    DeriveRuleConfig, PruneRuleConfig, DerivedTrainingConfig, MetaSearchConfig, ServerArchConfig
):
    """FedMetaNAS: the local search, where its logits are optimised (``arch_update``),
    how pruning decides (``prune_rule``), how the derivation chooses (``derive_rule``)
    and how the derived network trains (``derived_training``); the last three not wired
    into the meta variants."""

    def cross_checks(self, cfg) -> list[str]:
        section = "algorithm.fedmetanas"
        first = self.final_round or cfg.run.rounds  # the first derived round, 0-based
        return (
            super().cross_checks(cfg)
            + self.server_arch_problems(section)
            + self.derived_problems(section, first, cfg.run.rounds)
            + self.derive_rule_problems(cfg, section)
        )


@dataclass(kw_only=True)
class MetaSearchArchConfig(MetaSearchConfig, ServerArchConfig):
    """What meta-FedPNAS reads of ``algorithm.fedmetanas``: the local search, and who
    steps its global logits (``arch_update``; its personalised logits stay the clients')."""

    def cross_checks(self, cfg) -> list[str]:
        return super().cross_checks(cfg) + self.server_arch_problems("algorithm.fedmetanas")


@dataclass(kw_only=True)
class MetaSearchPolicyConfig(MetaSearchConfig):
    """What meta-PerFedRLNAS reads of ``algorithm.fedmetanas``: the local search alone. Its
    logits are the clients' REINFORCE policies, stepped from rewards by a server-side
    Adam whose moments persist in each client's state; no gradient steps them on a
    client, so there is no averaged change for a server optimiser to step."""

    refused_keys: ClassVar[dict[str, str]] = {
        k: (
            "not read by meta_perfedrlnas: its architecture logits are per-client "
            "REINFORCE policies, stepped on the server from rewards by an Adam whose "
            "moments already persist (perfedrlnas.arch_lr, arch_betas); the clients take "
            "no gradient step on them, so there is nothing for arch_update: server to "
            "average"
        )
        for k in ServerArchConfig.__dataclass_fields__
    }


@dataclass(kw_only=True)
class FedMetaNASAlgorithmConfig(AlgorithmConfig):
    """``algorithm`` of fedmetanas: the shared keys and its section ``algorithm.fedmetanas``."""

    name: str = method_name("fedmetanas")
    fedmetanas: FedMetaNASConfig = field(default_factory=FedMetaNASConfig)
