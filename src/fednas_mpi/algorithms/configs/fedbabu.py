"""The config of ``algorithms/fedbabu.py`` (FedBABUConfig), torch-free so that
loading and validating a YAML imports no torch; the method code imports it from here."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import ClientSGDConfig, method_name, option


@dataclass(kw_only=True)
class FedBABUConfig:
    finetune_epochs: int = option(
        5,
        "Personalisation before local evaluation: epochs of head "
        "fine-tuning on the client's train split (body fixed).",
        ge=1,
    )
    finetune_lr: float = option(
        0.05, "SGD learning rate of the head fine-tuning (momentum as algorithm.momentum).", gt=0.0
    )


@dataclass(kw_only=True)
class FedBABUAlgorithmConfig(ClientSGDConfig):
    """``algorithm`` of fedbabu: the shared keys, client SGD's at its top level and its section
    ``algorithm.fedbabu``."""

    name: str = method_name("fedbabu")
    fedbabu: FedBABUConfig = field(default_factory=FedBABUConfig)
