"""The config of ``algorithms/fedrlnas.py`` (FedRLNASConfig), torch-free so that
loading and validating a YAML imports no torch; the method code imports it from here."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import option
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
