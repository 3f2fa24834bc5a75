"""MobileNetV3 (Howard et al. 2019) from torchvision, adapted to small images.

The network is built by ``torchvision.models.mobilenet_v3_small/large`` with no pretrained
weights and then adapted:

- *Input channels*: the stem convolution is replaced by one with the dataset's channels
  (1 for grey images), same width, kernel and stride.
- *Small inputs*: the ImageNet network downsamples by 32 (stem stride 2 and four strided
  depthwise convolutions), which leaves nothing of a 14x14 or 8x8 image. Downsampling
  layers are made stride 1 from the input side (stem first, then the earliest blocks)
  until the last feature map is at least ``min_feature`` pixels wide: 32x32 and 28x28 keep
  /16 (stem stride 1, as usual for CIFAR), 14x14 keeps /8, 8x8 keeps /4, 224x224 keeps /32.
- *No dropout*: torchvision's classifier dropout would draw from the global RNG, which
  runs must not touch (every draw derives from the seed); the adapted network has none.
- *BatchNorm momentum*: torchvision uses 0.01 (tuned for long ImageNet runs); here it is
  ``bn_momentum`` (PyTorch's default 0.1), so running statistics track short federated
  runs. Running statistics are buffers in the state dict: FedAvg averages them with the
  weights (sample-weighted, like every other entry of the flat state; the integer
  ``num_batches_tracked`` is averaged and rounded).
- *Seeded initialisation*: the weights are redrawn from an explicit generator with
  torchvision's scheme (Kaiming normal, fan-out, for convolutions; N(0, 0.01) for linear
  layers; BatchNorm 1/0; zero biases), so the model is a function of the seed alone.

Body and head: ``head`` is the final linear classifier; ``body`` is everything before it
(features, global pooling, the first classifier layer and its activation). ``forward(x) =
head(body(x))``; state-dict keys start with ``body.`` or ``head.`` (see ``split_state``).
"""

from __future__ import annotations

import math

import torch
import torchvision
from torch import nn


def _downsampling_convs(features: nn.Sequential) -> list[nn.Conv2d]:
    """The stride-2 convolutions of the feature extractor, from the input side."""
    return [m for m in features.modules() if isinstance(m, nn.Conv2d) and tuple(m.stride) == (2, 2)]


def _out_side(side: int, strides: int) -> int:
    for _ in range(strides):
        side = (side + 1) // 2  # 3x3 (or 5x5) kernels with "same" padding, stride 2
    return side


class MobileNetV3Net(nn.Module):
    """torchvision's MobileNetV3 rearranged as ``head(body(x))`` for small images."""

    def __init__(
        self,
        variant: str,
        in_shape: tuple[int, int, int],
        num_classes: int,
        width_mult: float = 1.0,
        min_feature: int = 2,
        bn_momentum: float = 0.1,
    ):
        super().__init__()
        build = {
            "mobilenet_v3_small": torchvision.models.mobilenet_v3_small,
            "mobilenet_v3_large": torchvision.models.mobilenet_v3_large,
        }[variant]
        tv = build(weights=None, num_classes=num_classes, width_mult=width_mult, dropout=0.0)
        c, h, w = in_shape
        stem = tv.features[0][0]
        tv.features[0][0] = nn.Conv2d(
            c, stem.out_channels, stem.kernel_size, stem.stride, stem.padding, bias=False
        )
        down = _downsampling_convs(tv.features)
        keep = len(down)
        while keep > 0 and _out_side(min(h, w), keep) < min_feature:
            keep -= 1
        for conv in down[: len(down) - keep]:
            conv.stride = (1, 1)
        self.downsampling = 2**keep
        for m in tv.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = bn_momentum
        linear1, act = tv.classifier[0], tv.classifier[1]
        self.body = nn.Sequential(tv.features, tv.avgpool, nn.Flatten(1), linear1, act)
        self.head = tv.classifier[3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@torch.no_grad()
def init_mobilenet(model: nn.Module, generator: torch.Generator) -> None:
    """torchvision's MobileNetV3 initialisation, drawn from ``generator``."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.weight.shape[0] * m.weight[0, 0].numel()
            m.weight.normal_(0.0, math.sqrt(2.0 / fan_out), generator=generator)
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            m.weight.fill_(1.0)
            m.bias.zero_()
        elif isinstance(m, nn.Linear):
            m.weight.normal_(0.0, 0.01, generator=generator)
            if m.bias is not None:
                m.bias.zero_()
