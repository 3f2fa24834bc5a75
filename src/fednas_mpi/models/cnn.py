"""A small fixed CNN: FedAvg's model and the runtime's test workload."""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """conv3x3-ReLU blocks (max-pool while the image is larger than 4x4), then an MLP head.

    No normalisation layers: their running statistics would be averaged across
    non-IID clients, and the model should stay a plain reference workload.
    """

    def __init__(
        self, in_shape: tuple[int, int, int], num_classes: int, channels: list[int], hidden: int
    ):
        super().__init__()
        c, h, _ = in_shape
        layers: list[nn.Module] = []
        for out in channels:
            layers += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU(inplace=True)]
            if h > 4:
                layers.append(nn.MaxPool2d(2))
                h //= 2
            c = out
        layers.append(nn.AdaptiveAvgPool2d(2))
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c * 4, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@torch.no_grad()
def init_from(model: nn.Module, generator: torch.Generator) -> None:
    """Kaiming-uniform weights and zero biases, drawn from an explicit generator."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            bound = (6.0 / fan_in) ** 0.5
            m.weight.uniform_(-bound, bound, generator=generator)
            if m.bias is not None:
                m.bias.zero_()
