"""The config of ``algorithms/perfedrlnas.py`` (PerFedRLNASConfig), torch-free so that
loading and validating a YAML imports no torch; the method code imports it from here."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import option
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
