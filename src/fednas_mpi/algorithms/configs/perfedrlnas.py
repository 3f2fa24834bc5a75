"""The config of ``algorithms/perfedrlnas.py`` (PerFedRLNASConfig), torch-free so that
loading and validating a YAML imports no torch; the method code imports it from here."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import AlgorithmConfig, method_name, option
from .fedmetanas import MetaSearchPolicyConfig
from .subnet import SubnetSearchConfig


@dataclass(kw_only=True)
class PerFedRLNASConfig(SubnetSearchConfig):
    """PerFedRLNAS: the shared subnet-search keys (here of each client's own policy) and
    the time penalty of its reward."""

    time_lambda: float = option(
        0.01,
        "lambda_time of the reward acc - mean best acc - "
        "lambda_time * (time - fastest time of the round); time "
        "is the deterministic cost samples x path parameters / 1e6.",
        ge=0.0,
    )


@dataclass(kw_only=True)
class PerFedRLNASAlgorithmConfig(AlgorithmConfig):
    """``algorithm`` of perfedrlnas: the shared keys and its section ``algorithm.perfedrlnas``."""

    name: str = method_name("perfedrlnas")
    perfedrlnas: PerFedRLNASConfig = field(default_factory=PerFedRLNASConfig)


@dataclass(kw_only=True)
class MetaPerFedRLNASAlgorithmConfig(AlgorithmConfig):
    """``algorithm`` of meta_perfedrlnas: the shared keys and the sections
    ``algorithm.perfedrlnas`` and
    ``algorithm.fedmetanas`` (the part of each that it reads)."""

    name: str = method_name("meta_perfedrlnas")
    perfedrlnas: PerFedRLNASConfig = field(default_factory=PerFedRLNASConfig)
    fedmetanas: MetaSearchPolicyConfig = field(default_factory=MetaSearchPolicyConfig)
