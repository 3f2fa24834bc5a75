"""The config of ``algorithms/fedrep.py`` (FedRepConfig), torch-free so that
loading and validating a YAML imports no torch; the method code imports it from here."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import ClientSGDConfig, method_name, option


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


@dataclass(kw_only=True)
class FedRepAlgorithmConfig(ClientSGDConfig):
    """``algorithm`` of fedrep: the shared keys, client SGD's at its top level and its section
    ``algorithm.fedrep``."""

    name: str = method_name("fedrep")
    fedrep: FedRepConfig = field(default_factory=FedRepConfig)
