"""The config of ``algorithms/fedrep.py`` (FedRepConfig), torch-free so that
loading and validating a YAML imports no torch; the method code imports it from here."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import option


@dataclass(kw_only=True)
class FedRepConfig:
    head_epochs: int = option(
        5,
        "Epochs over the client's train split that update only the "
        "client's head (body fixed) before algorithm.local_epochs "
        "epochs update only the body.",
        ge=1,
    )
    head_lr: float = option(
        0.05,
        "SGD learning rate of the head epochs (momentum and weight decay as algorithm.*).",
        gt=0.0,
    )
