"""DARTS's candidate operations, built from a registry of small constructors.

Every constructor takes (channels, stride) and returns a module mapping
(B, C, H, W) to (B, C, H/stride, W/stride). Normalisation layers have no
affine parameters in the search space (as DARTS): the architecture weights
should scale the op outputs, not the ops themselves.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def batch_norm(c: int, affine: bool = False) -> nn.BatchNorm2d:
    """BN on the current batch's statistics, in training and evaluation alike.

    Running statistics would be averaged across non-IID clients by FedAvg and lag far
    behind the weights in a search where each client takes a few steps per round;
    batch statistics (as in MAML and MetaNAS) avoid both. Evaluation is still
    deterministic for a fixed batch size and order.
    """
    return nn.BatchNorm2d(c, affine=affine, track_running_stats=False)


class ReLUConvBN(nn.Sequential):
    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = False
    ):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False),
            batch_norm(c_out, affine),
        )


class SepConv(nn.Sequential):
    """Two stacked (ReLU, depthwise conv, pointwise conv, BN) blocks; the first one strides."""

    def __init__(self, c: int, kernel: int, stride: int, affine: bool = False):
        pad = kernel // 2
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c, c, kernel, stride, pad, groups=c, bias=False),
            nn.Conv2d(c, c, 1, bias=False),
            batch_norm(c, affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(c, c, kernel, 1, pad, groups=c, bias=False),
            nn.Conv2d(c, c, 1, bias=False),
            batch_norm(c, affine),
        )


class DilConv(nn.Sequential):
    """ReLU, dilated depthwise conv (dilation 2), pointwise conv, BN."""

    def __init__(self, c: int, kernel: int, stride: int, affine: bool = False):
        pad = 2 * (kernel // 2)
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c, c, kernel, stride, pad, dilation=2, groups=c, bias=False),
            nn.Conv2d(c, c, 1, bias=False),
            batch_norm(c, affine),
        )


class FactorizedReduce(nn.Module):
    """Halve the resolution with two offset stride-2 1x1 convs, so no pixel is dropped."""

    def __init__(self, c_in: int, c_out: int, affine: bool = False):
        super().__init__()
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even channel count, got {c_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_a = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_b = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = batch_norm(c_out, affine)

    def forward(self, x):
        import torch

        x = self.relu(x)
        # The second path starts one pixel in; pad so odd sizes still line up.
        shifted = nn.functional.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
        return self.bn(torch.cat([self.conv_a(x), self.conv_b(shifted)], dim=1))


class Pool(nn.Sequential):
    """Pooling followed by a non-affine BN (DARTS puts one after pooling in the search)."""

    def __init__(self, kind: str, c: int, stride: int):
        pool = (
            nn.MaxPool2d(3, stride, 1)
            if kind == "max"
            else nn.AvgPool2d(3, stride, 1, count_include_pad=False)
        )
        super().__init__(pool, batch_norm(c, False))


def _skip(c: int, stride: int) -> nn.Module:
    return nn.Identity() if stride == 1 else FactorizedReduce(c, c)


#: name -> constructor(channels, stride). ``none`` has no module: its output is
#: zero, so it contributes nothing to a weighted sum and is never computed; it
#: still takes part in the softmax over an edge's ops.
OPS: dict[str, Callable[[int, int], nn.Module] | None] = {
    "none": None,
    "max_pool_3x3": lambda c, s: Pool("max", c, s),
    "avg_pool_3x3": lambda c, s: Pool("avg", c, s),
    "skip_connect": _skip,
    "sep_conv_3x3": lambda c, s: SepConv(c, 3, s),
    "sep_conv_5x5": lambda c, s: SepConv(c, 5, s),
    "dil_conv_3x3": lambda c, s: DilConv(c, 3, s),
    "dil_conv_5x5": lambda c, s: DilConv(c, 5, s),
}

PRIMITIVES: tuple[str, ...] = tuple(OPS)
