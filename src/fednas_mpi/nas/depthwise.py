"""A depthwise convolution whose CPU backward is built from forward convolutions.

PyTorch's CPU backward of a depthwise conv is slow where its forward is fast: measured on
one core at the CPU configs' shapes (16 x 144 x 14 x 14), the weight gradient of a 5x5
kernel took 5.7-6.2 ms against 0.45 ms this way, of a dilated 5x5 3.8-4.0 ms against 0.3,
and the input gradient of a dilated 5x5 6.2 ms against 0.3 (``bench/supernet.py`` has the
end-to-end numbers). Both gradients are depthwise correlations themselves:

- d input: the output gradient (zero-interleaved when strided) correlated with the
  flipped kernel;
- d weight: each (sample, channel) input plane correlated with its output-gradient
  plane (stride and dilation swap roles), summed over the batch.

Results equal autograd's to float rounding. Other devices use ``F.conv2d`` as it is.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


class _Depthwise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, stride: int, padding: int, dilation: int):
        ctx.save_for_backward(x, w)
        ctx.geometry = stride, padding, dilation
        return F.conv2d(x, w, None, stride, padding, dilation, w.shape[0])

    @staticmethod
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        s, p, d = ctx.geometry
        b, c, h, wd = x.shape
        k = w.shape[-1]
        gx = gw = None
        gy = gy.contiguous()
        if ctx.needs_input_grad[0]:
            g = gy
            if s > 1:  # the strided positions of the full-extent correlation
                g = gy.new_zeros(b, c, h + 2 * p - d * (k - 1), wd + 2 * p - d * (k - 1))
                g[:, :, ::s, ::s] = gy
            gx = F.conv2d(g, w.flip(-1, -2), None, 1, d * (k - 1) - p, d, c)
        if ctx.needs_input_grad[1]:
            ho, wo = gy.shape[-2:]
            g = F.conv2d(
                x.reshape(1, b * c, h, wd), gy.reshape(b * c, 1, ho, wo), None, d, p, s, b * c
            )
            gw = g[:, :, :k, :k].reshape(b, c, k, k).sum(0).unsqueeze(1)
        return gx, gw, None, None, None


def depthwise_conv2d(
    x: torch.Tensor, w: torch.Tensor, stride: int, padding: int, dilation: int
) -> torch.Tensor:
    """``F.conv2d(x, w, None, stride, padding, dilation, groups=channels)`` for square
    kernels, with the faster backward on the CPU."""
    if x.device.type != "cpu" or not torch.is_grad_enabled():
        return F.conv2d(x, w, None, stride, padding, dilation, w.shape[0])
    return _Depthwise.apply(x, w, stride, padding, dilation)
