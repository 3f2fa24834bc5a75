"""The config of ``algorithms/fedpnas.py`` (PersonalSplitConfig, FedPNASConfig), torch-free so that
loading and validating a YAML imports no torch; the method code imports it from here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ...config import AlgorithmConfig, method_name, option
from .fedmetanas import MetaSearchArchConfig
from .server_opt import ServerArchConfig


@dataclass(kw_only=True)
class PersonalSplitConfig:
    """Where a client's personalised part begins: all meta-FedPNAS reads of ``fedpnas``
    (its local search and pruning are FedMetaNAS's), so its other keys are an error there."""

    refused_keys: ClassVar[dict[str, str]] = {
        k: "meta_fedpnas reads the server optimiser's keys from algorithm.fedmetanas "
        "(its local search is FedMetaNAS's)"
        for k in ServerArchConfig.__dataclass_fields__
    }

    personal_layers: int = option(
        1,
        "Last cells that (with the classifier) form each client's "
        "personalised part, with their own architecture logits; "
        "the rest is the shared base (also used by meta_fedpnas).",
        ge=0,
    )


@dataclass(kw_only=True)
class FedPNASConfig(PersonalSplitConfig, ServerArchConfig):
    inner_steps: int = option(1, "SGD steps of the personalised part on each support task.", ge=1)
    inner_lr_w: float = option(
        0.05, "Personalised weights: learning rate of the inner steps.", gt=0.0
    )
    inner_lr_alpha: float = option(
        0.1, "Personalised logits: learning rate of the inner steps.", ge=0.0
    )
    lr: float = option(
        0.05, "Base weights: SGD learning rate of the first-order meta step.", gt=0.0
    )
    momentum: float = option(0.9, "Base weights: SGD momentum.", ge=0.0, lt=1.0)
    weight_decay: float = option(3e-4, "Base weights: SGD weight decay.", ge=0.0)
    arch_lr: float = option(
        3e-3, "Base logits: Adam learning rate of the meta step (arch_update: client).", ge=0.0
    )
    grad_clip: float = option(5.0, "Gradient norm clip of both steps (0 = off).", ge=0.0)
    temperature_start: float = option(
        1.0, "SNAS sampler: Gumbel-softmax temperature in round 1.", gt=0.0
    )
    temperature_end: float = option(
        0.1, "SNAS sampler: temperature in the last round (exponential schedule).", gt=0.0
    )
    tasks_per_epoch: int = option(
        0,
        "Support/query task pairs per local epoch; 0 = as many "
        "disjoint pairs as the train split holds.",
        ge=0,
    )
    local_eval_every: int = option(
        1,
        "Evaluate the clients' personalised models on their eval "
        "splits every N rounds (and in the last).",
        ge=1,
    )

    def cross_checks(self, cfg) -> list[str]:
        return self.server_arch_problems("algorithm.fedpnas")


@dataclass(kw_only=True)
class FedPNASAlgorithmConfig(AlgorithmConfig):
    """``algorithm`` of fedpnas: the shared keys and its section ``algorithm.fedpnas``."""

    name: str = method_name("fedpnas")
    fedpnas: FedPNASConfig = field(default_factory=FedPNASConfig)


@dataclass(kw_only=True)
class MetaFedPNASAlgorithmConfig(AlgorithmConfig):
    """``algorithm`` of meta_fedpnas: the shared keys and the sections ``algorithm.fedpnas`` and
    ``algorithm.fedmetanas`` (the part of each that it reads)."""

    name: str = method_name("meta_fedpnas")
    fedpnas: PersonalSplitConfig = field(default_factory=PersonalSplitConfig)
    fedmetanas: MetaSearchArchConfig = field(default_factory=MetaSearchArchConfig)
