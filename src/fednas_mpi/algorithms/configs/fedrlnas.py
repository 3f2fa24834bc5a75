"""The config of ``algorithms/fedrlnas.py`` (FedRLNASConfig), torch-free so that
loading and validating a YAML imports no torch; the method code imports it from here."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import AlgorithmConfig, method_name, option
from .subnet import SubnetSearchConfig


@dataclass(kw_only=True)
class FedRLNASConfig(SubnetSearchConfig):
    """FedRLNAS: the shared subnet-search keys and the reward baseline."""

    baseline_decay: float = option(
        0.9,
        "Reward baseline b <- decay * b + (1 - decay) * mean "
        "reward of the round (started at the first round's).",
        ge=0.0,
        lt=1.0,
    )


@dataclass(kw_only=True)
class FedRLNASAlgorithmConfig(AlgorithmConfig):
    """``algorithm`` of fedrlnas: the shared keys and its section ``algorithm.fedrlnas``."""

    name: str = method_name("fedrlnas")
    fedrlnas: FedRLNASConfig = field(default_factory=FedRLNASConfig)
