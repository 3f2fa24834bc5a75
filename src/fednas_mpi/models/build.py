"""Building a fixed-architecture model from its config, and its body/head split.

Every model here is ``head(body(x))``: its state-dict keys start with ``body.`` (the
shared representation) or ``head.`` (the classifier that personalised methods keep per
client or freeze). Each reads the ``model.`` keys ``catalogue.MODELS`` lists for it.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .cnn import SmallCNN, init_from
from .mobilenet import MobileNetV3Net, init_mobilenet

HEAD = "head."


def build_model(
    cfg: ModelConfig, in_shape: tuple[int, int, int], num_classes: int, generator: torch.Generator
) -> nn.Module:
    """Build the configured model with weights drawn from ``generator`` (not the global RNG)."""
    if cfg.name == "cnn":
        model = SmallCNN(in_shape, num_classes, cfg.channels, cfg.hidden)
        init_from(model, generator)
        return model
    if cfg.name in ("mobilenet_v3_small", "mobilenet_v3_large"):
        m = cfg.mobilenet
        model = MobileNetV3Net(
            cfg.name, in_shape, num_classes, m.width_mult, m.min_feature, m.bn_momentum
        )
        init_mobilenet(model, generator)
        return model
    raise ValueError(f"model.name {cfg.name!r} is not a fixed architecture")


def is_head(key: str) -> bool:
    return key.startswith(HEAD)


def split_state(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(body entries, head entries) of a model's state dict, each in the original order."""
    body = {k: v for k, v in state.items() if not is_head(k)}
    head = {k: v for k, v in state.items() if is_head(k)}
    return body, head
